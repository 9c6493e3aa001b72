"""Tiled VAE encode/decode agrees with the untiled VAE, shows no seams, and bounds its work per tile."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn

from backend.models.tiny import tiny_vae_config
from backend.pipelines.tiled_vae import VaeTiling, _spans, _tiles, tiled_decode, tiled_encode

TOLERANCE = 1e-2


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """The tiny VAE of ``backend.models.tiny.write_tiny_model`` (same config), with seeded random weights."""
    model = AutoencoderKL(**tiny_vae_config()).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen) / max(fan_in, 1) ** 0.5)
    return model


def latents(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Scaled latents with content that changes across the image (a ramp), like a real picture's."""
    noise = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(-2.0, 2.0, w).expand(1, 4, h, w) * torch.tensor([1.0, -1.0, 0.5, 0.0]).view(
        1, 4, 1, 1
    )
    return noise + ramp


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return (x + torch.linspace(-0.5, 0.5, h).view(1, 1, h, 1)).clamp(-1, 1)


def untiled_decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z / vae.config.scaling_factor).sample


def group_norms(vae: AutoencoderKL) -> list[nn.GroupNorm]:
    return [m for m in vae.modules() if isinstance(m, nn.GroupNorm)]


@pytest.mark.parametrize("n", [1, 5, 8, 13, 40])
@pytest.mark.parametrize("tile", [1, 5, 8, 16])
def test_spans_cover_every_pixel_once(n: int, tile: int) -> None:
    spans = _spans(n, tile, halo=3)
    assert spans[0].core0 == 0 and spans[-1].core1 == n
    for a, b in itertools.pairwise(spans):
        assert a.core1 == b.core0
    for s in spans:
        assert 0 < s.core1 - s.core0 <= tile
        assert s.pad0 == max(0, s.core0 - 3) and s.pad1 == min(n, s.core1 + 3)


@pytest.mark.parametrize(
    ("h", "w", "tile"),
    [(24, 40, 16), (2, 20, 8), (13, 9, 4)],  # 24x40 with tile 8 is in the seam test
)
def test_decode_matches_untiled(vae: AutoencoderKL, h: int, w: int, tile: int) -> None:
    z = latents(h, w)
    result = tiled_decode(vae, z, VaeTiling(tile))
    assert result.shape == (1, 3, 8 * h, 8 * w) and result.dtype == torch.float32
    assert rel_error(result, untiled_decode(vae, z)) < TOLERANCE


@pytest.mark.parametrize(("h", "w", "tile"), [(24, 40, 8), (13, 9, 4), (2, 20, 8)])
def test_encode_mean_matches_untiled(vae: AutoencoderKL, h: int, w: int, tile: int) -> None:
    x = image(8 * h, 8 * w)
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    result = tiled_encode(vae, x, VaeTiling(tile), sample=False)
    assert result.shape == (1, 4, h, w) and result.dtype == torch.float32
    assert rel_error(result, expected) < TOLERANCE


def test_encode_sample_draws_the_untiled_noise(vae: AutoencoderKL) -> None:
    x = image(96, 160, seed=3)
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(7))
    expected = expected * vae.config.scaling_factor
    result = tiled_encode(vae, x, VaeTiling(6), generator=torch.Generator().manual_seed(7))
    assert rel_error(result, expected) < TOLERANCE
    other_seed = tiled_encode(vae, x, VaeTiling(6), generator=torch.Generator().manual_seed(8))
    assert rel_error(other_seed, expected) > 10 * rel_error(result, expected)


