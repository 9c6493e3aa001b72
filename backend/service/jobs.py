"""The job queue: one worker runs jobs in order, a watchdog cancels abandoned ones, results on disk.

A job's record (``job.json``) and its result (``result.npy``) live in one folder per job under the
server's data folder and are written atomically, so a finished result survives a restart of the
server and is kept until it expires. A job that nobody polls for ``abandon_after`` seconds is
canceled unless it was submitted as detached: GIMP kills a plug-in outright when its user cancels,
and nothing else would ever tell the server.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from .. import image_ops
from ..engine import Canceled, CancelToken, EngineError, RestoreResult
from ..image_io import ImageInputError, mask_from_pixels, write_image
from ..models.loading import ModelLoadError
from ..pipelines.params import RestoreParams
from ..pipelines.prescale import PrescalerError
from .images import ImageStore
from .speed import SpeedBook, work_units

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "canceled")
# Share of the whole job each engine stage stands for, in order; progress fractions come from these.
STAGE_SPANS = {
    "load": (0.0, 0.05),
    "prescale": (0.05, 0.08),
    "describe": (0.08, 0.10),
    "encode": (0.10, 0.20),
    "denoise": (0.20, 0.85),
    "decode": (0.85, 0.97),
    "finish": (0.97, 1.0),
    "done": (1.0, 1.0),
}
PREVIEW_SIDE = 256


class RestoreEngine(Protocol):
    def restore(self, image: np.ndarray, params: RestoreParams, **kwargs: Any) -> RestoreResult: ...


class QueueFull(RuntimeError):
    pass


class StorageFull(RuntimeError):
    """The server's disk (or quota) is full: answered as 507 with a plain sentence."""


def is_disk_full(exc: BaseException | None) -> bool:
    """True for ENOSPC / EDQUOT, also when wrapped (e.g. ImageInputError from a failed write)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


LOW_DISK = 512 * 2**20  # bytes free below which the server warns (start-up, health)


def free_space(folder: Path) -> int | None:
    """Bytes free on the disk that holds (or will hold) ``folder``; None when unknown."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def low_disk_warning(folder: Path) -> str | None:
    """A sentence when ``folder``'s disk is nearly full, before uploads and results start failing."""
    free = free_space(folder)
    if free is None or free >= LOW_DISK:
        return None
    return (
        f"Only {free / 2**20:.0f} MiB are free on the disk of {folder}; uploads and results fail while "
        "the disk is full. Free some space there."
    )


def disk_full_message(folder: Path) -> str:
    free = free_space(folder)
    left = f" ({free / 2**20:.0f} MiB left)" if free is not None else ""
    return (
        f"The server's disk is full{left}: nothing could be saved in {folder}. Free some space there "
        "(or delete finished jobs), then try again."
    )


def foreground_at(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A float H×W mask as 8-bit grey at ``image``'s size (upscaled results get an upscaled mask)."""
    height, width = image.shape[:2]
    m = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None]
    if m.shape[-2:] != (height, width):
        m = image_ops.resize(m, (height, width), kind="mask")
    return np.clip(m[0, 0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)


class UnknownJob(KeyError):
    pass


@dataclass
class Job:
    id: str
    image: str
    mask: str | None
    model: str | None
    params: dict[str, Any]
    detached: bool
    created: float
    state: str = "queued"
    stage: str = "queued"
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None
    cancel_requested: bool = False
    error: str | None = None
    result: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    fetched: float | None = None
    # Not persisted:
    last_seen: float = field(default_factory=time.monotonic, repr=False)
    token: CancelToken = field(default_factory=CancelToken, repr=False)
    preview_png: bytes | None = field(default=None, repr=False)
    _eta_origin: tuple[float, float] | None = field(default=None, repr=False)

    PERSISTED: ClassVar[tuple[str, ...]] = (
        *("id", "image", "mask", "model", "params", "detached", "created", "state", "stage", "step"),
        *("total", "fraction", "eta_seconds", "cancel_requested", "error", "result", "started"),
        *("finished", "fetched"),
    )

    def record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.PERSISTED}

    @property
    def task(self) -> str:
        return str(self.params.get("task", "upscale"))


