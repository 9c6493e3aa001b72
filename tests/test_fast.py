"""The fast mode (LCM-LoRA): the official LoRA layout, fusing, LCM sampling through the engine, refusals."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, UniPCMultistepScheduler
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from backend.devices import choose_device
from backend.engine import Engine
from backend.models.pasd import PasdUNet2DConditionModel
from backend.models.pasd.tiny_lcm import (
    kohya_name,
    lcm_lora_layout,
    lcm_lora_modules,
    write_tiny_lcm_lora,
)
from backend.models.registry import get_spec
from backend.models.sd15 import SD15_UNET_CONFIG
from backend.models.store import resolve_model
from backend.models.tiny import tiny_unet_config
from backend.pipelines.base import NoiseAnchor, SamplingKnobs
from backend.pipelines.families import load_pipeline
from backend.pipelines.fast import (
    DOWNLOAD_COMMAND,
    FAST_GUIDANCE,
    FAST_STEPS,
    LCM_FILE,
    LCM_MODEL_ID,
    FastModeError,
    enable_fast_mode,
    find_lcm_lora,
    fuse_lcm_lora,
    lcm_scheduler,
)
from backend.pipelines.params import RestoreParams
from backend.pipelines.pasd import PasdPipeline, lcm_step
from backend.pipelines.supir import SupirPipeline

CPU = choose_device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread: None) -> None:
    return None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder of its own (fusing changes the pipelines that load from it): tiny PASD full and
    light, and a tiny LCM-LoRA where the registry entry installs the real one."""
    from backend.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("fast-models")
    write_tiny_model(root / "tiny-full", "full", seed=1)
    write_tiny_model(root / "tiny-light", "light", seed=2)
    write_tiny_lcm_lora(root / LCM_MODEL_ID, seed=5)
    return root


@pytest.fixture(scope="module")
def lora(models: Path) -> Path:
    return models / LCM_MODEL_ID / LCM_FILE


@pytest.fixture(scope="module")
def engine(models: Path) -> Engine:
    """An engine whose tiny-full pipeline is in fast mode, made as the engine loads: in inference mode."""
    eng = Engine(models, device="cpu")
    with torch.inference_mode():
        pipeline = eng.pipeline_for(eng.find_model("tiny-full", "upscale"), RestoreParams(fast=True))
    assert isinstance(pipeline, PasdPipeline) and pipeline.fast
    layers = len(lcm_lora_modules(tiny_unet_config()))
    assert f"fast mode: the LCM-LoRA is fused into {layers} UNet layers" in eng._notes
    return eng


@pytest.fixture(scope="module")
def fast_pipe(engine: Engine) -> PasdPipeline:
    pipe = engine.pipeline_for(engine.find_model("tiny-full", "upscale"), RestoreParams(fast=True))
    assert isinstance(pipe, PasdPipeline) and pipe.fast
    return pipe


@pytest.fixture
def schedulers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[type]]:
    """The solver classes the pipelines make, run by run."""
    made: list[type] = []
    original = PasdPipeline.make_scheduler

    def spy(self: PasdPipeline):
        scheduler = original(self)
        made.append(type(scheduler))
        return scheduler

    monkeypatch.setattr(PasdPipeline, "make_scheduler", spy)
    yield made


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def run(pipe: PasdPipeline, img: torch.Tensor, **kw) -> torch.Tensor:
    args = {"prompt": "a cat", "negative_prompt": "blurry", "steps": FAST_STEPS, "guidance": FAST_GUIDANCE}
    with torch.inference_mode():
        return pipe(img, **(args | {"seed": 3} | kw))


