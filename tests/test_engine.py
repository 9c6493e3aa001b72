"""The engine end to end on tiny models: sizes, bit depths, alpha, grey, colorize, region fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend import image_ops
from backend.devices import DeviceError, auto_tile_sizes, choose_device
from backend.engine import Canceled, CancelToken, Engine, InputError, plan_process_size
from backend.models.loading import ModelLoadError
from backend.pipelines.params import ParamsError, RestoreParams

FAST = RestoreParams(steps=2, seed=7, process_size=256, prompt="old photo")


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path]) -> Engine:
    return Engine(tiny_models["full"].parent, device="cpu")


def rgb(h: int, w: int, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, size=(h, w, channels)).astype(dtype)


def test_upscale_is_seeded_and_sized(engine: Engine) -> None:
    img = rgb(40, 56)
    a = engine.restore(img, FAST.with_(scale=2.0), model="tiny-full")
    b = engine.restore(img, FAST.with_(scale=2.0), model="tiny-full")
    assert a.image.shape == (80, 112, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image)
    assert a.seed == 7 and a.model == "tiny-full"
    assert a.plan.process_size == (256, 360)  # short side up to 256, multiples of 8
    assert a.prompt == "old photo, clean, high-resolution, 8k"


def test_random_seed_is_reported(engine: Engine) -> None:
    res = engine.restore(rgb(16, 16), FAST.with_(seed=None, scale=1.0), model="tiny-full")
    again = engine.restore(rgb(16, 16), FAST.with_(seed=res.seed, scale=1.0), model="tiny-full")
    assert np.array_equal(res.image, again.image)


@pytest.mark.parametrize("channels", [2, 4])
def test_16_bit_with_alpha_round_trip(engine: Engine, channels: int) -> None:
    img = rgb(24, 20, channels, np.uint16, seed=channels)
    res = engine.restore(img, FAST.with_(scale=1.0), model="tiny-full")
    assert res.image.dtype == np.uint16 and res.image.shape == img.shape
    assert np.array_equal(res.image[..., -1], img[..., -1])  # ×1: alpha kept exactly
    assert np.any(res.image[..., :-1] % 257 != 0)  # real 16-bit values, not 8-bit ones widened
    up = engine.restore(img, FAST.with_(scale=3.0), model="tiny-full")
    assert up.image.shape == (72, 60, channels)
    alpha = torch.from_numpy(image_ops.to_float(img[..., -1:])).permute(2, 0, 1)[None]
    want = image_ops.from_float(image_ops.resize(alpha, (72, 60), kind="alpha")[0, 0].numpy(), np.uint16)
    assert np.array_equal(up.image[..., -1], want)  # alpha resized on its own, not by the model


def test_grey_stays_grey(engine: Engine) -> None:
    img = rgb(32, 32, 1)[..., 0]
    res = engine.restore(img, FAST.with_(scale=2.0), model="tiny-full")
    assert res.image.shape == (64, 64, 1)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 5000)])
def test_odd_sizes(engine: Engine, shape: tuple[int, int]) -> None:
    img = rgb(*shape)
    res = engine.restore(img, FAST.with_(scale=1.0, steps=1, tile=256), model="tiny-full")
    assert res.image.shape == (*shape, 3)


def test_plan_process_size_limits_extreme_aspect() -> None:
    h, w = plan_process_size(17, 5000, 768, "upscale")
    assert h >= 64 and h * w <= 4 * 768 * 768 * 1.0001
    h, w = plan_process_size(2000, 3000, 768, "upscale")
    assert (h, w) == (2000, 3000)
    h, w = plan_process_size(4000, 6000, 768, "colorize")
    assert (round(h), round(w)) == (768, 1152)


def test_float_colorize_keeps_luminance_exactly(engine: Engine) -> None:
    grey = np.random.default_rng(1).random((48, 40, 1), dtype=np.float32)
    res = engine.restore(grey, FAST.with_(task="colorize", scale=1.0, prompt=""), model="tiny-color")
    out = res.image
    assert out.shape == (48, 40, 3) and out.dtype == np.float32

    def y(pixels: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(pixels).permute(2, 0, 1)[None].double()
        return image_ops.luminance(image_ops.srgb_to_linear(t.expand(1, 3, *t.shape[-2:])))

    y_in, y_out = y(grey), y(out)
    assert (y_out - y_in).abs().max() < 1e-5
    assert np.abs(out[..., 0] - out[..., 2]).max() > 1e-3  # it did add colour
    # The reference's colorize defaults: no quality words, "b&w, color bleeding" as the negative.
    assert res.prompt == "" and res.negative_prompt == "b&w, color bleeding"


def test_colorize_with_mask_colours_only_inside(engine: Engine) -> None:
    img = rgb(32, 48, 3, np.uint16, seed=3)
    mask = np.zeros((32, 48), np.float32)
    mask[8:24, 10:30] = 1.0
    res = engine.restore(img, FAST.with_(task="colorize", scale=1.0), mask=mask, model="tiny-color")
    assert np.array_equal(res.image[mask == 0], img[mask == 0])
    assert not np.array_equal(res.image[mask == 1], img[mask == 1])


def test_region_fidelity_changes_only_what_it_should(engine: Engine) -> None:
    img = rgb(64, 64, seed=9)
    mask = np.zeros((64, 64), np.float32)
    base = engine.restore(img, FAST.with_(scale=1.0, fidelity_fg=1.0, fidelity_bg=1.0), model="tiny-full")
    same = engine.restore(
        img, FAST.with_(scale=1.0, fidelity_fg=2.0, fidelity_bg=1.0), mask=mask, model="tiny-full"
    )
    other = engine.restore(
        img, FAST.with_(scale=1.0, fidelity_fg=2.0, fidelity_bg=0.2), mask=mask, model="tiny-full"
    )
    assert np.array_equal(base.image, same.image)  # an empty selection leaves the background scale alone
    assert not np.array_equal(base.image, other.image)


def test_cancel_token_stops_a_run(engine: Engine) -> None:
    token = CancelToken()
    seen = []

    def progress(stage: str, step: int, total: int) -> None:
        seen.append(stage)
        if stage == "denoise":
            token.cancel()

    with pytest.raises(Canceled):
        engine.restore(rgb(32, 32), FAST, model="tiny-full", progress=progress, cancel=token)
    assert "decode" not in seen


def test_bad_input_gets_clear_errors(engine: Engine, tiny_models: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="empty"):
        engine.restore(np.zeros((0, 5, 3), np.uint8), FAST)
    with pytest.raises(InputError, match="channels"):
        engine.restore(np.zeros((5, 5, 5), np.uint8), FAST)
    with pytest.raises(InputError, match="8-bit, 16-bit or float32"):
        engine.restore(np.zeros((5, 5, 3), np.int64), FAST)
    with pytest.raises(InputError, match="NaN"):
        engine.restore(np.full((5, 5, 3), np.nan, np.float32), FAST)
    with pytest.raises(InputError, match="same size"):
        engine.restore(rgb(8, 8), FAST, mask=np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        engine.restore(rgb(8, 8), FAST, mask=np.full((8, 8), 2.0, np.float32))
    with pytest.raises(InputError, match="scale must be between 1 and 4"):
        engine.restore(rgb(8, 8), FAST.with_(scale=8.0))
    with pytest.raises(ModelLoadError, match="does not do colorize"):
        engine.restore(rgb(8, 8), FAST.with_(task="colorize", scale=1.0), model="tiny-full")
    with pytest.raises(ModelLoadError, match="not installed"):
        engine.restore(rgb(8, 8), FAST, model="no-such-model")


def test_params_validation_names_the_parameter() -> None:
    for field, value, text in [
        ("fidelity_fg", 2.5, "fidelity_fg must be between 0 and 2"),
        ("fidelity_bg", float("nan"), "fidelity_bg must be a finite number"),
        ("steps", 0, "steps must be between 1 and 200"),
        ("tile", 100, "tile must be a multiple of 8"),
        ("seed", -1, "seed must be between"),
    ]:
        with pytest.raises(ParamsError, match=text):
            RestoreParams(**{field: value}).validate()
    with pytest.raises(ParamsError, match="unknown parameter"):
        RestoreParams.from_dict({"scael": 2})
    assert RestoreParams.from_dict(RestoreParams(seed=3).to_dict()) == RestoreParams(seed=3)


def test_device_choice_on_this_machine() -> None:
    choice = choose_device("auto")
    assert choice.device.type in ("cpu", "cuda", "mps")
    cpu = choose_device("cpu")
    assert cpu.dtype == torch.float32
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        choose_device("cpu", "fp16")
    with pytest.raises(DeviceError, match="unknown precision"):
        choose_device("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            choose_device("cuda")


def test_auto_tiles_follow_free_memory() -> None:
    small = auto_tile_sizes(2 * 2**30, 320, 128, torch.float16)
    large = auto_tile_sizes(40 * 2**30, 320, 128, torch.float16)
    assert 512 <= small.diffusion <= large.diffusion <= 2048
    assert small.vae <= large.vae
    assert small.diffusion % 64 == 0 and small.vae % 64 == 0


def test_offload_gives_the_same_result(tiny_models: dict[str, Path]) -> None:
    img = rgb(24, 24, seed=4)
    plain = Engine(tiny_models["full"].parent, device="cpu", offload=False)
    moved = Engine(tiny_models["full"].parent, device="cpu", offload=True)
    a = plain.restore(img, FAST.with_(scale=1.0), model="tiny-full")
    b = moved.restore(img, FAST.with_(scale=1.0), model="tiny-full")
    assert moved.pipeline_for(moved.find_model("tiny-full", "upscale")).offload
    assert np.array_equal(a.image, b.image)


OOM_SCRIPT = """
import resource, sys
import numpy as np
from backend.engine import Engine, OutOfMemory
from backend.pipelines.params import RestoreParams

