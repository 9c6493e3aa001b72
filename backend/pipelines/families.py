"""Which pipeline runs which model family: the one place the engine learns a family's code.

A model folder's ``pasd_model.json`` names its family (``registry.FAMILIES``); adding a family means
one pipeline module implementing :class:`~backend.pipelines.base.RestorationPipeline` and one line in
:data:`PIPELINES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..models.loading import ModelLoadError

if TYPE_CHECKING:
    from ..devices import DeviceChoice
    from ..models.store import InstalledModel
    from .base import RestorationPipeline

# family → "module:class", imported on first use (a family's code loads only when one of its models runs)
PIPELINES = {
    "pasd": "backend.pipelines.pasd:PasdPipeline",
    "pasd-sdxl": "backend.pipelines.pasd_sdxl:PasdSdxlPipeline",
    "supir": "backend.pipelines.supir:SupirPipeline",  # non-commercial: backend/models/supir/NOTICE.md
}


def load_pipeline(model: InstalledModel, choice: DeviceChoice, offload: bool = False) -> RestorationPipeline:
    """The model's family pipeline with the model's components loaded on ``choice``."""
    family = model.manifest.family
    try:
        module, _, name = PIPELINES[family].partition(":")
    except KeyError:
        raise ModelLoadError(f"{model.root}: no pipeline runs the model family {family!r}") from None
    cls = getattr(importlib.import_module(module), name)
    return cls.from_installed(model, choice, offload=offload)
