"""The PASD family's model code: pixel-aware UNet and ControlNet on diffusers blocks, for SD1.5 and SDXL."""

from __future__ import annotations

from .controlnet import PasdConditioningEmbedding, PasdControlNetModel
from .unet import PASD_VARIANTS, PasdUNet2DConditionModel, PasdVariant, detect_unet_variant

__all__ = [
    "PASD_VARIANTS",
    "PasdConditioningEmbedding",
    "PasdControlNetModel",
    "PasdUNet2DConditionModel",
    "PasdVariant",
    "detect_unet_variant",
]