def safetensors_header(layout: dict[str, tuple[int, ...]]) -> tuple[bytes, int]:
    """The header bytes safetensors writes for float16 tensors of ``layout`` with {"format": "pt"}
    metadata, and the data size (checked below against a file safetensors wrote)."""
    entries, offset = {}, 0
    for key in sorted(layout):
        size = 2 * torch.Size(layout[key]).numel()
        entries[key] = {"dtype": "F16", "shape": list(layout[key]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8), offset


# ---------------------------------------------------------------------------------------- the file
def test_layout_is_the_published_files(lora: Path) -> None:
    """The tiny file's layout at SD1.5's widths (rank 64, 278 layers) has the published file's exact
    byte size: its names, shapes and float16 dtype are the official ones."""
    raw = lora.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header, data = safetensors_header(lcm_lora_layout(tiny_unet_config(), rank=4))
    assert raw[8 : 8 + length] == header and len(raw) == 8 + length + data

    full = lcm_lora_layout(SD15_UNET_CONFIG)
    assert len(full) == 3 * 278
    header, data = safetensors_header(full)
    assert 8 + len(header) + data == get_spec(LCM_MODEL_ID).size_bytes == 134_621_556
    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert full[f"{attn}.lora_down.weight"] == (64, 320) and full[f"{attn}.lora_up.weight"] == (320, 64)
    conv = "lora_unet_up_blocks_1_resnets_0_conv1"
    assert full[f"{conv}.lora_down.weight"] == (64, 2560, 3, 3)
    assert full[f"{conv}.lora_up.weight"] == (1280, 64, 1, 1)
    assert full["lora_unet_mid_block_resnets_0_time_emb_proj.alpha"] == ()
    assert full["lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight"] == (64, 1280, 3, 3)
    assert full["lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_down.weight"] == (64, 320, 1, 1)


@pytest.mark.parametrize("variant", ["full", "light"])
def test_tiny_lora_names_sd_layers_only(models: Path, lora: Path, variant: str) -> None:
    unet = PasdUNet2DConditionModel.from_pretrained(models / f"tiny-{variant}" / "unet")
    by_name = {kohya_name(path): module for path, module in unet.named_modules()}
    state = load_file(str(lora))
    layers = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in state}
    assert all(name in by_name for name in layers)
    assert not any("pixel" in name or "_plus" in name for name in layers)
    assert {
        key.removeprefix(f"{name}.") for name in layers for key in state if key.startswith(f"{name}.")
    } == {
        "lora_down.weight",
        "lora_up.weight",
        "alpha",
    }
    assert len(state) == 3 * len(layers) and {t.dtype for t in state.values()} == {torch.float16}


# ---------------------------------------------------------------------------------------- fusing
@pytest.mark.parametrize("variant", ["full", "light"])
def test_fuse_is_the_manual_merge(models: Path, lora: Path, variant: str) -> None:
    """W + scale·(alpha/rank)·up@down on every LoRA layer, nothing else changed (PASD's pixel-aware
    modules included), same state-dict keys, no peft module or config left."""
    unet = PasdUNet2DConditionModel.from_pretrained(models / f"tiny-{variant}" / "unet")
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    paths = {kohya_name(path): path for path, _ in unet.named_modules()}
    changed = fuse_lcm_lora(unet, lora, scale=0.7)
    after = unet.state_dict()
    assert list(after) == list(before)
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert not getattr(unet, "peft_config", None)
    assert type(unet) is PasdUNet2DConditionModel and unet.pasd_variant == variant

    state = load_file(str(lora))
    expected = dict(before)
    for key in (k for k in state if k.endswith(".lora_down.weight")):
        name = key.removesuffix(".lora_down.weight")
        down, up = state[key].float(), state[f"{name}.lora_up.weight"].float()
        alpha = state[f"{name}.alpha"].float()
        weight = f"{paths[name]}.weight"
        delta = (up.flatten(1) @ down.flatten(1)).reshape(before[weight].shape)
        expected[weight] = before[weight] + 0.7 * (alpha / down.shape[0]) * delta
    assert changed == sum(k.endswith(".lora_down.weight") for k in state)
    for key, value in after.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
    untouched = [k for k in before if torch.equal(before[k], expected[k])]
    pixel = [k for k in untouched if "pixel_attentions" in k or "_plus" in k]
    assert pixel and all(torch.equal(after[k], before[k]) for k in untouched)


def test_a_lora_that_does_not_fit_changes_nothing(models: Path, lora: Path, tmp_path: Path) -> None:
    unet = PasdUNet2DConditionModel.from_pretrained(models / "tiny-full" / "unet")
    before = {k: v.clone() for k, v in unet.state_dict().items()}

    other = tiny_unet_config() | {"cross_attention_dim": 24}  # to_k/to_v of attn2 of another width
    wrong = write_tiny_lcm_lora(tmp_path / "wrong", unet_config=other)
    with pytest.raises(FastModeError, match="does not fit this UNet"):
        fuse_lcm_lora(unet, wrong)

    extra = load_file(str(lora))  # one layer more than the UNet has
    layer = "lora_unet_down_blocks_0_resnets_0_conv1"
    extra |= {
        k.replace(layer, "lora_unet_down_blocks_0_resnets_5_conv1"): v.clone()
        for k, v in extra.items()
        if layer in k
    }
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FastModeError, match="only 277 of its 278 layers"):
        fuse_lcm_lora(unet, tmp_path / "extra.safetensors")

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(lora.read_bytes()[:5000])
    with pytest.raises(FastModeError, match=f"damaged.*{re.escape(DOWNLOAD_COMMAND)}"):
        fuse_lcm_lora(unet, damaged)
    (tmp_path / "text.safetensors").write_text("not a LoRA")
    with pytest.raises(FastModeError, match="cannot be read"):
        fuse_lcm_lora(unet, tmp_path / "text.safetensors")

    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert not getattr(unet, "peft_config", None)


