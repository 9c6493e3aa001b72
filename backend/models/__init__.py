"""Model code per family (``pasd/``, shared SDXL pieces in ``sdxl/``) on current diffusers blocks, with
strict loading of the official folders, the registry and the per-user model store."""

from __future__ import annotations

from .loading import ModelLoadError, StateDictMismatchError
from .pasd import (
    PASD_VARIANTS,
    PasdConditioningEmbedding,
    PasdControlNetModel,
    PasdUNet2DConditionModel,
    PasdVariant,
    detect_unet_variant,
)

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
