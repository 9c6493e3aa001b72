"""PASD model code on current diffusers blocks, with strict loading of the official folders."""

from __future__ import annotations

from .controlnet import PasdConditioningEmbedding, PasdControlNetModel
from .loading import ModelLoadError, StateDictMismatchError
from .unet import PASD_VARIANTS, PasdUNet2DConditionModel, PasdVariant, detect_unet_variant

__all__ = [
    "PASD_VARIANTS",
    "ModelLoadError",
    "PasdConditioningEmbedding",
    "PasdControlNetModel",
    "PasdUNet2DConditionModel",
    "PasdVariant",
    "StateDictMismatchError",
    "detect_unet_variant",
]