# ---------------------------------------------------------------------------------------- sampling
def test_fast_run_through_the_engine(engine: Engine, schedulers: list[type]) -> None:
    """4 LCM steps at the fast guidance: right size, finite, seeded; the progress counts 4 steps."""
    rng = torch.Generator().manual_seed(0)
    img = (torch.rand(40, 56, 3, generator=rng) * 255).to(torch.uint8).numpy()
    params = RestoreParams(fast=True, seed=7, process_size=256, scale=2.0)  # its own steps and guidance
    steps: list[tuple[int, int]] = []

    def progress(stage: str, step: int, total: int) -> None:
        if stage == "denoise":
            steps.append((step, total))

    a = engine.restore(img, params, model="tiny-full", progress=progress)
    b = engine.restore(img, params, model="tiny-full")
    c = engine.restore(img, params.with_(seed=8), model="tiny-full")
    assert a.image.shape == (80, 112, 3) and a.image.dtype == img.dtype
    assert (a.image == b.image).all() and not (a.image == c.image).all()
    assert steps == [(i, FAST_STEPS) for i in range(FAST_STEPS + 1)]
    assert schedulers == [LCMScheduler] * 3
    assert (a.params.steps, a.params.guidance) == (FAST_STEPS, FAST_GUIDANCE)
    assert any(n.startswith("fast mode: the LCM-LoRA is fused") for n in a.notes)
    plain = engine.restore(img, params.with_(fast=False, steps=2), model="tiny-full")  # loaded afresh
    assert schedulers[-1] is not LCMScheduler and not engine._pipeline.fast
    assert plain.image.shape == a.image.shape


def test_lcm_step_is_diffusers_step(fast_pipe: PasdPipeline) -> None:
    """Our step (our draw) equals LCMScheduler.step with the same generator: the same formula."""
    ours, theirs = lcm_scheduler(fast_pipe.scheduler.config), lcm_scheduler(fast_pipe.scheduler.config)
    for s in (ours, theirs):
        s.set_timesteps(FAST_STEPS)
    assert ours.timesteps.tolist() == [999, 759, 499, 259]
    shape = (1, 4, 6, 5)
    x = y = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    g_ours, g_theirs = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for i, t in enumerate(ours.timesteps):
        out = torch.randn(shape, generator=torch.Generator().manual_seed(10 + i))
        following = ours.timesteps[i + 1] if i + 1 < len(ours.timesteps) else None
        x = lcm_step(ours, out, t, x, following, lambda: torch.randn(shape, generator=g_ours))
        y = theirs.step(out, t, y, generator=g_theirs, return_dict=False)[0]
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_fast_mode_keeps_region_fidelity_anchor_previews_and_restoration(fast_pipe: PasdPipeline) -> None:
    img = image(64, 96)
    plain = run(fast_pipe, img)
    assert torch.isfinite(plain).all() and plain.shape == (1, 3, 64, 96)
    assert torch.equal(run(fast_pipe, img, scale_map=torch.ones(1, 1, 64, 96)), plain)
    # The whole image as its own anchor draws the very same noise.
    assert torch.equal(run(fast_pipe, img, anchor=NoiseAnchor(0, 0, 8, 12)), plain)

    scale = torch.ones(1, 1, 64, 96)
    scale[..., :, :32] = 0.0  # no ControlNet on the left third
    region = run(fast_pipe, img, scale_map=scale)
    diff = (region - plain).abs().mean(dim=(0, 1))
    inside, outside = diff[:, :32].mean(), diff[:, 64:].mean()
    assert inside > 0 and inside > 2 * outside

    frames: list = []
    run(fast_pipe, img, preview=frames.append)
    assert len(frames) == FAST_STEPS and all(f.ndim == 3 and f.shape[-1] == 3 for f in frames)

    pulled = run(fast_pipe, img, knobs=SamplingKnobs(restoration=1.0))  # LCM's latents are DDPM-scaled
    assert torch.isfinite(pulled).all() and not torch.equal(pulled, plain)


@pytest.mark.parametrize(("guidance", "batch"), [(1.0, 1), (FAST_GUIDANCE, 2), (9.0, 2)])
def test_guidance_one_runs_without_the_unconditional_branch(
    fast_pipe: PasdPipeline, guidance: float, batch: int
) -> None:
    shapes: dict[str, torch.Size] = {}
    out = run(fast_pipe, image(32, 32), guidance=guidance, trace=lambda n, t: shapes.setdefault(n, t.shape))
    assert shapes["prompt_embeds"][0] == batch and torch.isfinite(out).all()


