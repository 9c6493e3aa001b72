"""Image maths: the wavelet colour fix against the reference, colour transfer, bit-depth conversion.

``colorfix.safetensors`` was recorded from PASD's ``wavelet_reconstruction`` by
``tools/record_colorfix_fixture.py``; see that script for how to re-record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend.image_ops import (
    from_float,
    linear_to_srgb,
    luminance,
    srgb_to_linear,
    to_float,
    transfer_colour,
    wavelet_color_fix,
)

COLORFIX = Path(__file__).parent / "fixtures" / "reference" / "colorfix.safetensors"


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --- wavelet colour fix ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["medium", "tiny", "dot"])
@pytest.mark.parametrize("tile", [None, 8])
def test_colour_fix_matches_reference(case: str, tile: int | None) -> None:
    """The recorded ``wavelet_reconstruction``, clamped to [0, 1] as the reference's ``wavelet_color_fix``
    does right after it (its 8-bit rounding that follows is the one step we leave out)."""
    recorded = load_file(str(COLORFIX))
    content, style = recorded[f"{case}.content"], recorded[f"{case}.style"]
    expected = recorded[f"{case}.output"].clamp(0.0, 1.0)
    ours = wavelet_color_fix(content, style, tile=tile)
    assert (ours - expected).abs().max().item() < 1e-5
    ours = wavelet_color_fix(content.clone(), style, tile=tile, in_place=True)
    assert (ours - expected).abs().max().item() < 1e-5


def test_colour_fix_output_stays_in_range() -> None:
    """Detail near black or white plus a shifted low-pass goes past [0, 1] before the clamp."""
    content = _rand(1, 3, 48, 48, seed=5)
    style = torch.zeros(1, 3, 48, 48)
    style[..., :24, :] = 1.0
    unclamped = content - content.mean() + style  # what the fix would give without the clamp, roughly
    assert unclamped.min() < -0.1 and unclamped.max() > 1.1
    for tile, in_place in ((None, False), (16, False), (16, True)):
        out = wavelet_color_fix(content.clone(), style, tile=tile, in_place=in_place)
        assert out.min().item() >= 0.0 and out.max().item() <= 1.0
        assert (out == 0).any() and (out == 1).any()


@pytest.mark.parametrize(
    ("height", "width", "tile"),
    [(1, 1, 1), (7, 3, 2), (7, 3, 5), (40, 70, 16), (33, 64, 31), (17, 5000, 256)],
)
def test_tiled_colour_fix_equals_untiled(height: int, width: int, tile: int) -> None:
    content, style = _rand(1, 3, height, width, seed=1), _rand(1, 3, height, width, seed=2)
    whole = wavelet_color_fix(content, style)
    tiled = wavelet_color_fix(content, style, tile=tile)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() <= 1e-6
    target = content.clone()
    banded = wavelet_color_fix(target, style, tile=tile, in_place=True)
    assert banded.data_ptr() == target.data_ptr()  # written into content, no image-sized buffer
    assert (banded - whole).abs().max().item() <= 1e-6


def test_colour_fix_leaves_inputs_alone_and_takes_style_colour() -> None:
    content = 0.5 + 0.5 * _rand(1, 3, 64, 64, seed=3)  # mean 0.75, detail ±0.25: stays in range below
    style = torch.full((1, 3, 64, 64), 0.4)
    before = content.clone()
    out = wavelet_color_fix(content, style, tile=20)
    assert torch.equal(content, before)
    # A flat style gives a flat low-pass: the mean colour moves to the style's, the detail stays.
    assert abs(out.mean().item() - 0.4) < 0.01
    assert (out - out.mean()).std() > 0.1


def test_colour_fix_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        wavelet_color_fix(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# --- colour spaces and transfer --------------------------------------------------------------------


def test_srgb_round_trip_and_known_values() -> None:
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    assert srgb_to_linear(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(
        0.21404114, abs=1e-8
    )
    white = torch.ones(1, 3, 1, 1)
    assert luminance(white).shape == (1, 1, 1, 1)
    assert luminance(white).item() == pytest.approx(1.0, abs=1e-6)


def _y(srgb: torch.Tensor) -> torch.Tensor:
    return luminance(srgb_to_linear(srgb.to(torch.float64)))


def _colours(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random photos and colours, with saturated primaries on bright greys (out of gamut when scaled)."""
    original = _rand(1, 3, height, width, seed=4)
    colour = _rand(1, 3, height, width, seed=5)
    original[..., : height // 2, :] = original[..., : height // 2, :].mean(dim=1, keepdim=True) * 0.2 + 0.8
    primaries = torch.eye(3)[torch.arange(width) % 3].T[None, :, None, :]
    colour[..., : height // 2, :] = primaries
    colour[..., -1, :4] = 0.0  # black: no chromaticity, becomes grey
    return original, colour


def test_transfer_colour_keeps_luminance_exactly() -> None:
    original, colour = _colours(32, 48)
    out = transfer_colour(original, colour)
    assert out.dtype == original.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (_y(out) - _y(original)).abs().max().item() <= 1e-6
    # Bright grey + saturated primary cannot keep its chroma: it must have been desaturated, not clipped.
    top = out[..., :16, :]
    assert (top.amax(dim=1) - top.amin(dim=1)).min() > 0.0
    black = out[..., -1, :4]
    assert (black.amax(dim=1) - black.amin(dim=1)).max().item() < 1e-6


def test_transfer_colour_takes_chromaticity_where_in_gamut() -> None:
    original = _rand(1, 3, 16, 16, seed=6) * 0.3  # dark enough that every scaled colour fits
    colour = _rand(1, 3, 16, 16, seed=7) * 0.8 + 0.2
    out = transfer_colour(original, colour)
    lin_out, lin_col = srgb_to_linear(out.double()), srgb_to_linear(colour.double())
    chroma_out = lin_out / luminance(lin_out)
    chroma_col = lin_col / luminance(lin_col)
    assert (chroma_out - chroma_col).abs().max().item() < 1e-4


def test_transfer_colour_with_mask() -> None:
    original, colour = _colours(24, 30)
    mask = torch.zeros(1, 1, 24, 30)
    mask[..., :, 10:20] = torch.linspace(0, 1, 10)
    mask[..., :, 20:] = 1.0
    out = transfer_colour(original, colour, mask)
    assert torch.equal(out[..., :10], original[..., :10])
    assert (_y(out) - _y(original)).abs().max().item() <= 1e-6
    full = transfer_colour(original, colour)
    assert (out[..., 20:] - full[..., 20:]).abs().max().item() < 1e-6
    zero = transfer_colour(original, colour, torch.zeros(1, 1, 24, 30))
    assert torch.equal(zero, original)


# --- bit depth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_bit_depth_round_trip(dtype: type) -> None:
    every = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    floats = to_float(every)
    assert floats.dtype == np.float32
    assert floats[0] == 0.0 and floats[-1] == 1.0
    assert np.array_equal(from_float(floats, dtype), every)


def test_from_float_rounds_and_clips() -> None:
    values = np.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 2.0], dtype=np.float32)
    assert from_float(values, np.uint8).tolist() == [0, 0, 0, 1, 255, 255]
    assert np.array_equal(to_float(values), values)
    assert from_float(values, np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="unsupported"):
        to_float(np.zeros(3, dtype=np.int32))
