"""The diffusion pipeline on tiny models: determinism, region fidelity at every residual, tiling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from backend.devices import choose_device
from backend.image_ops import area_resize
from backend.models.store import resolve_model
from backend.pipelines.base import TextConditioning
from backend.pipelines.families import load_pipeline
from backend.pipelines.pasd import DenoiseTiling, PasdPipeline
from backend.pipelines.pasd_sdxl import PasdSdxlPipeline
from backend.pipelines.tiling import blend_weights, plan_tiles


@pytest.fixture(scope="module")
def pipeline(tiny_models: dict[str, Path]) -> PasdPipeline:
    return PasdPipeline.from_installed(resolve_model(tiny_models["full"]), choose_device("cpu"))


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def run(pipe: PasdPipeline, img: torch.Tensor, **kw) -> torch.Tensor:
    args = {"prompt": "a cat", "negative_prompt": "blurry", "steps": 2, "seed": 3} | kw
    with torch.no_grad():
        return pipe(img, **args)


def test_seeded_runs_repeat_and_seeds_differ(pipeline: PasdPipeline) -> None:
    img = image(64, 96)
    a, b = run(pipeline, img), run(pipeline, img)
    c = run(pipeline, img, seed=4)
    assert a.shape == (1, 3, 64, 96)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_tiles_cover_every_pixel_once_in_weight() -> None:
    for h, w, tile, overlap in [
        (13, 40, 8, 2),
        (64, 64, 64, 0),
        (9, 200, 16, 4),
        (1, 1, 8, 2),
        (100, 37, 24, 12),
    ]:
        tiles = plan_tiles(h, w, tile, overlap)
        total = torch.zeros(h, w)
        for t, weight in zip(tiles, blend_weights(tiles, h, w), strict=True):
            assert t.y >= 0 and t.x >= 0 and t.y + t.h <= h and t.x + t.w <= w
            total[t.slices()] += weight[0, 0]
        torch.testing.assert_close(total, torch.ones(h, w), rtol=0, atol=1e-6)


def _plain_denoise(pipe: PasdPipeline, scheduler, latents, img, scale, emb: TextConditioning, guidance):
    """The textbook untiled loop (as in the reference), as an oracle for the tiled one."""
    added = emb.added or None
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        down, mid = pipe.controlnet(
            inp,
            t,
            encoder_hidden_states=emb.states,
            controlnet_cond=torch.cat([img] * 2),
            conditioning_scale=scale,
            added_cond_kwargs=added,
            return_dict=False,
        )
        pred = pipe.unet(
            inp,
            t,
            encoder_hidden_states=emb.states,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        uncond, cond = pred.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0]
    return latents


def _scheduler(pipe: PasdPipeline, steps: int = 3) -> UniPCMultistepScheduler:
    s = pipe.scheduler_class.from_config(pipe.scheduler.config)
    s.set_timesteps(steps)
    return s


@pytest.fixture(scope="module")
def sdxl_pipeline(tiny_sdxl: Path) -> PasdSdxlPipeline:
    loaded = load_pipeline(resolve_model(tiny_sdxl), choose_device("cpu"))
    assert isinstance(loaded, PasdSdxlPipeline)  # chosen by the folder's family, not by the caller
    return loaded


@pytest.mark.parametrize("family", ["pasd", "pasd-sdxl"])
def test_one_tile_equals_no_tiling_exactly(
    family: str, pipeline: PasdPipeline, request: pytest.FixtureRequest
) -> None:
    pipe = pipeline if family == "pasd" else request.getfixturevalue("sdxl_pipeline")
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 12, generator=gen)
    img = image(64, 96)
    scale = torch.rand(1, 1, 64, 96, generator=gen) * 2
    emb = pipe.conditioning("a cat", "blurry", True, (64, 96))
    with torch.no_grad():
        expected = _plain_denoise(pipe, _scheduler(pipe), latents, img, scale, emb, 7.5)
        for tiling in (None, DenoiseTiling(12, 0), DenoiseTiling(64, 8)):
            got = pipe.denoise(_scheduler(pipe), latents, img, scale, emb, 7.5, tiling)
            assert torch.equal(got, expected)


def test_many_tiles_write_every_pixel_without_nan(pipeline: PasdPipeline) -> None:
    img = image(136, 200, seed=5)
    written = torch.zeros(136 // 8, 200 // 8)
    predict = pipeline._predict

    def spy(scheduler, latents, t, tile, *rest):
        written[tile.slices()] += 1
        return predict(scheduler, latents, t, tile, *rest)

    pipeline._predict = spy  # a spy that calls through: the real prediction still runs
    try:
        out = run(pipeline, img, tiling=DenoiseTiling(8, 3), steps=1)
    finally:
        del pipeline._predict
    assert written.min() >= 1, "a latent pixel got no noise prediction"
    assert written.max() > 1, "tiles should overlap"
    assert out.shape == img.shape
    assert torch.isfinite(out).all()


class ResidualRecorder:
    """Forward hook on the ControlNet: for each call, what it returned with the map and with scale 1."""

    def __init__(self, controlnet) -> None:
        self.controlnet = controlnet
        self.calls: list[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]] = []
        self.inside = False

    def __call__(self, module, args, kwargs, output):
        if self.inside:
            return output
        self.inside = True
        try:
            unit = module(*args, **{**kwargs, "conditioning_scale": 1.0})
        finally:
            self.inside = False
        scale = kwargs["conditioning_scale"]
        self.calls.append((scale, [*output[0], output[1]], [*unit[0], unit[1]]))
        return output


@pytest.mark.parametrize("tiling", [None, DenoiseTiling(8, 2)], ids=["untiled", "tiled"])
def test_scale_map_reaches_every_residual_area_resized(pipeline: PasdPipeline, tiling) -> None:
    h, w = 96, 128
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # A feathered disc as the selection, and a 3-pixel "face" that must survive the coarsest level.
    mask = ((1 - (((yy - 40) ** 2 + (xx - 50) ** 2).sqrt() - 20) / 6).clamp(0, 1)).float()
    mask[80:83, 110:113] = 1.0
    fg, bg = 1.6, 0.3
    scale_map = (mask * fg + (1 - mask) * bg)[None, None]
    recorder = ResidualRecorder(pipeline.controlnet)
    handle = pipeline.controlnet.register_forward_hook(recorder, with_kwargs=True)
    try:
        run(pipeline, image(h, w), steps=1, scale_map=scale_map, tiling=tiling)
    finally:
        handle.remove()
    tiles = plan_tiles(h // 8, w // 8, *((tiling and (tiling.tile, tiling.overlap)) or (max(h, w) // 8, 0)))
    assert len(recorder.calls) == len(tiles)
    for tile, (scale, scaled, unit) in zip(tiles, recorder.calls, strict=True):
        rows, cols = tile.slices(8)
        torch.testing.assert_close(scale, scale_map[..., rows, cols])
        assert len(scaled) == 13  # 12 down residuals and the mid one
        for s, u in zip(scaled, unit, strict=True):
            expected = u * area_resize(scale_map[..., rows, cols], tuple(u.shape[-2:]))
            torch.testing.assert_close(s, expected, rtol=1e-5, atol=1e-6)
    # At the coarsest residual (the mid one) the 3-pixel face still raises the scale of its cell.
    mh, mw = recorder.calls[-1][1][-1].shape[-2:] if tiling is None else (h // 64, w // 64)
    coarsest = area_resize(scale_map, (mh, mw))
    assert coarsest[0, 0, 81 * mh // h, 111 * mw // w] > bg + 0.01


def test_uniform_scale_without_map(pipeline: PasdPipeline) -> None:
    img = image(64, 64)
    a = run(pipeline, img, scale_map=0.5)
    b = run(pipeline, img, scale_map=torch.full((1, 1, 64, 64), 0.5))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cancel_is_checked_before_model_calls(pipeline: PasdPipeline) -> None:
    calls = []

    class Stop(Exception):
        pass

    def check() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise Stop

    with pytest.raises(Stop):
        run(pipeline, image(64, 64), check_cancel=check)


def test_progress_moves_forward_through_stages(pipeline: PasdPipeline) -> None:
    seen: list[tuple[str, int, int]] = []
    run(pipeline, image(64, 64), steps=3, progress=lambda s, i, n: seen.append((s, i, n)))
    stages = [s for s, _, _ in seen]
    assert stages.index("encode") < stages.index("denoise") < stages.index("decode")
    denoise = [(i, n) for s, i, n in seen if s == "denoise"]
    assert denoise[0] == (0, 3) and denoise[-1] == (3, 3)
    assert [i for i, _ in denoise] == sorted(i for i, _ in denoise)


def test_bad_inputs_are_refused(pipeline: PasdPipeline) -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        run(pipeline, image(60, 64))
    with pytest.raises(ValueError, match="scale map"):
        run(pipeline, image(64, 64), scale_map=torch.ones(1, 1, 32, 32))


def test_attention_runs_on_scaled_dot_product(pipeline: PasdPipeline) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in (pipeline.unet, pipeline.controlnet, pipeline.vae):
        processors = model.attn_processors.values()
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


# --------------------------------------------------------------------------- the noise-level knob
@pytest.mark.parametrize("steps", [20, 7, 3])
def test_added_noise_keeps_the_signal_the_level_says(pipeline: PasdPipeline, steps: int) -> None:
    """Signal kept = √ᾱ(first timestep)·√ᾱ(level), whatever the step count (a DDPM re-noise)."""
    scheduler = _scheduler(pipeline, steps)
    ac = scheduler.alphas_cumprod
    init = torch.randn(1, 4, 96, 96, generator=torch.Generator().manual_seed(1))
    for level in (0, 450, 899, 900, 999):
        start = pipeline._noised_start(
            scheduler, init, scheduler.timesteps[:1], level, torch.Generator().manual_seed(2)
        )
        kept = float((start * init).sum() / (init * init).sum())  # regression on the input
        expected = float((ac[int(scheduler.timesteps[0])] * ac[level]).sqrt())
        assert abs(kept - expected) < 0.01, (steps, level, kept, expected)
        # And the total variance stays 1 (a variance-preserving step).
        assert abs(float(start.var()) - 1.0) < 0.03


def test_noise_level_turns_smoothly(pipeline: PasdPipeline) -> None:
    """899 and 900 give nearly the same picture; 0 and 900 clearly different ones (20 steps).

    With diffusers' own add_noise, 900 (not on the 20-step schedule) became the last step's tiny
    noise while 899 re-noised hard, so these two differed most of all.
    """
    img = image(64, 64, seed=5)
    out = {level: run(pipeline, img, steps=20, added_noise_level=level) for level in (0, 899, 900)}
    near = (out[899] - out[900]).abs().mean().item()
    far = (out[0] - out[900]).abs().mean().item()
    assert near < far / 10, (near, far)


def test_renoise_refuses_levels_off_the_training_schedule(pipeline: PasdPipeline) -> None:
    from backend.pipelines.pasd import renoise

    x = torch.ones(1, 4, 8, 8)
    ac = _scheduler(pipeline).alphas_cumprod
    assert torch.allclose(renoise(x, torch.zeros_like(x), 0, ac), ac[0].sqrt() * x)
    with pytest.raises(ValueError, match="0 to 999"):
        renoise(x, x, 1000, ac)
