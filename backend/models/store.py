"""The per-user model folder: download registry models into it and find installed ones, offline.

Before anything is fetched, each repository's file list is read and every registry file is found in
it, so an out-of-date registry entry fails at once with what the repository really holds (and never
as a download that quietly brings nothing). Only the registry's files are fetched, by exact name,
through ``huggingface_hub.snapshot_download``; partial files are resumed by the hub client on the
next try. Pickles (``scaler.pt``, ``*.pt``/``*.pth``/``*.ckpt``) are never fetched. Finding a model
never touches the network: a local folder always works offline.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..paths import models_dir as default_models_dir
from .loading import ModelLoadError
from .manifest import MANIFEST_NAME, ModelManifest, read_manifest, write_manifest
from .modelscope import is_modelscope_folder
from .registry import FAMILIES, LICENCE_TERMS, ModelSpec, accepted_names, get_spec, with_requirements

# Training state and pickled checkpoints: loading them can run code, and no component needs them.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class ModelDownloadError(RuntimeError):
    """A download failed; the message says what to fetch by hand and where to put it."""


@dataclass(frozen=True)
class InstalledModel:
    root: Path
    manifest: ModelManifest


def _models_dir(models_dir: str | Path | None) -> Path:
    return Path(models_dir).expanduser() if models_dir else default_models_dir()


def manual_instructions(spec: ModelSpec, target: Path) -> str:
    if not spec.files:  # an entry of other entries' files: those are what to fetch
        return "\n".join(manual_instructions(get_spec(r), target.parent / r) for r in spec.requires)
    files = "\n".join(f"  {f}" for f in spec.files)
    return (
        f"Download these files of {spec.url} (revision {spec.revision}):\n{files}\n"
        f"and put them under {target}{os.sep}, keeping their folders "
        f"(e.g. {target / spec.files[0]})."
    )


def _readable(path: Path) -> bool:
    """Non-empty, and a weights file whose container is whole (a truncated one fails here)."""
    if path.stat().st_size == 0:
        return False
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception:
            return False
    elif path.suffix == ".bin":
        return zipfile.is_zipfile(path)  # torch.save's format; its directory sits at the very end
    return True


def missing_files(spec: ModelSpec, target: Path) -> list[str]:
    """Files of ``spec`` absent, empty or unreadable under ``target`` (safetensors headers are parsed;
    a ``.bin`` stand-in counts for its safetensors file, see ``registry.accepted_names``)."""
    missing = []
    for name in spec.files:
        present = [target / n for n in accepted_names(name) if (target / n).is_file()]
        if not present or not _readable(present[0]):
            missing.append(name)
    return missing


def _subfolders(prefix: str, listing: Collection[str]) -> list[str]:
    """Folders directly inside ``prefix`` ("" for the root), as ``name/``."""
    start = f"{prefix}/" if prefix else ""
    return sorted(
        {
            f[len(start) :].split("/")[0] + "/"
            for f in listing
            if f.startswith(start) and "/" in f[len(start) :]
        }
    )


def _holds(prefix: str, listing: Collection[str]) -> str:
    """What a folder of the repository holds: its folders, else its files."""
    start = f"{prefix}/" if prefix else ""
    entries = _subfolders(prefix, listing) or sorted(
        f[len(start) :] for f in listing if f.startswith(start) and "/" not in f[len(start) :]
    )
    return ", ".join(entries) or "nothing"


def _is_folder(prefix: str, listing: Collection[str]) -> bool:
    return not prefix or any(f.startswith(f"{prefix}/") for f in listing)


def _out_of_date(spec: ModelSpec, what: str, path: str, listing: Collection[str]) -> ModelDownloadError:
    parent = path.rpartition("/")[0]
    while not _is_folder(parent, listing):
        parent = parent.rpartition("/")[0]
    where = f"{parent}/ holds" if parent else "it holds"
    return ModelDownloadError(
        f"{spec.repo} has no {what} {path}; {where} {_holds(parent, listing)} — the registry entry "
        f"'{spec.id}' is out of date; please report it."
    )


def plan_download(spec: ModelSpec, listing: Collection[str]) -> list[str]:
    """The repository files to fetch for ``spec``, each found in the repository's ``listing``.

    A weights file may be replaced by its ``.bin`` only where its folder holds no safetensors at all;
    nothing else is ever chosen, pickles least of all. Raises ModelDownloadError naming what the
    repository holds when a folder or a file of the entry is absent, so nothing is fetched in vain.
    """
    listing = set(listing)
    folders = [spec.subfolder, spec.scheduler_subfolder or ""]
    folders += [name.rpartition("/")[0] for name in spec.files]
    for folder in dict.fromkeys(f for f in folders if f):
        if not _is_folder(folder, listing):
            raise _out_of_date(spec, "folder", folder, listing)
    chosen = []
    for name in spec.files:
        folder = name.rpartition("/")[0]
        has_safetensors = any(f.endswith(".safetensors") and f.rpartition("/")[0] == folder for f in listing)
        found = [n for n in accepted_names(name) if n in listing and (n == name or not has_safetensors)]
        if not found:
            raise _out_of_date(spec, "file", name, listing)
        if found[0].endswith(PICKLE_SUFFIXES):  # the registry must never name one; refuse if it does
            raise ModelDownloadError(f"Refusing to download the pickle {found[0]} of {spec.repo}")
        chosen.append(found[0])
    return chosen + [name for name in spec.optional_files if name in listing]


def _manifest_for(spec: ModelSpec, target: Path) -> ModelManifest | None:
    if spec.variant is None:
        return None
    family = spec.family or "pasd"
    base = FAMILIES[family].base
    if family == "supir":
        linked = spec.links.get("supir")
        weights = spec.files[0] if spec.files else f"../{linked}/{get_spec(str(linked)).files[0]}"
        base_id = spec.links.get("base_file", base)
        return supir_manifest(
            spec.id,
            spec.title,
            spec.licence,
            weights,
            f"../{base_id}",
            "../sdxl-tokenizers",
            get_spec(base_id).files[0],
        )
    own = f"{spec.subfolder}/scheduler"  # a checkpoint that brought its own scheduler uses it
    has_own = not spec.scheduler_subfolder and (target / own / "scheduler_config.json").is_file()
    return ModelManifest(
        id=spec.id,
        variant=spec.variant,
        tasks=spec.tasks,
        family=family,
        description=spec.title,
        licence=spec.licence,
        use_rrdb=spec.use_rrdb,
        pasd_dir=spec.subfolder,
        scheduler_dir=spec.scheduler_subfolder or (own if has_own else f"../{base}/scheduler"),
        base_dir=f"../{base}",
        extra={"vae_fp16": f"../{r}"} if (r := "sdxl-vae-fp16") in spec.requires else {},
        overrides=dict(spec.overrides),
    )


def supir_manifest(
    model_id: str,
    title: str,
    licence: str,
    weights: str,
    base: str,
    tokenizers: str,
    base_file: str | None = "sd_xl_base_1.0_0.9vae.safetensors",
    tiny: bool = False,
) -> ModelManifest:
    """A SUPIR folder: its own weights file, the SDXL base (one official file, or without
    ``base_file`` the diffusers folders in ``base``) and SDXL's tokenizers, paths relative to it."""
    extra = {
        "supir": weights,
        "tokenizer": f"{tokenizers}/tokenizer",
        "tokenizer_2": f"{tokenizers}/tokenizer_2",
    }
    if base_file is not None:
        extra["base_file"] = f"{base}/{base_file}"
    return ModelManifest(
        id=model_id,
        variant="full",
        tasks=("upscale",),
        family="supir",
        description=title,
        licence=licence,
        tiny=tiny,
        base_dir=base,
        extra=extra,
    )


