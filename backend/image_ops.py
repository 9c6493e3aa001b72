"""Image and mask maths shared by the models and the pipelines (one place for it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a [B, C, H, W] map by area averaging.

    Area (not nearest) resampling keeps a feathered mask's soft edge soft at every resolution and
    keeps a small foreground region from vanishing at the coarsest feature map.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        # Upsampling an area map: bilinear keeps it smooth; only happens for tiny inputs.
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(x, size)
