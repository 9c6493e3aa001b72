"""``pasd_model.json``: what a model folder is (variant, tasks, where its components are).

The official weights folders carry no such facts (the UNet config is plain SD1.5 and the
colorization model has the light architecture), so our installer and ``tiny-model`` write this small
file next to them. Paths inside are relative to the folder that holds the manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .loading import ModelLoadError
from .registry import FAMILIES, ModelDefaults, model_defaults

MANIFEST_NAME = "pasd_model.json"
TASKS = ("upscale", "colorize")


@dataclass(frozen=True)
class ModelManifest:
    """Facts about one installed model folder."""

    id: str
    variant: str  # "full" | "light"
    tasks: tuple[str, ...]
    family: str = "pasd"  # which pipeline runs it (registry.FAMILIES); older manifests are all "pasd"
    description: str = ""
    licence: str = ""
    tiny: bool = False
    use_rrdb: bool = False
    # Component folders relative to the manifest's folder; base components default to this folder.
    pasd_dir: str = "."
    scheduler_dir: str = "scheduler"
    base_dir: str = "."
    extra: dict[str, str] = field(default_factory=dict)  # more component folders, e.g. ``vae_fp16``
    overrides: dict[str, Any] = field(default_factory=dict)  # the model's own changes to its defaults

    def defaults(self, task: str) -> ModelDefaults:
        """What a parameter left unset becomes for this model (its family's, with its own changes)."""
        return model_defaults(self.family, task, self.overrides)

    def resolve(self, root: Path, name: str) -> Path:
        """Absolute folder of a component: ``unet``, ``controlnet``, ``scheduler`` or a base one."""
        if name in ("unet", "controlnet"):
            return (root / self.pasd_dir / name).resolve()
        if name == "scheduler":
            return (root / self.scheduler_dir).resolve()
        if name in self.extra:
            return (root / self.extra[name]).resolve()
        return (root / self.base_dir / name).resolve()


def write_manifest(root: Path, manifest: ModelManifest) -> Path:
    path = root / MANIFEST_NAME
    data = asdict(manifest)
    data["tasks"] = list(manifest.tasks)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_manifest(root: Path) -> ModelManifest:
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        from .modelscope import is_modelscope_folder, modelscope_manifest

        if is_modelscope_folder(root):  # a ModelScope PASD snapshot: its configuration.json says it all
            return modelscope_manifest(root)
        raise ModelLoadError(f"{root} is not a model folder: {MANIFEST_NAME} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    try:
        data["tasks"] = tuple(data.get("tasks", ()))
        manifest = ModelManifest(**data)
    except TypeError as exc:
        raise ModelLoadError(f"{path} has unknown or missing fields: {exc}") from exc
    if (
        manifest.variant not in ("full", "light")
        or not set(manifest.tasks) <= set(TASKS)
        or not manifest.tasks
    ):
        raise ModelLoadError(f"{path}: variant must be full|light and tasks a non-empty subset of {TASKS}")
    if manifest.family not in FAMILIES:
        raise ModelLoadError(
            f"{path}: unknown model family {manifest.family!r} (this version knows {', '.join(FAMILIES)}); "
            "a newer version of the backend may be needed"
        )
    for task in manifest.tasks:
        try:
            manifest.defaults(task)
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"{path}: no defaults for {task}: {exc}") from exc
    return manifest