engine = Engine(sys.argv[1], device="cpu")
params = RestoreParams(steps=1, seed=1, scale=1.0, process_size=256, tile=256, vae_tile=256)
engine.restore(np.zeros((64, 64, 3), np.uint8), params, model="tiny-full")
status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
limit = int(status) * 1024 + 150 * 2**20  # 150 MB more than now: a 1500² run cannot fit
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
try:
    big = np.zeros((1500, 1500, 3), np.uint8)
    engine.restore(big, params.with_(tile=2048, vae_tile=2048), model="tiny-full")
except OutOfMemory as exc:
    print("MESSAGE:", exc)
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
result = engine.restore(np.zeros((64, 64, 3), np.uint8), params, model="tiny-full")
print("NEXT:", result.image.shape)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux address-space limits")
def test_out_of_memory_becomes_a_message(tiny_models: dict[str, Path]) -> None:
    """A real allocation failure (address space capped in a child process), not a simulated one."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT, str(tiny_models["full"].parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MESSAGE: Ran out of memory" in done.stdout and "Try smaller tiles" in done.stdout
    assert "NEXT: (64, 64, 3)" in done.stdout  # the engine still works afterwards


def test_automatic_words_join_the_prompt_when_blip_is_installed(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from backend.models.tiny_blip import write_tiny_blip

    (tmp_path / "tiny-full").symlink_to(tiny_models["full"], target_is_directory=True)
    params = FAST.with_(scale=1.0, auto_prompt=True, prompt="a house")
    without = Engine(tmp_path, device="cpu").restore(rgb(16, 16), params, model="tiny-full")
    assert without.prompt == "a house, clean, high-resolution, 8k"
    assert any("automatic description is off" in note for note in without.notes)

    write_tiny_blip(tmp_path / "blip")
    engine = Engine(tmp_path, device="cpu")
    result = engine.restore(rgb(16, 16), params, model="tiny-full")
    words = engine.captioner().describe(torch.rand(1, 3, 32, 32))
    parts = result.prompt.split(", ")
    assert parts[0] == "a house" and parts[-3:] == ["clean", "high-resolution", "8k"]
    # The caption sits between the user's words and the quality words (the tiny random BLIP says the
    # same words for any picture, so the engine's caption equals the one of another image).
    assert len(parts) == 5 and parts[1] == words
    assert not result.notes


def test_previews_follow_the_run_and_do_not_change_it(engine: Engine) -> None:
    img = rgb(40, 56)
    shown: list[np.ndarray] = []
    with_preview = engine.restore(
        img, FAST.with_(scale=2.0, steps=3), model="tiny-full", preview=shown.append
    )
    plain = engine.restore(img, FAST.with_(scale=2.0, steps=3), model="tiny-full")
    assert np.array_equal(with_preview.image, plain.image)
    # the pre-scaled input, one estimate per step, the result
    assert len(shown) == 1 + 3 + 1
    for picture in shown:
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
        assert max(picture.shape[:2]) <= 256
    assert abs(shown[-1].shape[0] / shown[-1].shape[1] - 80 / 112) < 0.05


def test_trace_sees_every_stage_and_does_not_change_the_run(engine: Engine) -> None:
    """The stage trace (for the parity test against the reference) only looks: same result, and what
    it got are copies that later in-place work (the colour fix) does not touch."""
    img = rgb(40, 56)
    params = FAST.with_(scale=2.0, steps=3)
    seen: dict[str, torch.Tensor] = {}
    names: list[str] = []

    def trace(name: str, tensor: torch.Tensor) -> None:
        names.append(name)
        seen[name] = tensor

    traced = engine.restore(img, params, model="tiny-full", trace=trace)
    plain = engine.restore(img, params, model="tiny-full")
    assert np.array_equal(traced.image, plain.image)
    assert names == [
        "cond",
        "prompt_embeds",
        "init_latents",
        "noise",
        "added_noise",
        "noised_start",
        "step_0",
        "step_1",
        "step_2",
        "decoded",
        "color_fixed",
        "final",
    ]
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in seen.values())
    assert not torch.equal(seen["decoded"], seen["color_fixed"])
    assert seen["prompt_embeds"].shape[0] == 2 and seen["decoded"].shape == (1, 3, 256, 360)

    mask = np.zeros((40, 56), np.float32)
    mask[10:30, 10:40] = 1
    names.clear()
    with_mask = engine.restore(img, params, mask=mask, model="tiny-full", trace=trace)
    assert np.array_equal(with_mask.image, engine.restore(img, params, mask=mask, model="tiny-full").image)
    assert names[:2] == ["cond", "scale_map"] and seen["scale_map"].shape == (1, 1, 256, 360)


def test_a_framed_preview_runs_at_the_whole_images_scale_with_its_noise(engine: Engine) -> None:
    """A preview's crop is processed as Apply processes the whole image: same process scale, and the
    very noise the whole run draws at that place; framing the whole image changes nothing at all."""
    img = rgb(96, 128, seed=3)
    params = FAST.with_(scale=2.0, steps=2)
    traces: dict[str, dict[str, torch.Tensor]] = {"whole": {}, "crop": {}}

    def tracer(name: str):
        return lambda stage, tensor: traces[name].__setitem__(stage, tensor)

    whole = engine.restore(img, params, model="tiny-full", trace=tracer("whole"))
    framed = engine.restore(img, params.with_(frame=(0, 0, 128, 96)), model="tiny-full")
    assert np.array_equal(whole.image, framed.image)  # Apply's draws are the reference's draws
    assert whole.plan.process_size == (256, 344)

    x, y, w, h = 48, 30, 48, 42  # a crop whose place falls on the latent grid (2 × 256/192 × 30 = 80)
    crop = engine.restore(img[y : y + h, x : x + w], params.with_(frame=(x, y, 128, 96)), model="tiny-full",
                          trace=tracer("crop"))  # fmt: skip
    ratio = 256 / 192  # process pixels per output pixel of the whole run
    assert crop.plan.process_size == (round(2 * h * ratio), round(2 * w * ratio)) == (112, 128)
    anchor = crop.plan.anchor
    assert (
        anchor is not None
        and (anchor.top, anchor.left) == (10, 16)
        and (anchor.height, anchor.width) == (32, 43)
    )
    part = (..., slice(10, 10 + 14), slice(16, 16 + 16))
    for stage in ("noise", "added_noise"):
        assert torch.equal(traces["crop"][stage], traces["whole"][stage][part]), stage
    # Not the same pixels (the model sees less context), but far closer than any other seed's.
    target = whole.image[2 * y : 2 * (y + h), 2 * x : 2 * (x + w)].astype(float)
    other = engine.restore(
        img[y : y + h, x : x + w], params.with_(frame=(x, y, 128, 96), seed=8), model="tiny-full"
    )
    unframed = engine.restore(img[y : y + h, x : x + w], params, model="tiny-full")
    near = np.abs(crop.image - target).mean()
    assert near < 0.75 * np.abs(other.image - target).mean()
    assert near < 0.75 * np.abs(unframed.image - target).mean()
    with pytest.raises(InputError, match="does not fit"):
        engine.restore(img[:50, :50], params.with_(frame=(100, 0, 128, 96)), model="tiny-full")
    with pytest.raises(InputError, match="frame"):
        engine.restore(img, params.with_(frame=(0, 0, 0, 96)), model="tiny-full")


def test_latent_preview_fit_recovers_a_linear_decoder() -> None:
    from backend.pipelines.preview import LatentPreview

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 24, 32, generator=generator)
    mix = torch.tensor([[0.2, -0.1, 0.05, 0.1], [0.0, 0.15, -0.1, 0.05], [0.1, 0.1, 0.1, -0.2]])
    colours = (torch.einsum("cd,bdhw->bchw", mix, latents) + 0.5).clamp(0, 1)
    image = torch.nn.functional.interpolate(colours, scale_factor=8, mode="nearest")
    preview = LatentPreview(latents, image)
    picture = preview(latents).astype(np.float32) / 255
    want = colours[0].permute(1, 2, 0).numpy()
    small = (
        torch.nn.functional.interpolate(
            torch.from_numpy(want).permute(2, 0, 1)[None], size=picture.shape[:2], mode="bilinear"
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    assert np.abs(picture - small).mean() < 0.02


# --------------------------------------------------------------------------- the colour model's scheduler
def test_colour_path_runs_v_prediction_tiled_with_previews(engine: Engine) -> None:
    """The tiny colour model is v-prediction on a zero-terminal-SNR schedule, like PASD's colour model;
    the whole colour path (tiles, previews) runs on it and the previews do not change the result."""
    pipeline = engine.pipeline_for(engine.find_model("tiny-color", "colorize"))
    config = pipeline.scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    grey = rgb(48, 64, channels=1, seed=3)
    params = FAST.with_(task="colorize", scale=1.0, steps=3, tile=128, tile_overlap=0.25)
    shown: list[np.ndarray] = []
    tiled = engine.restore(grey, params, model="tiny-color", preview=shown.append)
    assert tiled.plan.tiles > 1 and len(shown) == 1 + 3 + 1
    assert tiled.image.shape == (48, 64, 3) and tiled.image.dtype == np.uint8
    again = engine.restore(grey, params, model="tiny-color")
    assert np.array_equal(tiled.image, again.image)
    assert all(np.isfinite(p).all() for p in shown)


def test_a_colour_model_with_an_epsilon_scheduler_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import json
    import shutil

    broken = tmp_path / "tiny-color-eps"
    shutil.copytree(tiny_models["color"], broken)
    config_file = broken / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "epsilon"  # SD1.5's: the common mistake (yangxy/PASD #60, #75)
    config_file.write_text(json.dumps(config))
    engine = Engine(tmp_path, device="cpu")
    with pytest.raises(ModelLoadError, match="needs prediction_type 'v_prediction'"):
        engine.restore(
            rgb(16, 16, channels=1), FAST.with_(task="colorize", scale=1.0), model="tiny-color-eps"
        )


# --------------------------------------------------------------------------- PASD-SDXL
@pytest.fixture(scope="module")
def sdxl_engine(tiny_sdxl: Path) -> Engine:
    return Engine(tiny_sdxl.parent, device="cpu")


def test_pasd_sdxl_runs_with_its_own_defaults_and_everything_the_engine_offers(sdxl_engine: Engine) -> None:
    """The engine picks PASD-SDXL's pipeline from the folder's family; unset parameters take the
    model's settings; 16-bit with alpha, a soft mask in tiles, previews and offload all work."""
    from backend.models.registry import FAMILIES
    from backend.pipelines.pasd_sdxl import PasdSdxlPipeline

    own = FAMILIES["pasd-sdxl"].defaults["upscale"]
    img = rgb(40, 36, 4, np.uint16, seed=5)
    mask = np.zeros((40, 36), np.float32)
    mask[8:30, 6:24] = 1.0
    params = RestoreParams(scale=2.0, steps=2, process_size=256, seed=3, tile=128, vae_tile=128)
    shown: list[np.ndarray] = []
    res = sdxl_engine.restore(img, params, mask=mask, model="tiny-sdxl", preview=shown.append)
    loaded = sdxl_engine.pipeline_for(sdxl_engine.find_model("tiny-sdxl", "upscale"))
    assert isinstance(loaded, PasdSdxlPipeline)
    assert res.params is not None and res.params.steps == 2  # given: kept
    assert (res.params.guidance, res.params.fidelity_fg, res.params.fidelity_bg) == (7.0, 0.8, 0.8)
    assert res.prompt == own.quality_prompt and res.negative_prompt == own.negative_prompt
    assert res.image.dtype == np.uint16 and res.image.shape == (80, 72, 4) and res.plan.tiles > 1
    assert len(shown) >= 4 and all(p.dtype == np.uint8 and p.shape[2] == 3 for p in shown)
    # A fidelity map changes the run; the same map again repeats it exactly.
    other = sdxl_engine.restore(img, params.with_(fidelity_fg=1.6), mask=mask, model="tiny-sdxl")
    again = sdxl_engine.restore(img, params, mask=mask, model="tiny-sdxl")
    assert np.array_equal(res.image, again.image) and not np.array_equal(res.image, other.image)
    moved = Engine(sdxl_engine.models_dir, device="cpu", offload=True)
    assert np.array_equal(moved.restore(img, params, mask=mask, model="tiny-sdxl").image, res.image)
    assert sdxl_engine.resolved(RestoreParams(), "tiny-sdxl").process_size == 1280


