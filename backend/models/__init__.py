"""Model code per family (``pasd/``, shared SDXL pieces in ``sdxl/``) on current diffusers blocks, with
strict loading of the official folders, the registry and the per-user model store.

The model classes are imported on first use (PEP 562), so that ``backend.models.registry`` (plain
data, read by the dialog and the installer) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PASD_VARIANTS": ".pasd",
    "PasdConditioningEmbedding": ".pasd",
    "PasdControlNetModel": ".pasd",
    "PasdUNet2DConditionModel": ".pasd",
    "PasdVariant": ".pasd",
    "detect_unet_variant": ".pasd",
    "ModelLoadError": ".loading",
    "StateDictMismatchError": ".loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
