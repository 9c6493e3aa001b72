"""The per-user model folder: download registry models into it and find installed ones, offline.

Downloads go through ``huggingface_hub.snapshot_download`` with the registry's allow-patterns, so
only the needed files are fetched; partial files are resumed by the hub client on the next try.
Finding a model never touches the network: a local folder always works offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..paths import models_dir as default_models_dir
from .loading import ModelLoadError
from .manifest import MANIFEST_NAME, ModelManifest, read_manifest, write_manifest
from .registry import ModelSpec, get_spec, with_requirements


class ModelDownloadError(RuntimeError):
    """A download failed; the message says what to fetch by hand and where to put it."""


@dataclass(frozen=True)
class InstalledModel:
    root: Path
    manifest: ModelManifest


def _models_dir(models_dir: str | Path | None) -> Path:
    return Path(models_dir).expanduser() if models_dir else default_models_dir()


def manual_instructions(spec: ModelSpec, target: Path) -> str:
    files = "\n".join(f"  {f}" for f in spec.files)
    return (
        f"Download these files of {spec.url} (revision {spec.revision}):\n{files}\n"
        f"and put them under {target}{os.sep}, keeping their folders "
        f"(e.g. {target / spec.files[0]})."
    )


def missing_files(spec: ModelSpec, target: Path) -> list[str]:
    """Files of ``spec`` absent, empty or unreadable under ``target`` (safetensors headers are parsed)."""
    missing = []
    for name in spec.files:
        path = target / name
        if not path.is_file() or path.stat().st_size == 0:
            missing.append(name)
        elif path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            except Exception:
                missing.append(name)
    return missing


def _manifest_for(spec: ModelSpec) -> ModelManifest | None:
    if spec.variant is None:
        return None
    return ModelManifest(
        id=spec.id,
        variant=spec.variant,
        tasks=spec.tasks,
        description=spec.title,
        licence=spec.licence,
        use_rrdb=spec.use_rrdb,
        pasd_dir=spec.subfolder,
        scheduler_dir=spec.scheduler_subfolder or "../sd15/scheduler",
        base_dir="../sd15",
    )


def download_model(model_id: str, models_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Fetch a registry model (and SD1.5 components it needs) into the per-user model folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    root = _models_dir(models_dir)
    for spec in with_requirements(model_id):
        target = root / spec.id
        if damaged := missing_files(spec, target):
            for name in damaged:  # a truncated file would look current to the hub client's cache
                (target / name).unlink(missing_ok=True)
            (disable_progress_bars if not progress else enable_progress_bars)()
            try:
                snapshot_download(
                    repo_id=spec.repo,
                    revision=spec.revision,
                    allow_patterns=list(spec.files),
                    local_dir=target,
                )
            except Exception as exc:  # offline, hub error, disk full…: one clear message for all
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise ModelDownloadError(
                    f"Could not download '{spec.id}' ({reason}).\n{manual_instructions(spec, target)}"
                ) from exc
            still_missing = missing_files(spec, target)
            if still_missing:
                raise ModelDownloadError(
                    f"Download of '{spec.id}' is incomplete; missing or damaged: "
                    f"{', '.join(still_missing)}.\n" + manual_instructions(spec, target)
                )
        manifest = _manifest_for(spec)
        if manifest is not None:
            write_manifest(target, manifest)
    return root / model_id


def installed_models(models_dir: str | Path | None = None) -> list[InstalledModel]:
    """Every folder in the model folder that has a readable manifest (PASD models, tiny ones too)."""
    root = _models_dir(models_dir)
    found = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / MANIFEST_NAME).is_file():
                try:
                    found.append(InstalledModel(child, read_manifest(child)))
                except ModelLoadError:
                    continue
    return found


def resolve_model(name_or_path: str | Path, models_dir: str | Path | None = None) -> InstalledModel:
    """A model by folder path or by id in the model folder; never uses the network."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        path = _models_dir(models_dir) / str(name_or_path)
    if not path.is_dir():
        hint = ""
        try:
            spec = get_spec(str(name_or_path))
        except KeyError:
            pass
        else:
            hint = (
                f"\nInstall it with `python -m backend download {spec.id}`, or by hand: "
                + manual_instructions(spec, path)
            )
        raise ModelLoadError(f"Model {str(name_or_path)!r} is not installed (looked in {path}).{hint}")
    manifest = read_manifest(path)
    for name in ("unet", "controlnet"):
        if not manifest.resolve(path, name).is_dir():
            raise ModelLoadError(f"{path}: its {name}/ folder is missing ({manifest.resolve(path, name)})")
    return InstalledModel(path, manifest)