def test_pasd_sdxl_framed_previews_draw_apply_noise_and_cancel_stops(sdxl_engine: Engine) -> None:
    img = rgb(96, 128, seed=3)
    params = FAST.with_(scale=2.0)
    whole_trace: dict[str, torch.Tensor] = {}
    crop_trace: dict[str, torch.Tensor] = {}
    whole = sdxl_engine.restore(img, params, model="tiny-sdxl", trace=whole_trace.__setitem__)
    framed = sdxl_engine.restore(img, params.with_(frame=(0, 0, 128, 96)), model="tiny-sdxl")
    assert np.array_equal(whole.image, framed.image)
    x, y, w, h = 48, 30, 48, 42
    crop = sdxl_engine.restore(
        img[y : y + h, x : x + w], params.with_(frame=(x, y, 128, 96)), model="tiny-sdxl",
        trace=crop_trace.__setitem__,
    )  # fmt: skip
    anchor = crop.plan.anchor
    assert anchor is not None
    ch, cw = crop_trace["noise"].shape[-2:]
    part = (..., slice(anchor.top, anchor.top + ch), slice(anchor.left, anchor.left + cw))
    assert torch.equal(crop_trace["noise"], whole_trace["noise"][part])
    # The size ids are the whole image's, as Apply's.
    assert torch.equal(crop_trace["time_ids"], whole_trace["time_ids"])

    token = CancelToken()
    seen: list[str] = []

    def progress(stage: str, step: int, total: int) -> None:
        seen.append(stage)
        if stage == "denoise":
            token.cancel()

    with pytest.raises(Canceled):
        sdxl_engine.restore(rgb(32, 32), FAST, model="tiny-sdxl", progress=progress, cancel=token)
    assert "decode" not in seen