def test_shared_statistics_leave_no_seams(vae: AutoencoderKL) -> None:
    """Per-tile GroupNorm statistics would be far off; shared ones keep tile borders as good as the rest."""
    z = latents(24, 40, seed=4)
    tiling = VaeTiling(8)
    expected = untiled_decode(vae, z)
    result = tiled_decode(vae, z, tiling)
    assert rel_error(result, expected) < TOLERANCE

    per_tile = torch.empty_like(expected)  # the naive way: each padded tile decoded on its own
    for tile in _tiles(24, 40, tiling):
        decoded = untiled_decode(vae, z[(..., *tile.padded())])
        rows, cols = tile.core_in(decoded.shape[2], decoded.shape[3])
        per_tile[(..., *tile.core(8))] = decoded[:, :, rows, cols]
    assert rel_error(per_tile, expected) > 10 * rel_error(result, expected)

    error = (result - expected).abs().mean(dim=(0, 1))
    near_border = torch.zeros_like(error, dtype=torch.bool)
    for edge in (8, 16):  # latent rows where cores meet, 4 image pixels either side
        near_border[edge * 8 - 4 : edge * 8 + 4, :] = True
    for edge in (8, 16, 24, 32):
        near_border[:, edge * 8 - 4 : edge * 8 + 4] = True
    assert error[near_border].mean() < 3 * error[~near_border].mean()


def test_one_tile_is_the_plain_vae(vae: AutoencoderKL) -> None:
    z = latents(6, 10)
    expected = untiled_decode(vae, z)
    assert torch.equal(tiled_decode(vae, z, VaeTiling(10)), expected)
    assert torch.equal(tiled_decode(vae, z, None), expected)
    x = image(48, 80)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert torch.equal(tiled_encode(vae, x, VaeTiling(16), sample=False), mean)


def test_cancel_stops_and_progress_counts_every_tile(vae: AutoencoderKL) -> None:
    z = latents(12, 20)
    calls: list[tuple[int, int]] = []
    tiled_decode(vae, z, VaeTiling(8, halo=4), on_tile=lambda done, total: calls.append((done, total)))
    tiles = 2 * 3
    total = (len(group_norms(vae.decoder)) + 1) * tiles
    assert calls == [(i, total) for i in range(1, total + 1)]

    class Cancelled(Exception):
        pass

    seen = 0

    def check_cancel() -> None:
        nonlocal seen
        seen += 1
        if seen == 10:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiled_decode(vae, z, VaeTiling(8, halo=4), check_cancel=check_cancel)
    assert seen == 10
    # The GroupNorm layers are themselves again after the interrupted run.
    assert all("forward" not in m.__dict__ for m in group_norms(vae))
    assert rel_error(untiled_decode(vae, z), tiled_decode(vae, z, VaeTiling(8))) < TOLERANCE


def test_decode_writes_into_out(vae: AutoencoderKL) -> None:
    z = latents(12, 20)
    out = torch.full((1, 3, 96, 160), float("nan"))
    result = tiled_decode(vae, z, VaeTiling(8), out=out)
    assert result is out
    assert torch.equal(out, tiled_decode(vae, z, VaeTiling(8)))
    with pytest.raises(ValueError, match="shape"):
        tiled_decode(vae, z, VaeTiling(8), out=torch.empty(1, 3, 96, 96))


def test_half_precision_runs(vae: AutoencoderKL) -> None:
    z = latents(4, 8)
    expected = untiled_decode(vae, z)
    half = AutoencoderKL.from_config(vae.config).eval()
    half.load_state_dict(vae.state_dict())
    half.to(torch.bfloat16)
    result = tiled_decode(half, z, VaeTiling(4, halo=2))
    assert result.dtype == torch.float32 and torch.isfinite(result).all()
    assert rel_error(result, expected) < 5e-2


def test_encode_from_unit_range_matches_encoding_the_mapped_image(vae: AutoencoderKL) -> None:
    unit = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(11))
    for tiling in (None, VaeTiling(tile=4, halo=2)):
        with torch.no_grad():
            mapped = tiled_encode(vae, unit * 2 - 1, tiling, sample=False)
            direct = tiled_encode(vae, unit, tiling, sample=False, from_unit=True)
        assert torch.equal(mapped, direct)
