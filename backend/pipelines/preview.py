"""Live previews of a run: latents shown as RGB through a linear map fitted on the run itself.

Decoding with the VAE at every step would cost as much as the step; a fixed latent-to-RGB table
would only fit one VAE. Instead the map (4 latent channels + bias → RGB) is fitted by least squares
on this run's own encoded input against the input itself, so it fits whatever VAE the model has,
tiny test ones included, for the cost of one small solve.
"""

from __future__ import annotations

import numpy as np
import torch

from ..image_ops import area_resize

PREVIEW_SIDE = 256  # longest side of a preview, pixels
_FIT_SAMPLES = 1 << 16


def _fit_size(height: int, width: int, longest: int) -> tuple[int, int]:
    factor = min(1.0, longest / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def to_preview(image: torch.Tensor, side: int = PREVIEW_SIDE) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] → H'×W'×3 uint8 with the longest side at most ``side``."""
    small = area_resize(image.float(), _fit_size(*image.shape[-2:], side))
    return (small[0].clamp(0, 1).permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy()


class LatentPreview:
    def __init__(self, latents: torch.Tensor, image: torch.Tensor, side: int = PREVIEW_SIDE) -> None:
        """Fit on ``latents`` [1, C, h, w] (the encoded ``image`` [1, 3, H, W] in [0, 1])."""
        h, w = latents.shape[-2:]
        self.size = _fit_size(h, w, side // 2)  # shown at 2× zoom: latents are 8× smaller than pixels
        self.side = side
        x = self._features(latents.float().cpu())
        y = area_resize(image.float().cpu(), (h, w))[0].reshape(3, -1).T
        if x.shape[0] > _FIT_SAMPLES:
            pick = torch.linspace(0, x.shape[0] - 1, _FIT_SAMPLES).long()
            x, y = x[pick], y[pick]
        self.weights = torch.linalg.lstsq(x.double(), y.double()).solution.float()

    @staticmethod
    def _features(latents: torch.Tensor) -> torch.Tensor:
        flat = latents[0].reshape(latents.shape[1], -1).T
        return torch.cat([flat, torch.ones(flat.shape[0], 1)], dim=1)

    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        small = area_resize(latents.float().cpu(), self.size)
        rgb = (self._features(small) @ self.weights).T.reshape(1, 3, *self.size)
        return to_preview(torch.nn.functional.interpolate(rgb, scale_factor=2, mode="bilinear"), self.side)