@pytest.mark.parametrize("model", ["tiny-full", "tiny-color", "tiny-sdxl"])
def test_restoration_guidance_for_pasd_is_off_by_default_and_weighted(
    engine: Engine, sdxl_engine: Engine, model: str
) -> None:
    """Off (the default) leaves a run exactly as it was, and so does a zero weight everywhere;
    on, the run changes (UniPC, v-prediction and Euler solvers alike)."""
    runner = sdxl_engine if model == "tiny-sdxl" else engine
    task = "colorize" if model == "tiny-color" else "upscale"
    img = rgb(48, 64, seed=11)
    params = FAST.with_(task=task, scale=1.0, steps=4)
    seen: dict[str, torch.Tensor] = {}
    plain = runner.restore(img, params, model=model, trace=seen.__setitem__).image
    assert "restoration_anchor" not in seen
    assert np.array_equal(runner.restore(img, params.with_(restoration=-1.0), model=model).image, plain)
    zero = runner.restore(img, params.with_(restoration=2.0, restoration_bg=0.0), model=model).image
    assert np.array_equal(zero, plain)
    pulled = runner.restore(img, params.with_(restoration=1.0), model=model, trace=seen.__setitem__)
    assert "restoration_anchor" in seen and not np.array_equal(pulled.image, plain)


