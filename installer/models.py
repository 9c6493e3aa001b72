"""Optional model downloads: which ids, how much is still to fetch, the download, the verification.

The size estimate is printed before anything is fetched; it comes from the backend's registry, read
from the checkout as a plain module (it needs nothing beyond the standard library), so it is known
even in a dry run before the environment exists. The download itself and the verification (which
parses the weight files' headers) run in the backend environment.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .environment import ROOT, run
from .errors import InstallError

ALIASES = {"color": "pasd-color", "colour": "pasd-color", "light": "pasd-light", "caption": "blip"}


def load_registry() -> ModuleType:
    """``backend/models/registry.py`` without importing the ``backend`` package (which needs torch)."""
    name = "_gdu_installer_registry"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "backend" / "models" / "registry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_model_ids(text: str) -> tuple[str, ...]:
    """``"pasd,color"`` → ``("pasd", "pasd-color")``; unknown ids raise with the list of known ones."""
    registry = load_registry().REGISTRY
    ids: list[str] = []
    for raw in text.replace(" ", ",").split(","):
        if not raw:
            continue
        model_id = ALIASES.get(raw.lower(), raw.lower())
        if model_id not in registry:
            known = ", ".join([*registry, *ALIASES])
            raise InstallError(f"Unknown model {raw!r} for --models; known: {known}")
        if model_id not in ids:
            ids.append(model_id)
    return tuple(ids)


@dataclass(frozen=True)
class ModelNeed:
    """One registry entry the requested models need, and whether its files are all on disk."""

    id: str
    repo: str
    title: str
    size_bytes: int
    licence: str
    present: bool


def needs(ids: tuple[str, ...], models_dir: Path) -> list[ModelNeed]:
    """Every entry the ids need (requirements first, once each), checked by file presence."""
    registry = load_registry()
    seen: dict[str, ModelNeed] = {}
    for model_id in ids:
        for spec in registry.with_requirements(model_id):
            if spec.id in seen:
                continue
            folder = models_dir / spec.id
            present = all(
                any(
                    (folder / n).is_file() and (folder / n).stat().st_size > 0
                    for n in registry.accepted_names(f)
                )
                for f in spec.files
            )
            seen[spec.id] = ModelNeed(spec.id, spec.repo, spec.title, spec.size_bytes, spec.licence, present)
    return list(seen.values())


def describe(need_list: list[ModelNeed]) -> list[str]:
    lines = []
    for need in need_list:
        state = "present" if need.present else f"{need.size_bytes / 1e9:.2f} GB to download"
        lines.append(f"{need.id:<12} {state:<22} {need.title}; licence: {need.licence}")
    todo = sum(n.size_bytes for n in need_list if not n.present)
    lines.append(f"Total to download: about {todo / 1e9:.2f} GB")
    return lines


_VERIFY = """
import json, sys
from pathlib import Path
from backend.models.registry import with_requirements
from backend.models.store import installed_models, missing_files
root = Path(sys.argv[1])
ids = sys.argv[2:]
missing = {}
for model_id in ids:
    for spec in with_requirements(model_id):
        if files := missing_files(spec, root / spec.id):
            missing[spec.id] = files
installed = {m.root.name for m in installed_models(root)}
missing.update({i: ["pasd_model.json"] for i in ids if i not in installed and i not in missing
                and with_requirements(i)[-1].variant is not None})
print(json.dumps(missing))
"""


def verify(python: Path, ids: tuple[str, ...], models_dir: Path) -> dict[str, list[str]]:
    """Files missing or damaged per model (safetensors headers parsed in the backend environment)."""
    result = run([python, "-I", "-c", _VERIFY, models_dir, *ids])
    if result.returncode != 0:
        raise InstallError("Could not check the models in the backend environment:\n" + result.output[-2000:])
    return json.loads(result.last_line)


def hub_caches(python: Path, needs: list[ModelNeed]) -> list[Path]:
    """What the hub client writes outside the model folder for these downloads: per-repo folders in
    its cache (refs) and its transfer cache, as the backend environment's huggingface_hub sets them."""
    script = (
        "import json; from huggingface_hub import constants as c; "
        "print(json.dumps([c.HF_HUB_CACHE, getattr(c, 'HF_XET_CACHE', None)]))"
    )
    result = run([python, "-I", "-c", script])
    if result.returncode != 0:
        return []
    hub, xet = json.loads(result.last_line)
    repos = sorted({n.repo for n in needs if not n.present})
    return [Path(hub) / f"models--{repo.replace('/', '--')}" for repo in repos] + ([Path(xet)] if xet else [])


def check_terms(ids: tuple[str, ...], accepted: tuple[str, ...]) -> None:
    """Refuse, showing the terms, models whose licence must be accepted first (SUPIR's)."""
    registry = load_registry()
    for model_id in ids:
        terms = registry.get_spec(model_id).terms
        if terms and terms not in accepted:
            raise InstallError(
                f"{model_id} is under terms you must accept before it is downloaded:\n\n"
                f"{registry.LICENCE_TERMS[terms]}\n\nTo accept them, run the installer again with "
                f"--accept-licence {terms}; or leave {model_id} out of --models."
            )


def download(python: Path, ids: tuple[str, ...], models_dir: Path, accepted: tuple[str, ...] = ()) -> None:
    """``python -m backend download IDS --models DIR`` with its progress bars on the terminal."""
    terms = [arg for t in accepted for arg in ("--accept-licence", t)]
    command = [python, "-I", "-m", "backend", "download", *ids, "--models", models_dir, *terms]
    done = run(command, capture=False)
    if done.returncode != 0:
        raise InstallError(
            f"The model download stopped (exit code {done.returncode}); its message is above. Run the "
            "installer again to resume it: finished files are kept."
        )