def test_fast_steps_are_lcms(fast_pipe: PasdPipeline) -> None:
    assert run(fast_pipe, image(32, 32), steps=1).shape == (1, 3, 32, 32)
    with pytest.raises(FastModeError, match="1 to 50 steps"):
        run(fast_pipe, image(32, 32), steps=51)


def test_the_scheduler_is_lcm_on_the_models_betas(fast_pipe: PasdPipeline) -> None:
    assert 1.0 <= FAST_GUIDANCE <= 2.0 and FAST_STEPS == 4
    lcm = fast_pipe.make_scheduler()
    assert isinstance(lcm, LCMScheduler) and isinstance(fast_pipe.scheduler, UniPCMultistepScheduler)
    torch.testing.assert_close(lcm.alphas_cumprod, fast_pipe.scheduler.alphas_cumprod)
    assert lcm.config.prediction_type == "epsilon" and not lcm.config.clip_sample


# ---------------------------------------------------------------------------------------- refusals
def test_enabling_again(fast_pipe: PasdPipeline, tmp_path: Path) -> None:
    assert fast_pipe.enable_fast(fast_pipe.fast_lora) == 0  # the same file: nothing to do
    other = write_tiny_lcm_lora(tmp_path, seed=9)
    with pytest.raises(FastModeError, match="load the model again"):
        fast_pipe.enable_fast(other)


def test_missing_lora_names_the_download(models: Path, tmp_path: Path) -> None:
    with pytest.raises(FastModeError, match=f"not installed.*{re.escape(DOWNLOAD_COMMAND)}"):
        find_lcm_lora(tmp_path)
    assert find_lcm_lora(models) == models / LCM_MODEL_ID / LCM_FILE
    pipe = load_pipeline(resolve_model("tiny-light", models), CPU)
    with pytest.raises(FastModeError, match=re.escape(DOWNLOAD_COMMAND)):
        enable_fast_mode(pipe, tmp_path)
    assert not pipe.fast and isinstance(pipe.make_scheduler(), UniPCMultistepScheduler)


def test_other_families_are_refused(tiny_sdxl: Path, tmp_path: Path) -> None:
    """Refused for what they are, before any file is looked for (no download advice)."""
    sdxl = load_pipeline(resolve_model(tiny_sdxl), CPU)
    for call in (lambda: enable_fast_mode(sdxl, tmp_path), lambda: sdxl.enable_fast(models_dir=tmp_path)):
        with pytest.raises(FastModeError, match=r"SD1\.5 PASD models.*PASD-SDXL") as err:
            call()
        assert "download" not in str(err.value)
    supir = SupirPipeline.__new__(SupirPipeline)  # no weights needed to be refused
    with pytest.raises(FastModeError, match="SUPIR"):
        enable_fast_mode(supir, tmp_path)


def test_colour_model_is_refused(tiny_models: dict[str, Path], lora: Path) -> None:
    pipe = load_pipeline(resolve_model(tiny_models["color"]), CPU)
    with pytest.raises(FastModeError, match="v_prediction"):
        pipe.enable_fast(lora)
    assert not pipe.fast


def test_fast_mode_through_the_cli_and_the_service(tmp_path: Path) -> None:
    """Written with the CLI's tiny-model, listed by the service, run with fast: true on both."""
    from PIL import Image

    from backend.client import RawImage
    from tests.conftest import run_backend

    from .service_server import ServerProcess

    models = tmp_path / "models"
    for args in (("tiny-full", "--variant", "full"), (LCM_MODEL_ID, "--variant", "lcm-lora")):
        made = run_backend("tiny-model", str(models / args[0]), *args[1:])
        assert made.returncode == 0, made.stderr
    pixels = (np.random.default_rng(3).random((32, 48, 3)) * 255).astype(np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(pixels).save(src)
    done = run_backend(
        "upscale", str(src), "-o", str(tmp_path / "out.png"), "--models", str(models),
        "--fast", "--scale", "1", "--process-size", "256", "--seed", "1", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "note: fast mode: the LCM-LoRA is fused into" in done.stdout
    with ServerProcess(models, tmp_path / "home") as server:
        client = server.client()
        assert client._json("GET", "/v1/models")["fast_mode"] is True
        image_id = client.upload(RawImage(48, 32, 3, "uint8", pixels.tobytes())).id
        params = {"scale": 1.0, "process_size": 256, "seed": 1, "fast": True}
        job = client.wait(client.submit(image_id, params).id)
        assert job.params["fast"] is True and any("fast mode" in n for n in job.result["notes"])
        served = np.frombuffer(client.result_image(job.id).data, np.uint8).reshape(32, 48, 3)
    assert np.array_equal(served, np.asarray(Image.open(tmp_path / "out.png")))  # the same run either way