class JobQueue:
    def __init__(
        self,
        engine: RestoreEngine,
        images: ImageStore,
        root: Path,
        queue_size: int,
        abandon_after: float,
        result_ttl: float,
        fetched_ttl: float,
        speed: SpeedBook | None = None,
    ) -> None:
        self.engine = engine
        self.images = images
        self.speed = speed  # learns this machine's speed from finished runs (the estimates)
        self.root = root
        self.queue_size = queue_size
        self.abandon_after = abandon_after
        self.result_ttl = result_ttl
        self.fetched_ttl = fetched_ttl
        try:  # on a full disk the server still starts, and says so in its health
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s: %s", self.root, exc)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._load()
        self._threads = [
            threading.Thread(target=self._work, name="job-worker", daemon=True),
            threading.Thread(target=self._watch, name="job-watchdog", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what runs, and wait for the worker to notice, so no half-written result stays."""
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.token.cancel()
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    # ------------------------------------------------------------------ persistence
    def _folder(self, job_id: str) -> Path:
        return self.root / job_id

    def _persist(self, job: Job) -> None:
        """Write ``job.json`` atomically; on failure nothing half-written stays and OSError is raised."""
        folder = self._folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".job-{secrets.token_hex(4)}.json"
        try:
            tmp.write_text(json.dumps(job.record()))
            os.replace(tmp, folder / "job.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _try_persist(self, job: Job) -> bool:
        """Persist where failure must not stop the caller (the worker, the watchdog, start-up)."""
        try:
            self._persist(job)
        except OSError as exc:
            log.warning("job %s: could not save its record (%s); it is kept in memory", job.id, exc)
            return False
        return True

    def _load(self) -> None:
        """Take back the records of an earlier run; jobs it left unfinished are marked failed."""
        for record in sorted(self.root.glob("*/job.json")):
            try:
                data = json.loads(record.read_text())
                job = Job(**{k: data[k] for k in Job.PERSISTED})
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable job record %s", record)
                shutil.rmtree(record.parent, ignore_errors=True)
                continue
            if job.state not in FINISHED:
                job.state = "failed"
                job.error = "The server stopped before this job finished; submit it again."
                job.finished = time.time()
                self._try_persist(job)
            if job.state == "succeeded" and not (record.parent / "result.npy").is_file():
                job.state = "failed"
                job.error = "The result file of this job is missing on the server; submit it again."
                self._try_persist(job)
            self._jobs[job.id] = job
        if self._jobs:
            log.info("took back %d finished jobs from %s", len(self._jobs), self.root)
        self._sweep_leftovers(max_age=0.0)

    def _sweep_leftovers(self, max_age: float) -> None:
        """Remove what failed writes and crashes leave: job folders without a known job, temp files.

        ``max_age`` (seconds of mtime) spares files a write may still be working on; the running
        job's folder is always spared.
        """
        now = time.time()
        with self._cond:
            known = set(self._jobs)
            running = self._running.id if self._running is not None else None
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for entry in entries:
            try:
                old = now - entry.stat().st_mtime >= max_age
                if entry.name == running:
                    continue
                if entry.is_dir() and entry.name not in known:
                    if old:
                        shutil.rmtree(entry, ignore_errors=True)
                        log.info("removed the leftover job folder %s", entry.name)
                    continue
                if entry.is_dir():
                    for tmp in entry.iterdir():
                        if tmp.name.startswith(".") and now - tmp.stat().st_mtime >= max_age:
                            tmp.unlink(missing_ok=True)
                elif entry.name.startswith(".") and old:
                    entry.unlink(missing_ok=True)
            except OSError:
                continue

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        image: str,
        mask: str | None,
        model: str | None,
        params: RestoreParams,
        detached: bool,
    ) -> Job:
        job = Job(
            id=secrets.token_hex(12),
            image=image,
            mask=mask,
            model=model,
            params=params.to_dict(),
            detached=detached,
            created=time.time(),
        )
        with self._cond:
            if self._stopping:
                raise QueueFull("The server is shutting down.")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(
                    f"The queue is full ({len(self._queue)} jobs waiting besides the running one); "
                    "try again when a job has finished."
                )
            try:
                self._persist(job)
            except OSError as exc:
                shutil.rmtree(self._folder(job.id), ignore_errors=True)
                if is_disk_full(exc):
                    raise StorageFull(disk_full_message(self.root)) from None
                raise
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify_all()
        log.info("job %s queued: %s of image %s", job.id, job.task, image)
        return job

    def get(self, job_id: str, heartbeat: bool = True) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(
                    f"No job with id {job_id!r}: it never existed or has expired (results are kept "
                    f"{self.result_ttl / 3600:g} hours, or {self.fetched_ttl / 60:g} minutes after they are "
                    "fetched)."
                )
            if heartbeat:
                job.last_seen = time.monotonic()
            return job

    def jobs(self) -> list[Job]:
        with self._cond:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def position(self, job: Job) -> int | None:
        with self._cond:
            for index, queued in enumerate(self._queue):
                if queued is job:
                    return index + 1
        return None

    def counts(self) -> tuple[int, int]:
        with self._cond:
            return len(self._queue), int(self._running is not None)

    def images_in_use(self) -> set[str]:
        with self._cond:
            busy = [*self._queue, *([self._running] if self._running else [])]
            return {i for job in busy for i in (job.image, job.mask) if i}

    def cancel(self, job_id: str, reason: str = "canceled by the client") -> Job:
        with self._cond:
            job = self.get(job_id)
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, "canceled", reason)
            elif job.state == "running" and not job.cancel_requested:
                job.cancel_requested = True
                job.error = reason
                job.token.cancel()
                log.info("job %s: cancel requested (%s)", job.id, reason)
            return job

    def delete(self, job_id: str) -> None:
        """Cancel if needed and forget the job and its result."""
        job = self.cancel(job_id)
        with self._cond:
            self._jobs.pop(job.id, None)
            if job.state == "running":
                return  # the worker removes its folder once the engine has stopped
        shutil.rmtree(self._folder(job.id), ignore_errors=True)

    def result_path(self, job_id: str, fmt: str) -> Path:
        """The finished result in ``fmt`` (npy, png, tiff), converted once and kept beside the npy."""
        job = self.get(job_id)
        if job.state != "succeeded":
            raise ValueError(
                f"Job {job_id} has no result: it is {job.state}"
                + (f" ({job.error})" if job.error else "")
                + "."
            )
        source = self._folder(job.id) / "result.npy"
        if fmt == "npy":
            return source
        target = self._folder(job.id) / f"result.{fmt}"
        if not target.is_file():
            write_image(target, np.load(source, allow_pickle=False))
        return target

    def foreground_path(self, job_id: str, fmt: str) -> Path:
        """The job's foreground mask (faces, with the user's mask) as 8-bit grey at the result's size."""
        self.result_path(job_id, "npy")  # the same errors as the result: not finished, failed, ...
        source = self._folder(job_id) / "foreground.npy"
        if not source.is_file():
            raise ValueError(f"Job {job_id} has no foreground mask: no faces were part of its foreground.")
        if fmt == "npy":
            return source
        target = self._folder(job_id) / f"foreground.{fmt}"
        if not target.is_file():
            write_image(target, np.load(source, allow_pickle=False))
        return target

    def mark_fetched(self, job_id: str) -> None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None and job.fetched is None:
                job.fetched = time.time()
                self._try_persist(job)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        """The worker loop; nothing a job does (or a full disk) may end it."""
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state = "running"
                job.stage = "load"
                job.started = time.time()
                self._running = job
                self._try_persist(job)
            try:
                self._run(job)
            except Exception:  # a bug in the error handling itself: fail the job, keep working
                log.exception("job %s: unexpected error in the worker", job.id)
                with self._cond:
                    if job.state not in FINISHED:
                        self._finish(job, "failed", "Internal error in the job worker; see the server log.")
            finally:
                with self._cond:
                    self._running = None
                    if job.id not in self._jobs:  # deleted while running
                        shutil.rmtree(self._folder(job.id), ignore_errors=True)

    def _run(self, job: Job) -> None:
        log.info("job %s running", job.id)
        try:
            params = RestoreParams.from_dict(job.params)
            image = self.images.load(job.image)
            mask = mask_from_pixels(self.images.load(job.mask)) if job.mask else None
            result = self.engine.restore(
                image,
                params,
                mask=mask,
                model=job.model,
                progress=lambda stage, step, total: self._progress(job, stage, step, total),
                cancel=job.token,
                preview=lambda pixels: self._preview(job, pixels),
            )
            if job.token.canceled:
                raise Canceled("canceled")
            folder = self._folder(job.id)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_image(folder / "result.npy", result.image)
                if result.foreground is not None:  # the soft foreground with faces, at the result's size
                    write_image(folder / "foreground.npy", foreground_at(result.foreground, result.image))
            except (OSError, ImageInputError) as exc:
                if is_disk_full(exc):
                    raise StorageFull(disk_full_message(self.root)) from None
                raise
            height, width = result.image.shape[:2]
            channels = result.image.shape[2] if result.image.ndim == 3 else 1
            info = {
                "width": width,
                "height": height,
                "channels": channels,
                "dtype": str(result.image.dtype),
                "seed": result.seed,
                "prompt": result.prompt,
                "negative_prompt": result.negative_prompt,
                "model": result.model,
                "seconds": round(result.seconds, 3),
                "notes": list(result.notes),
                "faces": [face.to_dict() for face in result.faces],
            }
            with self._cond:
                job.result = info
                began = job._eta_origin[0] if job._eta_origin is not None else None
                self._finish(job, "succeeded", None)
            if self.speed is not None:  # loading the model aside: that happens once
                seconds = time.monotonic() - began if began is not None else result.seconds
                used = result.params or params
                work = work_units(int(used.steps or 0), result.plan.process_size, float(used.guidance or 0))
                self.speed.record(result.model, work, seconds)
            log.info("job %s succeeded in %.1f s", job.id, result.seconds)
        except Canceled:
            with self._cond:
                self._finish(job, "canceled", job.error or "canceled")
            log.info("job %s canceled: %s", job.id, job.error)
        except StorageFull as exc:
            with self._cond:
                self._finish(job, "failed", str(exc))
            log.warning("job %s failed: %s", job.id, exc)
        except (EngineError, ModelLoadError, ImageInputError, PrescalerError, KeyError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            with self._cond:
                self._finish(job, "failed", str(message))
            log.info("job %s failed: %s", job.id, message)
        except Exception as exc:  # anything else is our bug: the job fails, the server keeps serving
            log.exception("job %s failed with an internal error", job.id)
            with self._cond:
                self._finish(
                    job, "failed", f"Internal error ({type(exc).__name__}: {exc}); see the server log."
                )

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        job.state = state
        job.error = error
        job.finished = time.time()
        job.eta_seconds = 0.0 if state == "succeeded" else None
        if state == "succeeded":
            job.fraction = 1.0
            job.stage = "done"
        self._try_persist(job)
        self._cond.notify_all()

    def _progress(self, job: Job, stage: str, step: int, total: int) -> None:
        start, end = STAGE_SPANS.get(stage, (job.fraction, job.fraction))
        fraction = start + (end - start) * (step / total if total else 1.0)
        now = time.monotonic()
        with self._cond:
            job.stage, job.step, job.total = stage, step, total
            job.fraction = max(job.fraction, min(fraction, 1.0))
            if stage != "load" and job._eta_origin is None:
                job._eta_origin = (now, job.fraction)
            if job._eta_origin is not None:
                t0, f0 = job._eta_origin
                done = job.fraction - f0
                if done > 0.02 and now - t0 > 0.2:
                    job.eta_seconds = round((now - t0) * (1.0 - job.fraction) / done, 1)

    def _preview(self, job: Job, pixels: np.ndarray) -> None:
        from PIL import Image

        image = Image.fromarray(pixels)
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        job.preview_png = buffer.getvalue()

    # ------------------------------------------------------------------ watchdog
    def _watch(self) -> None:
        """The watchdog loop; an error in one round is logged and the next round runs."""
        last_expiry = 0.0
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, timeout=0.5):
                    return
            try:
                last_expiry = self._watch_once(last_expiry)
            except Exception:
                log.exception("watchdog round failed; trying again")

    def _watch_once(self, last_expiry: float) -> float:
        now = time.monotonic()
        for job in self.jobs():
            if job.state in ("queued", "running") and not job.detached and not job.cancel_requested:
                silent = now - job.last_seen
                if silent > self.abandon_after:
                    with contextlib.suppress(UnknownJob):
                        self.cancel(job.id, f"abandoned: no client asked about it for {silent:.0f} seconds")
        if now - last_expiry > min(30.0, self.result_ttl / 4, self.images.ttl / 4):
            last_expiry = now
            self.expire(time.time())
        return last_expiry

    def expire(self, now: float) -> None:
        """Forget finished jobs past their time, and uploads nobody has used for a while."""
        for job in self.jobs():
            if job.state not in FINISHED or job.finished is None:
                continue
            if (job.fetched is not None and now - job.fetched > self.fetched_ttl) or (
                now - job.finished > self.result_ttl
            ):
                with self._cond:
                    self._jobs.pop(job.id, None)
                shutil.rmtree(self._folder(job.id), ignore_errors=True)
                log.info("job %s expired", job.id)
        self._sweep_leftovers(max_age=600.0)
        self.images.expire(now, self.images_in_use())

    def problems(self) -> list[str]:
        """What stops this queue from working, for the health check (empty when all is well)."""
        names = {"job-worker": "the job worker", "job-watchdog": "the job watchdog"}
        return [
            f"{names[t.name]} is not running; restart the server"
            for t in self._threads
            if t.ident is not None and not t.is_alive() and not self._stopping
        ]