@pytest.mark.parametrize("kind", ["ddpm-epsilon", "ddpm-v_prediction", "euler-epsilon"])
def test_restoration_pull_moves_the_solvers_own_clean_estimate(kind: str) -> None:
    """Whatever the solver and prediction type, the rewritten model output makes the solver's own
    x₀ estimate (diffusers' ``pred_original_sample``) exactly x₀ − k·(x₀ − anchor), k = w·(σ/σmax)^τ."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    from backend.pipelines.pasd import RestorationPull

    solver, prediction = kind.split("-")
    config = dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction
    )
    scheduler = (
        EulerDiscreteScheduler(**config) if solver == "euler" else DDPMScheduler(**config, clip_sample=False)
    )
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    gen = torch.Generator().manual_seed(0)
    latents, output, anchor = (torch.randn(1, 4, 6, 8, generator=gen) for _ in range(3))
    weight = torch.rand(1, 1, 6, 8, generator=gen)

    def x0_of(out: torch.Tensor) -> torch.Tensor:
        if solver == "euler":
            scheduler._step_index = None  # the step counter restarts at t
        return scheduler.step(out, t, latents, generator=gen).pred_original_sample

    pull = RestorationPull(anchor, 0.7, weight)
    ac = scheduler.alphas_cumprod
    sigma = ((1 - ac[int(t)]) / ac[int(t)]).sqrt()
    k = (sigma / ((1 - ac[-1]) / ac[-1]).sqrt()) ** 0.7 * weight
    before = x0_of(output)
    after = x0_of(pull(scheduler, latents, output, t))
    torch.testing.assert_close(after, before - k * (before - anchor), rtol=1e-4, atol=1e-4)
