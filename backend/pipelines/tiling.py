"""Overlapping latent tiles and their blend weights, so any image size runs in bounded memory.

Each denoising step predicts noise tile by tile and blends the predictions with smooth weights
that are normalised per pixel; the scheduler then steps the whole latent once, so tiles share one
trajectory and no seam can form between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """A window of the latent, in latent pixels."""

    y: int
    x: int
    h: int
    w: int

    def slices(self, factor: int = 1) -> tuple[slice, slice]:
        """Row and column slices at ``factor`` times latent resolution (8 for image pixels)."""
        return (
            slice(self.y * factor, (self.y + self.h) * factor),
            slice(self.x * factor, (self.x + self.w) * factor),
        )


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if tile >= length:
        return [0]
    stride = max(1, tile - overlap)
    count = math.ceil((length - tile) / stride) + 1
    # Spread the tiles evenly so the last one does not end up as a thin sliver against the edge.
    return sorted({round(i * (length - tile) / (count - 1)) for i in range(count)})


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile`` × ``tile`` covering a ``height`` × ``width`` latent."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty latent ({height}x{width})")
    if tile < 1:
        raise ValueError(f"tile must be positive, not {tile}")
    overlap = max(0, min(overlap, tile - 1))
    th, tw = min(tile, height), min(tile, width)
    return [Tile(y, x, th, tw) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def _window(length: int) -> torch.Tensor:
    """A Gaussian bump over a tile side (σ = side / 4): far from zero at the border, so normalising
    by the sum stays well conditioned, yet low enough that a tile's edge yields to its neighbour."""
    pos = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
    sigma = max(length / 4, 1e-6)
    return torch.exp(-0.5 * (pos / sigma) ** 2)


def blend_weights(tiles: list[Tile], height: int, width: int) -> list[torch.Tensor]:
    """Per-tile weights [1, 1, h, w] that sum to exactly 1 at every latent pixel.

    With a single tile the weight is w / w = 1.0 exactly, so one tile reproduces the untiled
    prediction bit for bit.
    """
    total = torch.zeros(height, width, dtype=torch.float64)
    raw = []
    for tile in tiles:
        w = torch.outer(_window(tile.h), _window(tile.w))
        total[tile.slices()] += w
        raw.append(w)
    return [
        (w / total[tile.slices()]).to(torch.float32)[None, None] for tile, w in zip(tiles, raw, strict=True)
    ]