class LicenceNotAccepted(ModelDownloadError):
    """A model's terms must be accepted before its weights are fetched; the message shows them."""

    def __init__(self, spec: ModelSpec) -> None:
        self.terms = spec.terms or ""
        super().__init__(
            f"'{spec.id}' is under terms you must accept before it is downloaded:\n\n"
            f"{LICENCE_TERMS[self.terms]}\n\n"
            f"To accept them, run `python -m backend download {spec.id} --accept-licence {self.terms}` "
            f"(the installer: --accept-licence {self.terms}; the dialog asks in Install…)."
        )


def _adopt_earlier_layout(spec: ModelSpec, target: Path) -> None:
    """Move a folder installed under an earlier registry's hub paths (its manifest says which) to the
    current ones rather than fetch gigabytes again: ``pasd-color`` once named ``pasd_color/``."""
    if spec.variant is None or not (target / MANIFEST_NAME).is_file():
        return
    try:
        old = read_manifest(target)
    except ModelLoadError:
        return
    for was, now in ((old.pasd_dir, spec.subfolder), (old.scheduler_dir, spec.scheduler_subfolder)):
        parts = Path(was).parts
        if not now or was == now or not parts or ".." in parts or "." in parts or Path(was).is_absolute():
            continue
        source, dest = target / was, target / now
        if source.is_dir() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            source.rename(dest)
            for parent in Path(was).parents[:-1]:  # drop folders the move left empty
                with contextlib.suppress(OSError):
                    (target / parent).rmdir()


