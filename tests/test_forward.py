"""Forward passes of the tiny models: deterministic, residual shapes, per-pixel conditioning scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.models import PasdControlNetModel, PasdUNet2DConditionModel
from backend.models.tiny import write_pasd_components


def load(folder: Path):
    return (
        PasdUNet2DConditionModel.from_pretrained(folder / "unet"),
        PasdControlNetModel.from_pretrained(folder / "controlnet"),
    )


def inputs(h: int, w: int, seed: int = 0, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, h, w, generator=gen),
        torch.tensor([500] * batch),
        torch.randn(batch, 77, 32, generator=gen),
        torch.rand(batch, 3, 8 * h, 8 * w, generator=gen),
    )


def run(unet, controlnet, sample, t, text, cond, scale=1.0):
    with torch.no_grad():
        down, mid = controlnet(sample, t, text, cond, conditioning_scale=scale, return_dict=False)
        out = unet(
            sample,
            t,
            text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
    return down, mid, out


def test_same_seed_same_model_and_output(tmp_path: Path) -> None:
    write_pasd_components(tmp_path / "a", "full", False, seed=7)
    write_pasd_components(tmp_path / "b", "full", False, seed=7)
    write_pasd_components(tmp_path / "c", "full", False, seed=8)
    x = inputs(8, 8)
    out_a = run(*load(tmp_path / "a"), *x)[2]
    out_b = run(*load(tmp_path / "b"), *x)[2]
    out_c = run(*load(tmp_path / "c"), *x)[2]
    assert torch.equal(out_a, out_b)
    assert not torch.allclose(out_a, out_c)
    assert (tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(("h", "w"), [(8, 8), (12, 20), (5, 3)])
def test_residual_shapes(tiny_models, h: int, w: int) -> None:
    unet, controlnet = load(tiny_models["light"])
    down, mid, out = run(unet, controlnet, *inputs(h, w, batch=2))
    channels = [8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16]
    sizes = [(h, w)] * 3
    for _ in range(3):
        sizes += [((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2)] * 3
    assert [tuple(d.shape) for d in down] == [(2, c, *s) for c, s in zip(channels, sizes[:12], strict=True)]
    assert tuple(mid.shape) == (2, 16, *sizes[-1])
    assert tuple(out.shape) == (2, 4, h, w) and torch.isfinite(out).all()


def test_unet_without_control_runs_as_plain_sd(tiny_models) -> None:
    unet, _ = load(tiny_models["full"])
    sample, t, text, _ = inputs(8, 8)
    with torch.no_grad():
        out = unet(sample, t, text, return_dict=False)[0]
    assert out.shape == sample.shape
    with pytest.raises(ValueError, match="or neither"):
        unet(sample, t, text, down_block_additional_residuals=[sample])


@pytest.mark.parametrize("variant", ["full", "light"])
def test_pixel_attention_reads_the_residuals(tiny_models, variant: str) -> None:
    """The residuals reach the UNet's output through the pixel-aware path, not only the skips."""
    unet, controlnet = load(tiny_models[variant])
    sample, t, text, cond = inputs(8, 8)
    down, mid, out = run(unet, controlnet, sample, t, text, cond)
    # same skips (residual sums) but the pixel-aware attention sees other residuals
    shifted = [d + 0.5 for d in down]
    with torch.no_grad():
        a = unet(
            sample,
            t,
            text,
            down_block_additional_residuals=shifted,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
    assert not torch.allclose(a, out)


def test_constant_scale_map_equals_float_scale(tiny_models) -> None:
    unet, controlnet = load(tiny_models["full_rrdb"])
    sample, t, text, cond = inputs(6, 10)
    d_float, m_float, _ = run(unet, controlnet, sample, t, text, cond, scale=0.7)
    d_map, m_map, _ = run(unet, controlnet, sample, t, text, cond, scale=torch.full((1, 1, 48, 80), 0.7))
    for a, b in zip([*d_float, m_float], [*d_map, m_map], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # area mean of 0.7 rounds


def test_scale_map_is_area_averaged_per_residual(tiny_models) -> None:
    unet, controlnet = load(tiny_models["light"])
    sample, t, text, cond = inputs(8, 8)
    ones, mid_ones, _ = run(unet, controlnet, sample, t, text, cond, scale=1.0)
    scale = torch.zeros(1, 1, 64, 64)
    scale[..., :, :32] = 2.0  # left half: fidelity 2, right half: 0
    scaled, mid_scaled, _ = run(unet, controlnet, sample, t, text, cond, scale=scale)
    first, coarse = scaled[0], mid_scaled  # 8×8 and 1×1
    torch.testing.assert_close(first[..., :4], 2 * ones[0][..., :4])
    assert torch.count_nonzero(first[..., 4:]) == 0
    torch.testing.assert_close(coarse, mid_ones)  # area mean of 2 and 0 at 1×1 is 1


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 10, 10), "is \\[10, 10\\]"),
        ((1, 2, 64, 64), "\\[B, 1, H, W\\]"),
        ((64, 64), "\\[B, 1, H, W\\]"),
    ],
)
def test_bad_scale_map_is_refused(tiny_models, shape, message) -> None:
    _, controlnet = load(tiny_models["full"])
    sample, t, text, cond = inputs(8, 8)
    with pytest.raises(ValueError, match=message):
        controlnet(sample, t, text, cond, conditioning_scale=torch.ones(shape))


def test_nan_scale_map_is_refused(tiny_models) -> None:
    _, controlnet = load(tiny_models["full"])
    sample, t, text, cond = inputs(8, 8)
    with pytest.raises(ValueError, match="NaN"):
        controlnet(sample, t, text, cond, conditioning_scale=torch.full((1, 1, 64, 64), float("nan")))
