"""``--uninstall``: remove exactly the paths the install record lists, newest first.

Downloaded models are user data worth gigabytes: they stay unless ``--purge-models`` is given, and
the record is kept for them so a later ``--uninstall --purge-models`` can still find them. A folder
the installer made but that now holds someone else's files is left in place and named.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .state import MODELS, Created, InstallState, remove_created


def _exists(entry: Created) -> bool:
    path = Path(entry.path)
    return path.exists() or path.is_symlink()


def uninstall(
    state: InstallState, purge_models: bool = False, dry_run: bool = False, out: Callable[[str], None] = print
) -> int:
    """Returns 0 when everything listed is gone (models aside), 1 when something could not be removed."""
    if not state.exists:
        out(f"Nothing to uninstall: there is no install record at {state.path}.")
        return 0
    last = {state.path, *state.path.parents}  # the record and its folders go last, if nothing is kept
    targets = [
        c
        for c in reversed(state.created)
        if Path(c.path) not in last and (purge_models or c.group != MODELS) and _exists(c)
    ]
    kept_models = [c for c in state.created if c.group == MODELS and not purge_models and _exists(c)]
    failed = 0
    for entry in targets:
        if dry_run:
            out(f"would remove {entry.path}")
            continue
        try:
            why = remove_created(entry)
        except OSError as exc:
            failed += 1
            out(f"could not remove {entry.path}: {exc} (is the backend server running? stop it, retry)")
            continue
        out(f"kept {entry.path}: {why}" if why else f"removed {entry.path}")
    for entry in kept_models:
        if entry.kind == "tree":
            out(f"kept the downloaded model {entry.path} (remove it with --uninstall --purge-models)")
    if dry_run:
        if not kept_models:
            for entry in reversed(state.created):
                if Path(entry.path) in last and _exists(entry):
                    out(f"would remove {entry.path}")
        return 0
    if kept_models or failed:
        state.created = [c for c in state.created if _exists(c)]
        state.steps.clear()
        state.save()
        return 1 if failed else 0
    for entry in reversed(state.created):
        if Path(entry.path) in last and _exists(entry):
            why = remove_created(entry)
            out(f"kept {entry.path}: {why}" if why else f"removed {entry.path}")
    return 0