def _could_not(spec: ModelSpec, target: Path, exc: Exception) -> ModelDownloadError:
    """Offline, hub error, disk full…: one clear message with what to fetch by hand."""
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if _is_offline(exc):
        reason = "the Hugging Face hub cannot be reached; is this computer offline?"
    return ModelDownloadError(
        f"Could not download '{spec.id}' ({reason}).\n{manual_instructions(spec, target)}"
    )


# Error types of httpx, requests and huggingface_hub that mean "no connection could be made".
OFFLINE_ERRORS = ("ConnectError", "ConnectionError", "ConnectTimeout", "OfflineModeIsEnabled")


def _is_offline(exc: BaseException) -> bool:
    """A connection that could not be made at all (no network, no route, no name), however wrapped."""
    import socket

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if isinstance(current, (ConnectionRefusedError, socket.gaierror)) or name in OFFLINE_ERRORS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _plan_all(specs: list[ModelSpec], root: Path) -> dict[str, list[str]]:
    """Every entry's files, each repository listed once, all checked before the first download."""
    from huggingface_hub import HfApi

    api = HfApi()
    listings: dict[tuple[str, str], list[str]] = {}
    plans: dict[str, list[str]] = {}
    for spec in specs:
        key = (spec.repo, spec.revision)
        if key not in listings:
            try:
                listings[key] = api.list_repo_files(spec.repo, revision=spec.revision)
            except Exception as exc:
                raise _could_not(spec, root / spec.id, exc) from exc
        plans[spec.id] = plan_download(spec, listings[key])
    return plans


def download_model(
    model_id: str,
    models_dir: str | Path | None = None,
    progress: bool = True,
    accepted: Collection[str] = (),
) -> Path:
    """Fetch a registry model (and the components it needs) into the per-user model folder.

    A model under terms (``ModelSpec.terms``, e.g. SUPIR's non-commercial licence) is fetched only
    when ``accepted`` names them; otherwise :class:`LicenceNotAccepted` says what they are, before
    anything is contacted."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    root = _models_dir(models_dir)
    specs = with_requirements(model_id)
    for spec in specs:
        if spec.terms and spec.terms not in accepted:
            raise LicenceNotAccepted(spec)
    for spec in specs:
        _adopt_earlier_layout(spec, root / spec.id)
    damaged = {spec.id: missing_files(spec, root / spec.id) for spec in specs}
    plans = _plan_all([s for s in specs if damaged[s.id]], root)
    for spec in specs:
        target = root / spec.id
        if spec.id in plans:
            for name in damaged[spec.id]:  # a truncated file would look current to the hub client
                for candidate in accepted_names(name):
                    (target / candidate).unlink(missing_ok=True)
            (disable_progress_bars if not progress else enable_progress_bars)()
            try:
                snapshot_download(
                    repo_id=spec.repo,
                    revision=spec.revision,
                    allow_patterns=plans[spec.id],  # exact names from the listing, nothing else
                    local_dir=target,
                )
            except Exception as exc:
                raise _could_not(spec, target, exc) from exc
            still_missing = missing_files(spec, target)
            if still_missing:
                raise ModelDownloadError(
                    f"Download of '{spec.id}' is incomplete; missing or damaged: "
                    f"{', '.join(still_missing)}.\n" + manual_instructions(spec, target)
                )
        manifest = _manifest_for(spec, target)
        if manifest is not None:
            target.mkdir(parents=True, exist_ok=True)  # an entry of linked files has no folder yet
            write_manifest(target, manifest)
    return root / model_id


def installed_models(models_dir: str | Path | None = None) -> list[InstalledModel]:
    """Every folder in the model folder that has a readable manifest (PASD models, tiny ones too), and
    ModelScope PASD snapshots (their ``configuration.json``)."""
    root = _models_dir(models_dir)
    found = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / MANIFEST_NAME).is_file() or is_modelscope_folder(child):
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
    if manifest.family == "supir":
        for name in ("supir", *(["base_file"] if "base_file" in manifest.extra else [])):
            if not manifest.resolve(path, name).is_file():
                raise ModelLoadError(f"{path}: its {name} file is missing ({manifest.resolve(path, name)})")
        return InstalledModel(path, manifest)
    for name in ("unet", "controlnet"):
        if not manifest.resolve(path, name).is_dir():
            raise ModelLoadError(f"{path}: its {name}/ folder is missing ({manifest.resolve(path, name)})")
    return InstalledModel(path, manifest)
