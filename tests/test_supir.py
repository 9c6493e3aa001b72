"""SUPIR as a model family: the engine runs it with its own settings, tiles, region fidelity,
previews and offload; its files load strictly from every layout users have; its weights are never
fetched before its non-commercial terms are accepted. Parity with the official code is in
``test_supir_parity.py``."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from backend.devices import choose_device
from backend.engine import Engine
from backend.models.loading import ModelLoadError
from backend.models.registry import FAMILIES, REGISTRY
from backend.models.store import read_manifest, resolve_model
from backend.models.supir.random_weights import random_state
from backend.models.supir.tiny import BASE_FILE, SUPIR_FILE, write_tiny_supir
from backend.pipelines.base import DenoiseTiling, SamplingKnobs
from backend.pipelines.params import RestoreParams
from backend.pipelines.prompt import join_prompt
from backend.pipelines.supir import SupirPipeline

from .conftest import run_backend
from .fake_hub import FakeHub
from .test_download import cli, cli_env

FAST = RestoreParams(steps=3, seed=7, process_size=256, prompt="old photo")


def rgb(h: int, w: int, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, size=(h, w, channels)).astype(dtype)


@pytest.fixture(scope="module")
def engine(tiny_supir: Path, one_thread: None) -> Engine:
    return Engine(tiny_supir.parent, device="cpu")


@pytest.fixture(scope="module")
def pipe(engine: Engine) -> SupirPipeline:
    loaded = engine.pipeline_for(engine.find_model("tiny-supir", "upscale"))
    assert isinstance(loaded, SupirPipeline)
    return loaded


def test_supir_runs_with_its_own_settings_and_everything_the_engine_offers(engine: Engine) -> None:
    """Unset knobs take SUPIR's test.py settings; 16-bit with alpha, a soft mask over several tiles
    and tiled VAE passes, previews and offload all work, and a seed repeats a run exactly."""
    own = FAMILIES["supir"].defaults["upscale"]
    img = rgb(40, 36, 4, np.uint16, seed=5)
    mask = np.zeros((40, 36), np.float32)
    mask[8:30, 6:24] = 1.0
    params = RestoreParams(scale=2.0, steps=3, process_size=256, seed=3, tile=128, vae_tile=128)
    shown: list[np.ndarray] = []
    res = engine.restore(img, params, mask=mask, model="tiny-supir", preview=shown.append)
    assert res.params is not None
    assert (res.params.guidance, res.params.guidance_start, res.params.churn, res.params.churn_noise) == (
        4.0,
        1.0,
        5.0,
        1.01,
    )
    assert res.params.restoration == -1.0 and res.params.fidelity_fg == 1.0
    assert res.prompt == own.quality_prompt and res.negative_prompt == join_prompt(own.negative_prompt)
    assert res.image.dtype == np.uint16 and res.image.shape == (80, 72, 4) and res.plan.tiles > 1
    assert res.plan.process_size[0] % 32 == 0 and res.plan.process_size[1] % 32 == 0
    assert len(shown) >= 4 and all(p.dtype == np.uint8 and p.shape[2] == 3 for p in shown)
    again = engine.restore(img, params, mask=mask, model="tiny-supir")
    other = engine.restore(img, params.with_(fidelity_fg=0.2), mask=mask, model="tiny-supir")
    assert np.array_equal(res.image, again.image) and not np.array_equal(res.image, other.image)
    moved = Engine(engine.models_dir, device="cpu", offload=True)
    assert np.array_equal(moved.restore(img, params, mask=mask, model="tiny-supir").image, res.image)


def test_one_tile_is_the_untiled_run_and_tiles_blend_smoothly(pipe: SupirPipeline) -> None:
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    knobs = SamplingKnobs(restoration=2.0, fidelity_start=0.5)
    run = dict(prompt="old photo", negative_prompt="blurry", steps=3, guidance=4.0, seed=2, knobs=knobs)
    plain = pipe(image, **run)
    one = pipe(image, tiling=DenoiseTiling(16, 0), **run)
    assert torch.equal(plain, one)
    tiled = pipe(image, tiling=DenoiseTiling(8, 4), **run)
    assert torch.isfinite(tiled).all() and not torch.equal(tiled, plain)

    # Blended estimates leave no seam: the tiled result is as smooth across the tile borders
    # (latent rows/cols 4 and 8 → pixels 32 and 64) as the untiled one.
    def jump(x: torch.Tensor, at: int) -> float:
        return float((x[..., :, at] - x[..., :, at - 1]).abs().mean())

    for at in (32, 64):
        assert jump(tiled, at) < 1.5 * jump(plain, at) + 0.02


def test_control_scale_zero_is_the_plain_sdxl_unet(pipe: SupirPipeline) -> None:
    """λ = 0 turns every connector into the plain concatenation: SDXL's own UNet, whatever the control."""
    unet = pipe.model.unet
    plain = UNet2DConditionModel(**unet.config)
    plain.load_state_dict(
        {k: v for k, v in unet.state_dict().items() if not k.startswith("project_modules.")}
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 12, generator=gen)
    t = torch.tensor([700, 20])
    text = torch.randn(2, 77, 64, generator=gen)
    added = {
        "text_embeds": torch.randn(2, 32, generator=gen),
        "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2),
    }
    control = pipe.model.control(torch.randn(2, 4, 8, 12, generator=gen), x, t, text, added)
    with torch.no_grad():
        ours = unet(x, t, text, added, control, 0.0)
        theirs = plain(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert not torch.allclose(unet(x, t, text, added, control, 1.0), theirs, atol=1e-3)


def test_restoration_weight_zero_is_off_and_maps_reach_every_pixel(pipe: SupirPipeline) -> None:
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    run = dict(prompt="old photo", negative_prompt="blurry", steps=3, guidance=4.0, seed=5)
    off = pipe(image, knobs=SamplingKnobs(restoration=-1.0), **run)
    zero = pipe(image, knobs=SamplingKnobs(restoration=4.0, restore_map=0.0), **run)
    on = pipe(image, knobs=SamplingKnobs(restoration=4.0), **run)
    ones = pipe(image, knobs=SamplingKnobs(restoration=4.0, restore_map=torch.ones(1, 1, 64, 64)), **run)
    assert torch.equal(off, zero) and torch.equal(on, ones) and not torch.equal(on, off)
    # Guidance only on the left half: the right half is the unguided run's up to what crosses the
    # border through the network's receptive field.
    half = torch.zeros(1, 1, 64, 64)
    half[..., :32] = 1.0
    left = pipe(image, knobs=SamplingKnobs(restoration=4.0, restore_map=half), **run)
    assert (left[..., :24] - on[..., :24]).abs().mean() < (left[..., :24] - off[..., :24]).abs().mean()
    assert (left[..., 40:] - off[..., 40:]).abs().mean() < (left[..., 40:] - on[..., 40:]).abs().mean()


def test_a_framed_preview_draws_apply_noise_at_its_place(engine: Engine) -> None:
    img = rgb(96, 128, seed=3)
    params = FAST.with_(scale=2.0)
    whole_trace: dict[str, torch.Tensor] = {}
    crop_trace: dict[str, torch.Tensor] = {}
    whole = engine.restore(img, params, model="tiny-supir", trace=whole_trace.__setitem__)
    framed = engine.restore(img, params.with_(frame=(0, 0, 128, 96)), model="tiny-supir")
    assert np.array_equal(whole.image, framed.image)
    x, y, w, h = 48, 32, 48, 40
    crop = engine.restore(
        img[y : y + h, x : x + w], params.with_(frame=(x, y, 128, 96)), model="tiny-supir",
        trace=crop_trace.__setitem__,
    )  # fmt: skip
    anchor = crop.plan.anchor
    assert anchor is not None
    ch, cw = crop_trace["noise"].shape[-2:]
    part = (..., slice(anchor.top, anchor.top + ch), slice(anchor.left, anchor.left + cw))
    assert torch.equal(crop_trace["noise"], whole_trace["noise"][part])


def _copy(tiny_supir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models" / "broken-supir"
    shutil.copytree(tiny_supir, root)
    return root


def test_strict_loading_names_every_part_and_key_that_does_not_fit(tiny_supir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_supir, tmp_path)
    state = torch.load(root / SUPIR_FILE, weights_only=True)
    control_key = "model.control_model.input_hint_block.0.weight"
    del state[control_key]
    state["model.diffusion_model.project_modules.12.zero_conv.weight"] = torch.zeros(1)
    shaped = "first_stage_model.denoise_encoder.conv_in.weight"
    state[shaped] = torch.zeros(7, 3, 3, 3)
    torch.save(state, root / SUPIR_FILE)
    with pytest.raises(ModelLoadError) as caught:
        SupirPipeline.from_installed(resolve_model(root), choose_device("cpu", "fp32"))
    message = str(caught.value)
    for text in ("[control]", control_key, "[connectors]", "project_modules.12.zero_conv.weight"):
        assert text in message
    assert "[denoise_encoder]" in message and shaped in message and "[7, 3, 3, 3]" in message

    # Keys that belong to no part (an EMA copy, a vision tower) are listed, not fatal.
    state = torch.load(tiny_supir / SUPIR_FILE, weights_only=True)
    state["model_ema.decay"] = torch.tensor(0.999)
    torch.save({"state_dict": state}, root / SUPIR_FILE)  # Lightning's wrapper is unwrapped
    loaded = SupirPipeline.from_installed(resolve_model(root), choose_device("cpu", "fp32"))
    assert loaded.report.ignored[str(root / SUPIR_FILE)] == ["model_ema.decay"]


def test_a_pickle_with_code_is_refused_and_fp16_safetensors_load(tiny_supir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_supir, tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / SUPIR_FILE).write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ModelLoadError, match="Could not read weights"):
        SupirPipeline.from_installed(resolve_model(root), choose_device("cpu", "fp32"))

    # Kijai's SUPIR_pruned files: the same keys in float16 safetensors.
    state = torch.load(tiny_supir / SUPIR_FILE, weights_only=True)
    save_file({k: v.half() for k, v in state.items()}, str(root / "SUPIR-v0Q_fp16.safetensors"))
    (root / SUPIR_FILE).unlink()
    manifest = json.loads((root / "pasd_model.json").read_text())
    manifest["extra"]["supir"] = "SUPIR-v0Q_fp16.safetensors"
    (root / "pasd_model.json").write_text(json.dumps(manifest))
    engine = Engine(root.parent, device="cpu")
    half = engine.restore(rgb(32, 32), FAST, model="broken-supir").image.astype(float)
    full = Engine(tiny_supir.parent, device="cpu").restore(rgb(32, 32), FAST, model="tiny-supir").image
    assert np.abs(half - full).mean() < 2.0


def test_the_sdxl_base_as_diffusers_folders_gives_the_same_run(tiny_supir: Path, tmp_path: Path) -> None:
    folders = write_tiny_supir(tmp_path / "models" / "supir-folders", seed=7, base="folders")
    assert not (folders / BASE_FILE).exists() and (folders / "unet" / "config.json").is_file()
    img = rgb(32, 40, seed=9)
    a = Engine(tiny_supir.parent, device="cpu").restore(img, FAST, model="tiny-supir").image
    b = Engine(folders.parent, device="cpu").restore(img, FAST, model="supir-folders").image
    assert np.array_equal(a, b)


def _supir_repos(tmp_path: Path, tiny_supir: Path) -> dict[str, Path]:
    """Kijai/SUPIR_pruned (fp16 safetensors of both official checkpoints) and SDXL base's repository
    (its single file, tokenizers, and components SUPIR does not need)."""
    hub = tmp_path / "hub"
    supir = hub / "SUPIR"
    supir.mkdir(parents=True)
    state = torch.load(tiny_supir / SUPIR_FILE, weights_only=True)
    for kind in ("Q", "F"):
        save_file({k: v.half() for k, v in state.items()}, str(supir / f"SUPIR-v0{kind}_fp16.safetensors"))
    (supir / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    sdxl = hub / "sdxl"
    sdxl.mkdir()
    shutil.copy(tiny_supir / BASE_FILE, sdxl / "sd_xl_base_1.0_0.9vae.safetensors")
    for folder in ("tokenizer", "tokenizer_2"):
        shutil.copytree(tiny_supir / folder, sdxl / folder)
    (sdxl / "unet").mkdir()
    (sdxl / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"never fetched")
    # An SDXL fine-tune in the same single-file layout, with a key of no part (fine-tunes carry such).
    juggernaut = hub / "juggernaut"
    juggernaut.mkdir()
    base = load_file(str(tiny_supir / BASE_FILE))
    base = {k: v * 1.01 if k.startswith("model.diffusion_model.out.") else v for k, v in base.items()}
    save_file(
        {**base, "model_ema.num_updates": torch.tensor(7)},
        str(juggernaut / REGISTRY["juggernaut-xl-v9"].files[0]),
    )
    return {
        REGISTRY["supir-v0q"].repo: supir,
        REGISTRY["sdxl-base-file"].repo: sdxl,
        REGISTRY["juggernaut-xl-v9"].repo: juggernaut,
    }


def test_supir_is_fetched_only_after_its_terms_are_accepted(tmp_path: Path, tiny_supir: Path) -> None:
    """Without acceptance the download shows the non-commercial terms and contacts nothing; with it,
    exactly the registry's files arrive, the manifest links SUPIR to its base, and it runs."""
    models = tmp_path / "models"
    manifest = json.loads((tiny_supir / "pasd_model.json").read_text())
    with FakeHub(_supir_repos(tmp_path, tiny_supir)) as hub:
        refused = cli(hub, "download", "supir-v0q", "--quiet", "--models", str(models))
        assert refused.returncode == 1
        assert "NON-COMMERCIAL" in refused.stderr and "--accept-licence supir" in refused.stderr
        assert hub.requests == [] and not models.exists()
        result = cli(
            hub, "download", "supir-v0q", "--accept-licence", "supir", "--quiet", "--models", str(models)
        )
        assert result.returncode == 0, result.stderr
        specs = [REGISTRY[i] for i in ("sdxl-base-file", "sdxl-tokenizers", "supir-v0q")]
        assert sorted(hub.fetched()) == sorted(f"{s.repo}/{f}" for s in specs for f in s.files)
    installed = read_manifest(models / "supir-v0q")
    assert installed.family == "supir" and manifest["family"] == "supir"
    assert (
        installed.resolve(models / "supir-v0q", "base_file")
        == (models / "sdxl-base-file" / "sd_xl_base_1.0_0.9vae.safetensors").resolve()
    )
    # The real files are full width; the tiny ones stand in, so the manifest is told so.
    data = json.loads((models / "supir-v0q" / "pasd_model.json").read_text())
    (models / "supir-v0q" / "pasd_model.json").write_text(json.dumps({**data, "tiny": True}))
    image = tmp_path / "in.npy"
    np.save(image, rgb(24, 32, seed=3))
    out = tmp_path / "out.npy"
    run = run_backend(
        "upscale", str(image), "-o", str(out), "--model", "supir-v0q", "--models", str(models),
        "--steps", "2", "--process-size", "256", "--seed", "4", "--device", "cpu", "--quiet",
        **cli_env(hub, models),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert np.load(out).shape == (48, 64, 3)
    listed = run_backend("models", "--models", str(models))
    assert listed.returncode == 0, listed.stderr
    assert "supir-v0q" in listed.stdout and "non-commercial" in listed.stdout
    assert "supir-v0q-juggernaut   supir" in listed.stdout and "linked" in listed.stdout
    described = run_backend("inspect", "supir-v0q", "--models", str(models))
    assert described.returncode == 0, described.stderr
    assert "every part matches the official layout" in described.stdout and "connectors" in described.stdout

    # SUPIR on an SDXL fine-tune: only the fine-tune's file is fetched; SUPIR's is shared.
    with FakeHub(_supir_repos(tmp_path / "again", tiny_supir)) as hub:
        args = (
            "download",
            "supir-v0q-juggernaut",
            "--accept-licence",
            "supir",
            "--quiet",
            "--models",
            str(models),
        )
        result = cli(hub, *args)
        assert result.returncode == 0, result.stderr
        assert hub.fetched() == [
            f"{REGISTRY['juggernaut-xl-v9'].repo}/{REGISTRY['juggernaut-xl-v9'].files[0]}"
        ]
    root = models / "supir-v0q-juggernaut"
    linked = read_manifest(root)
    assert linked.resolve(root, "supir") == (models / "supir-v0q" / "SUPIR-v0Q_fp16.safetensors").resolve()
    data = json.loads((root / "pasd_model.json").read_text())
    (root / "pasd_model.json").write_text(json.dumps({**data, "tiny": True}))
    out2 = tmp_path / "out2.npy"
    run = run_backend(
        "upscale", str(image), "-o", str(out2), "--model", "supir-v0q-juggernaut", "--models", str(models),
        "--steps", "2", "--process-size", "256", "--seed", "4", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not np.array_equal(np.load(out2), np.load(out))  # another base, another picture


def test_random_weights_are_a_function_of_inventory_and_seed() -> None:
    shapes = {"b.weight": (3,), "a.weight": (4, 2), "a.bias": (4,)}
    one, two = random_state(shapes, 5), random_state(dict(reversed(shapes.items())), 5)
    assert all(torch.equal(one[k], two[k]) for k in shapes)
    assert not torch.equal(random_state(shapes, 6)["a.weight"], one["a.weight"])


def test_adain_colour_fix_runs_against_the_stage_one_image(engine: Engine) -> None:
    img = rgb(32, 32, seed=4)
    wavelet = engine.restore(img, FAST, model="tiny-supir").image
    adain = engine.restore(img, FAST.with_(color_fix_method="adain"), model="tiny-supir").image
    none = engine.restore(img, FAST.with_(color_fix=False), model="tiny-supir").image
    assert len({wavelet.tobytes(), adain.tobytes(), none.tobytes()}) == 3
    with pytest.raises(ValueError, match="color_fix_method"):
        FAST.with_(color_fix_method="lab").validate()


def test_the_denoise_encoder_tiles_like_the_vae(pipe: SupirPipeline) -> None:
    """SUPIR's degradation-robust encoder runs in VAE tiles with shared GroupNorm statistics (and
    the VAE's quant_conv): with halos that reach across the image it gives the untiled latents; with
    short halos it departs from them no more than the VAE's own encoder does (its mid-block
    attention is global; every tiled VAE approximates it)."""
    from backend.pipelines.tiled_vae import VaeTiling, tiled_encode

    ramp = torch.linspace(0.0, 0.6, 192).expand(1, 3, 128, 192)
    image = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(2)) * 0.4 + ramp

    def error(encoder: torch.nn.Module | None, tiling: VaeTiling) -> float:
        run = dict(sample=False, from_unit=True, encoder=encoder)
        whole = tiled_encode(pipe.model.vae, image, None, **run)
        return float((tiled_encode(pipe.model.vae, image, tiling, **run) - whole).norm() / whole.norm())

    assert error(pipe.model.denoise_encoder, VaeTiling(tile=12, halo=16)) < 1e-4
    short = VaeTiling(tile=8, halo=8)
    assert error(pipe.model.denoise_encoder, short) < 3 * error(None, short)


def test_offload_sizing_counts_the_files_a_supir_folder_links(tiny_supir: Path) -> None:
    from backend.engine import weights_parameters
    from backend.models.supir.tiny import official_inventory, tiny_supir_configs

    inventory = official_inventory(tiny_supir_configs(tiny_supir / "tokenizer"))
    params = sum(int(np.prod(s)) for f in inventory.values() for s in f.values())
    counted = weights_parameters(resolve_model(tiny_supir))
    assert abs(counted - params) < 0.01 * params  # the pickle counts by its bytes
