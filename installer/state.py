"""The install record: which steps started and finished, and every path the installer created.

A step is marked ``started`` before it changes anything and ``done`` after, so a run that was killed
is recognised next time and that step is repaired. A path is recorded before it is created, so
``--uninstall`` removes exactly what the installer made, even after an interrupted run, and nothing
else. The file is replaced atomically, so a kill never leaves half a record.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_NAME = "install-state.json"
FORMAT = 1

# Groups of created paths: what --uninstall removes (models only with --purge-models).
ENV, PLUGIN, MODELS, STATE = "env", "plugin", "models", "state"


@dataclass(frozen=True)
class Created:
    """A path the installer made: a ``file``, an (empty-when-removed) ``dir`` or a whole ``tree``."""

    path: str
    kind: str  # file | dir | tree
    group: str


@dataclass
class StepRecord:
    status: str  # started | done
    fingerprint: str = ""


@dataclass
class InstallState:
    path: Path
    steps: dict[str, StepRecord] = field(default_factory=dict)
    created: list[Created] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    # ------------------------------------------------------------------ file
    @classmethod
    def load(cls, path: Path, dry_run: bool = False) -> InstallState:
        state = cls(path, dry_run=dry_run)
        if not path.is_file():
            return state
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return state  # unreadable: start from reality (every step checks what is there)
        state.steps = {k: StepRecord(**v) for k, v in data.get("steps", {}).items()}
        state.created = [Created(**c) for c in data.get("created", [])]
        state.settings = dict(data.get("settings", {}))
        return state

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "steps": {k: asdict(v) for k, v in self.steps.items()},
            "created": [asdict(c) for c in self.created],
            "settings": self.settings,
        }

    def save(self) -> None:
        """Write atomically; unchanged content is not rewritten (a no-op run touches nothing)."""
        if self.dry_run:
            return
        for folder in missing_dirs(self.path.parent):
            self._record(folder, "dir", STATE)
        self._record(self.path, "file", STATE)
        text = json.dumps(self.to_json(), indent=2) + "\n"
        if self.path.is_file() and self.path.read_text(encoding="utf-8") == text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, text)  # the remembered options may hold an access token

    # ------------------------------------------------------------------ steps
    def step(self, name: str) -> StepRecord | None:
        return self.steps.get(name)

    def interrupted(self, name: str) -> bool:
        record = self.steps.get(name)
        return record is not None and record.status == "started"

    def start(self, name: str, fingerprint: str) -> None:
        self.steps[name] = StepRecord("started", fingerprint)
        self.save()

    def finish(self, name: str, fingerprint: str) -> None:
        self.steps[name] = StepRecord("done", fingerprint)
        self.save()

    def forget(self, name: str) -> None:
        if self.steps.pop(name, None) is not None:
            self.save()

    # ------------------------------------------------------------------ created paths
    def _record(self, path: Path, kind: str, group: str) -> bool:
        entry = Created(str(path), kind, group)
        if any(c.path == entry.path for c in self.created):
            return False
        self.created.append(entry)
        return True

    def record(self, path: Path, kind: str, group: str) -> None:
        """Note ``path`` as made by the installer (call before making it)."""
        if self._record(path, kind, group):
            self.save()

    def owns(self, path: Path) -> bool:
        return any(c.path == str(path) for c in self.created)

    def make_dirs(self, path: Path, group: str) -> None:
        """``mkdir -p`` that records each folder it creates."""
        if self.dry_run:
            return
        missing = missing_dirs(path)
        if [folder for folder in missing if self._record(folder, "dir", group)]:
            self.save()
        for folder in missing:
            folder.mkdir(exist_ok=True)

    def of_group(self, *groups: str) -> list[Created]:
        return [c for c in self.created if c.group in groups]


def missing_dirs(path: Path) -> list[Path]:
    """The folders ``mkdir -p path`` would create, outermost first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def remove_created(entry: Created) -> str | None:
    """Remove one recorded path; returns why it was kept, or None when it is gone."""
    path = Path(entry.path)
    if not path.exists() and not path.is_symlink():
        return None
    if entry.kind == "tree" and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif entry.kind == "dir":
        if any(path.iterdir()):
            return "it holds files the installer did not create"
        path.rmdir()
    else:
        path.unlink()
    return None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically into a file only the user can read, from the moment it exists.

    (Writing first and chmod-ing after leaves a moment in which other users can read a token.)
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover could have wider permissions; O_EXCL makes a new one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
