"""The backend environment: a venv, pip runs in it, the project's source, and repair after a kill.

pip is run as ``python -I -m pip`` of the environment (isolated: a checkout in the working folder
must not look installed), so it uses the user's own pip configuration and
default index. The project is built from a copy of the checkout (never in place: setuptools would
write ``build/`` and ``*.egg-info`` into it). A pip run that was killed can leave a package half
written that pip then believes installed; :func:`repair_interrupted` finds those by pip's own
completion marker (``INSTALLER`` is written after all files) and by ``RECORD``, and removes them so
the next pip run installs them afresh.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InstallError

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "gimp-diffusion-upscale"
SKIP_NAMES = ("build", "dist", "*.egg-info", "__pycache__", "*.pyc", "venv", "node_modules")


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def last_line(self) -> str:
        """The answer of a check script (warnings go to stderr and are ignored)."""
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


def run(command: Sequence[str | Path], capture: bool = True, cwd: Path | None = None) -> CommandResult:
    """Run a command; ``capture=False`` lets pip's progress through to the terminal."""
    args = [str(c) for c in command]
    try:
        if capture:
            done = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
            return CommandResult(done.returncode, done.stdout, done.stderr)
        return CommandResult(subprocess.run(args, cwd=cwd).returncode)
    except OSError as exc:
        return CommandResult(127, stderr=f"{args[0]}: {exc}")


def check(command: Sequence[str | Path], what: str, capture: bool = False) -> None:
    result = run(command, capture=capture)
    if result.returncode != 0:
        tail = "\n".join(result.output.splitlines()[-25:])
        raise InstallError(f"{what} failed (exit code {result.returncode}).\n{tail}".rstrip())


def python_version(python: Path) -> str | None:
    """``X.Y.Z`` of an interpreter that runs, else None."""
    result = run([python, "-I", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    return result.last_line if result.returncode == 0 else None


def create_venv(venv: Path) -> None:
    check([sys.executable, "-m", "venv", venv], f"Creating the environment {venv}", capture=True)


def pip_install(python: Path, args: Sequence[str | Path], what: str) -> None:
    check([python, "-I", "-m", "pip", "install", "--progress-bar", "on", *args], what)


# --------------------------------------------------------------------------- the project's source
def _skipped(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or any(fnmatch.fnmatch(name, p) for p in SKIP_NAMES)


def _tree(folder: Path) -> Iterator[Path]:
    for child in sorted(folder.iterdir()):
        if _skipped(child):
            continue
        if child.is_dir():
            yield from _tree(child)
        elif child.is_file():
            yield child


def source_files(root: Path = ROOT, with_tests: bool = True) -> Iterator[Path]:
    """What building the project needs: the top-level files (pyproject.toml, README.md) and the
    Python packages (top-level folders with ``__init__.py``); no docs, VCS data or environments."""
    for child in sorted(root.iterdir()):
        if _skipped(child):
            continue
        if child.is_file():
            yield child
        elif (child / "__init__.py").is_file() and (with_tests or child.name != "tests"):
            yield from _tree(child)


def source_fingerprint(root: Path = ROOT) -> str:
    """Changes when the code users run changes (tests and docs aside), so a re-run updates the backend."""
    digest = hashlib.sha256()
    for path in source_files(root, with_tests=False):
        if path.parent == root and path.name != "pyproject.toml":
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def copy_source(root: Path, target: Path) -> Path:
    for path in source_files(root):
        dest = target / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    return target


# --------------------------------------------------------------------------- inspection and repair
_SITE_SCRIPT = (
    "import json, sysconfig; print(json.dumps([sysconfig.get_paths()[k] for k in ('purelib', 'platlib')]))"
)


def site_packages(python: Path) -> list[Path]:
    result = run([python, "-I", "-c", _SITE_SCRIPT])
    if result.returncode != 0:
        return []
    return sorted({Path(p) for p in json.loads(result.last_line)})


@dataclass(frozen=True)
class BrokenDist:
    dist_info: Path
    reason: str


def broken_distributions(python: Path) -> list[BrokenDist]:
    """Installed packages pip did not finish writing (no ``INSTALLER``) or with files missing."""
    broken = []
    for site in site_packages(python):
        for info in sorted(site.glob("*.dist-info")):
            if not (info / "INSTALLER").is_file() or not (info / "METADATA").is_file():
                broken.append(BrokenDist(info, "pip did not finish installing it"))
                continue
            record = info / "RECORD"
            if not record.is_file():
                broken.append(BrokenDist(info, "its RECORD is missing"))
                continue
            with record.open(newline="", encoding="utf-8") as fh:
                for row in csv.reader(fh):
                    if row and row[0] and not (site / row[0]).exists():
                        broken.append(BrokenDist(info, f"{row[0]} is missing"))
                        break
    return broken


def remove_distribution(dist: BrokenDist, venv: Path) -> None:
    """Delete what a half-installed package wrote (its RECORD's files inside ``venv``) and its metadata."""
    site = dist.dist_info.parent
    venv = venv.resolve()
    record = dist.dist_info / "RECORD"
    if record.is_file():
        with record.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if not row or not row[0]:
                    continue
                path = (site / row[0]).resolve()
                if path.is_relative_to(venv) and path.is_file():
                    path.unlink()
    shutil.rmtree(dist.dist_info, ignore_errors=True)


def repair_interrupted(python: Path, venv: Path) -> list[BrokenDist]:
    """Make the environment consistent again after a killed pip run; returns what was removed."""
    broken = broken_distributions(python)
    for dist in broken:
        remove_distribution(dist, venv)
    return broken


def project_status(python: Path) -> tuple[str | None, list[str]]:
    """(installed version of the project or None, its requirements that are not installed)."""
    script = (
        "import json, importlib.metadata as md, re\n"
        f"try:\n    dist = md.distribution({DIST_NAME!r})\n"
        "except md.PackageNotFoundError:\n    print(json.dumps([None, []])); raise SystemExit\n"
        "missing = []\n"
        "for req in dist.requires or []:\n"
        "    if 'extra ==' in req:\n        continue\n"
        "    name = re.split(r'[ ;<>=!~\\[(]', req, maxsplit=1)[0]\n"
        "    try:\n        md.version(name)\n"
        "    except md.PackageNotFoundError:\n        missing.append(name)\n"
        "import backend\n"
        "print(json.dumps([dist.version, missing]))\n"
    )
    result = run([python, "-I", "-c", script])
    if result.returncode != 0:
        return None, []
    version, missing = json.loads(result.last_line)
    return version, missing


def torch_status(python: Path) -> str | None:
    """``torch.__version__`` when PyTorch imports in the environment."""
    result = run([python, "-I", "-c", "import torch; print(torch.__version__)"])
    return result.last_line if result.returncode == 0 and result.last_line else None
