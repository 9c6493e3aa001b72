"""Model downloads started over the API, one thread each, with progress read from the disk.

Progress is the size of what is under the model's folders (the hub client writes its partial
files there) against the registry's expected size, so it needs no hook into the hub client and
also counts files a resumed download already had.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ..models.registry import get_spec, with_requirements
from ..models.store import ModelDownloadError, download_model

log = logging.getLogger(__name__)


@dataclass
class Download:
    model: str
    state: str  # running | succeeded | failed
    bytes_total: int
    folders: tuple[Path, ...]
    error: str | None = None

    def bytes_done(self) -> int:
        if self.state == "succeeded":
            return self.bytes_total
        done = 0
        for folder in self.folders:
            if folder.is_dir():
                done += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        return min(done, self.bytes_total)


class Downloads:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._downloads: dict[str, Download] = {}
        self._lock = threading.Lock()

    def start(self, model_id: str) -> Download:
        """Start (or join) the download of a registry model; KeyError for an unknown id."""
        get_spec(model_id)
        specs = with_requirements(model_id)
        with self._lock:
            current = self._downloads.get(model_id)
            if current is not None and current.state == "running":
                return current
            download = Download(
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
            download_model(download.model, self.models_dir, progress=False)
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
