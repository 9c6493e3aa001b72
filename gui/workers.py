"""Everything that talks to the backend runs here, in worker threads, and reports through signals.

A request can take seconds (an upload, a server that does not answer) and a run minutes; the UI
thread only starts workers and receives their signals, so the window never freezes. Every worker
checks a stop flag between requests, so closing the dialog never waits long for one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from backend.client import ApiError, Client, DownloadStatus, JobFailed, JobInfo, NotFound, RawImage


class Stopped(Exception):
    """Raised inside a worker when the dialog asked it to stop."""


class _Task(QRunnable):
    """A runnable with a stop flag; subclasses put their work in ``work``."""

    def __init__(self) -> None:
        super().__init__()
        self.setAutoDelete(False)  # Python owns it: Workers keeps a reference while it runs
        self.stop_event = threading.Event()
        self.on_end: Callable[[_Task], None] | None = None

    def run(self) -> None:
        try:
            self.work()
        finally:
            if self.on_end is not None:
                self.on_end(self)

    def work(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def check(self) -> None:
        if self.stop_event.is_set():
            raise Stopped


# --------------------------------------------------------------------------- one call
class CallSignals(QObject):
    done = Signal(object)
    failed = Signal(object)  # the exception


class Call(_Task):
    """One blocking function (a health check, the model list, starting a server)."""

    def __init__(self, fn: Callable[[Call], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.signals = CallSignals()

    def work(self) -> None:
        try:
            value = self.fn(self)
        except Exception as exc:
            if not self.stopping:
                self.signals.failed.emit(exc)
            return
        if not self.stopping:
            self.signals.done.emit(value)


# --------------------------------------------------------------------------- a restoration job
@dataclass
class Upload:
    """Pixels to send, and the id they have on the server once sent (sent once, reused after)."""

    key: str  # the dialog's name for them ("image", "mask", "crop 10,20,64,64", ...)
    pixels: RawImage
    id: str | None = None


@dataclass
class JobSpec:
    image: Upload
    mask: Upload | None
    params: dict[str, Any]
    model: str | None
    # Runs in the worker with the finished result before ``finished`` is sent (writing files
    # there keeps large results off the UI thread); it is skipped when a stop came first.
    deliver: Callable[[JobInfo, RawImage], None] | None = None


class JobSignals(QObject):
    stage = Signal(str)  # "upload", "submit", "fetch": client-side steps with no server progress
    uploaded = Signal(str, str)  # key, id
    submitted = Signal(str)  # job id
    progress = Signal(object)  # JobInfo
    preview = Signal(bytes)  # PNG of the current estimate
    finished = Signal(object, object)  # JobInfo, RawImage
    canceled = Signal(object)  # JobInfo, or None when stopped before the job existed
    failed = Signal(object)  # the exception (JobFailed carries the job)


class JobRun(_Task):
    """Upload (unless already there), submit, poll with live previews, fetch, deliver.

    Polling is also the heartbeat: the server cancels a job nobody asks about for a while, so a
    dialog that dies takes its job with it. A stop request cancels the job on the server.
    """

    def __init__(self, client: Client, spec: JobSpec, interval: float = 0.25) -> None:
        super().__init__()
        self.client = client
        self.spec = spec
        self.interval = interval
        self.signals = JobSignals()
        self.job_id: str | None = None

    def work(self) -> None:
        try:
            self._run()
        except Stopped:
            self.signals.canceled.emit(None)
        except Exception as exc:
            self.signals.failed.emit(exc)

    def _send(self, upload: Upload | None, again: bool = False) -> str | None:
        if upload is None:
            return None
        if upload.id is None or again:
            self.signals.stage.emit("upload")
            upload.id = self.client.upload(upload.pixels).id
            self.signals.uploaded.emit(upload.key, upload.id)
        self.check()
        return upload.id

    def _submit(self) -> JobInfo:
        spec = self.spec
        cached = spec.image.id is not None or (spec.mask is not None and spec.mask.id is not None)
        image_id, mask_id = self._send(spec.image), self._send(spec.mask)
        self.signals.stage.emit("submit")
        try:
            return self.client.submit(image_id or "", spec.params, mask_id, spec.model)
        except NotFound:
            if not cached:
                raise
            # The server forgot the uploads (restarted, or they expired): send them again, once.
            image_id, mask_id = self._send(spec.image, again=True), self._send(spec.mask, again=True)
            return self.client.submit(image_id or "", spec.params, mask_id, spec.model)

    def _run(self) -> None:
        job = self._submit()
        self.job_id = job.id
        self.signals.submitted.emit(job.id)
        shown: tuple[str, int] | None = None
        canceling = False
        while True:
            job = self.client.job(job.id)
            self.signals.progress.emit(job)
            if job.finished:
                break
            if self.stopping and not canceling:
                with contextlib.suppress(ApiError):  # it may have ended meanwhile
                    self.client.cancel(job.id)
                canceling = True
            if job.state == "running" and not canceling and (job.progress.stage, job.progress.step) != shown:
                shown = (job.progress.stage, job.progress.step)
                png = self.client.preview(job.id)
                if png:
                    self.signals.preview.emit(png)
            time.sleep(self.interval)
        if job.state == "failed":
            raise JobFailed(job)
        if job.state == "canceled" or self.stopping:
            self.signals.canceled.emit(job)
            return
        self.signals.stage.emit("fetch")
        result = self.client.result_image(job.id)
        if self.stopping:
            self.signals.canceled.emit(job)
            return
        if self.spec.deliver is not None:
            self.spec.deliver(job, result)
        self.signals.finished.emit(job, result)


# --------------------------------------------------------------------------- a model download
class DownloadSignals(QObject):
    progress = Signal(object)  # DownloadStatus
    finished = Signal(object)  # DownloadStatus (succeeded or failed)
    failed = Signal(object)  # the exception


class DownloadRun(_Task):
    """Start a model download on the server and follow it; the server keeps going if we stop."""

    def __init__(
        self, client: Client, model_id: str, interval: float = 0.5, accept_licence: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        self.client = client
        self.model_id = model_id
        self.interval = interval
        self.accept_licence = accept_licence  # terms the user accepted in the dialog
        self.signals = DownloadSignals()

    def work(self) -> None:
        try:
            status: DownloadStatus = self.client.start_download(self.model_id, self.accept_licence)
            while status.state == "running" and not self.stopping:
                self.signals.progress.emit(status)
                self.stop_event.wait(self.interval)
                status = self.client.download_status(self.model_id)
        except Exception as exc:
            if not self.stopping:
                self.signals.failed.emit(exc)
            return
        if not self.stopping:
            self.signals.finished.emit(status)


# --------------------------------------------------------------------------- the pool
class Workers(QObject):
    """The dialog's worker threads; keeps each task alive while it runs and stops them all at the end.

    A task's signals object is handed to this (UI-thread) object as its parent and deleted here, in
    the UI thread, once the task has ended: a QObject must not be deleted by another thread.
    """

    ended = Signal(object)  # a task, from its thread, queued to ours

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(6)
        self._tasks: set[_Task] = set()
        self.ended.connect(self._forget)

    def start(self, task: _Task) -> _Task:
        task.signals.setParent(self)  # type: ignore[attr-defined]
        task.on_end = self.ended.emit
        self._tasks.add(task)
        self.pool.start(task)
        return task

    def _forget(self, task: _Task) -> None:
        self._tasks.discard(task)
        task.signals.deleteLater()  # type: ignore[attr-defined]

    def call(
        self, fn: Callable[[Call], Any], done: Callable[[Any], None], failed: Callable[[Any], None]
    ) -> Call:
        call = Call(fn)
        call.signals.done.connect(done)
        call.signals.failed.connect(failed)
        self.start(call)
        return call

    def stop_all(self, wait_ms: int = 10000) -> bool:
        """Ask every task to stop and wait for them (each checks its flag between requests)."""
        for task in list(self._tasks):
            task.stop()
        return self.pool.waitForDone(wait_ms)
