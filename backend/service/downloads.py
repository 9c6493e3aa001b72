"""Model downloads started over the API, one thread each, with progress read from the disk.

Progress is the size of what is under the model's folders (the hub client writes its partial
files there) against the registry's expected size, so it needs no hook into the hub client and
also counts files a resumed download already had.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..models.registry import get_spec, with_requirements
from ..models.store import LicenceNotAccepted, ModelDownloadError, download_model

log = logging.getLogger(__name__)


@dataclass
class Download:
    model: str
    state: str  # running | succeeded | failed
    bytes_total: int
    folders: tuple[Path, ...]
    error: str | None = None
    accepted: tuple[str, ...] = ()  # licence terms the user accepted for it

    def bytes_done(self) -> int:
        if self.state == "succeeded":
            return self.bytes_total
        return min(sum(_bytes_under(folder) for folder in self.folders), self.bytes_total)


def _bytes_under(folder: Path) -> int:
    """Bytes of the files under ``folder`` while a download writes there: its temporary files come
    and go (renamed into place, removed), so one that vanishes mid-walk simply does not count."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
    return total


class Downloads:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._downloads: dict[str, Download] = {}
        self._lock = threading.Lock()

    def start(self, model_id: str, accepted: tuple[str, ...] = ()) -> Download:
        """Start (or join) the download of a registry model; KeyError for an unknown id,
        LicenceNotAccepted (before anything starts) when its terms are not in ``accepted``."""
        get_spec(model_id)
        specs = with_requirements(model_id)
        for spec in specs:
            if spec.terms and spec.terms not in accepted:
                raise LicenceNotAccepted(spec)
        with self._lock:
            current = self._downloads.get(model_id)
            if current is not None and current.state == "running":
                return current
            download = Download(
                accepted=accepted,
                model=model_id,
                state="running",
                bytes_total=sum(s.size_bytes for s in specs),
                folders=tuple(self.models_dir / s.id for s in specs),
            )
            self._downloads[model_id] = download
        threading.Thread(target=self._run, args=(download,), name=f"download-{model_id}", daemon=True).start()
        return download

    def get(self, model_id: str) -> Download:
        with self._lock:
            return self._downloads[model_id]

    def _run(self, download: Download) -> None:
        log.info("downloading %s into %s", download.model, self.models_dir)
        try:
            download_model(download.model, self.models_dir, progress=False, accepted=download.accepted)
        except ModelDownloadError as exc:
            download.error = str(exc)
            download.state = "failed"
            log.warning("download of %s failed: %s", download.model, exc)
        except Exception as exc:
            download.error = f"{type(exc).__name__}: {exc}"
            download.state = "failed"
            log.exception("download of %s failed", download.model)
        else:
            download.state = "succeeded"
            log.info("download of %s finished", download.model)
