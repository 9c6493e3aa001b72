"""Batch scale-out on Ray (optional extra ``ray``): one actor per GPU, each holding one Engine.

Actors run :func:`backend.batch.run_item`. With ``files="shared"`` they read IN_DIR and write their
result into OUT_DIR themselves (storage every node sees); with ``files="send"`` the driver sends each
input's bytes and writes the encoded result the actor returns, so a cluster needs no shared storage.
Only the driver writes the manifest, so a batch started here resumes without Ray and the other way
round. Each actor has at most ``in_flight`` items queued (backpressure through ``ray.wait``); an actor
that dies hands its unfinished items back to the queue for another actor. Actors post their current
stage and step to a small board actor that the driver reads, so the progress bar shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch import BatchAborted, BatchItem, ItemProgress, ItemResult, run_item, write_output

if TYPE_CHECKING:
    from .engine import CancelToken

ROOT = Path(__file__).resolve().parents[1]
FILES = ("shared", "send")
REPORT_EVERY = 0.25  # seconds between an actor's step reports (a new stage is always reported)


class RayUnavailable(ImportError):
    """Ray is not installed; the message says how to add it."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("--ray needs Ray: pip install '.[ray]' (or pip install ray)") from exc
    return ray


class ProgressBoard:
    """Each actor's latest (item, stage, step, total); the driver takes them on every turn of its loop."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[str, str, int, int]] = {}

    def report(self, worker: str, relpath: str, stage: str, step: int, total: int) -> None:
        self.latest[worker] = (relpath, stage, step, total)

    def take(self) -> list[tuple[str, str, int, int]]:
        latest, self.latest = self.latest, {}
        return list(latest.values())


@dataclass(frozen=True)
class Sent:
    """An item's files as bytes, for an actor that cannot see IN_DIR (``files="send"``)."""

    item: BatchItem
    image: bytes
    mask: bytes | None = None


class BatchWorker:
    """The actor: one Engine (the model loaded once), items one after another."""

    def __init__(self, name: str, models_dir: str | None, device: str, dtype: str, board: Any = None) -> None:
        from .engine import Engine

        self.name = name
        self.engine = Engine(models_dir, device=device, dtype=dtype)
        self.board = board
        self._last: tuple[str, float] = ("", 0.0)

    def _progress(self, relpath: str, stage: str, step: int, total: int) -> None:
        """Post to the board without waiting; steps at most every REPORT_EVERY seconds."""
        if self.board is None:
            return
        now = time.monotonic()
        key = f"{relpath}\0{stage}"
        if key == self._last[0] and now - self._last[1] < REPORT_EVERY and step < total:
            return
        self._last = (key, now)
        self.board.report.remote(self.name, relpath, stage, step, total)

    def run(self, item: BatchItem) -> ItemResult:
        return run_item(self.engine, item, self._progress, worker=self.name)

    def run_sent(self, sent: Sent) -> tuple[ItemResult, bytes | None]:
        """Restore bytes sent by the driver; return the result file's bytes for the driver to write."""
        item = sent.item
        with tempfile.TemporaryDirectory(prefix="gdu-ray-") as temp:
            folder = Path(temp)
            source = folder / "in" / item.input.name
            source.parent.mkdir()
            source.write_bytes(sent.image)
            mask = None
            if sent.mask is not None and item.mask is not None:
                mask = folder / "mask" / item.mask.name
                mask.parent.mkdir()
                mask.write_bytes(sent.mask)
            local = dataclasses.replace(
                item, input=source, output=folder / "out" / item.output.name, mask=mask
            )
            result = run_item(self.engine, local, self._progress, worker=self.name)
            data = local.output.read_bytes() if result.state == "done" else None
        if result.state == "failed":  # name the user's files, not this temporary folder's
            reason = result.reason.replace(str(source), str(item.input))
            if mask is not None:
                reason = reason.replace(str(mask), str(item.mask))
            result = dataclasses.replace(result, reason=reason)
        return result, data

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Slot:
    name: str
    handle: Any
    in_flight: dict[Any, BatchItem] = field(default_factory=dict)  # object ref → item
    alive: bool = True


class RayRunner:
    """Distributes items to actors with backpressure and yields results as they finish."""

    def __init__(
        self,
        address: str | None = None,
        actors: int | None = None,
        gpus_per_actor: float = 1.0,
        models_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        in_flight: int = 2,
        init_options: dict[str, Any] | None = None,
        max_replacements: int | None = None,
        files: str | None = None,
    ) -> None:
        """``files``: "shared" (actors read and write the folders) or "send" (bytes go through Ray);
        the default is shared for a local Ray and send for a cluster ``address``."""
        if address:
            parse_address(address)  # a malformed address is bad usage, found before anything runs
        self.ray = _ray()
        self.address = address
        self.files = files or ("send" if address else "shared")
        if self.files not in FILES:
            raise ValueError(f"files must be one of {', '.join(FILES)}, not {self.files!r}")
        self.wanted = actors
        self.gpus_per_actor = gpus_per_actor
        self.models_dir = str(models_dir) if models_dir is not None else None
        self.device, self.dtype = device, dtype
        self.in_flight = max(1, in_flight)
        self.init_options = init_options or {}
        self.max_replacements = max_replacements
        self.slots: list[_Slot] = []
        self.board: Any = None
        self._started_ray = False
        self._actor_options: dict[str, Any] = {}
        self._replaced = 0

    # ------------------------------------------------------------------ actors
    def start(self) -> None:
        """Connect (or start a local Ray) and create the actors; each loads its model on first use."""
        ray = self.ray
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            if self.address:
                check_reachable(self.address)
                # A cluster's workers get this very backend package (same code → same pixels); they
                # need its dependencies installed (pip install gimp-diffusion-upscale[ray] on each node).
                options.setdefault("runtime_env", {"py_modules": [str(ROOT / "backend")]})
            else:  # local workers import this package like the driver does
                path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
                options.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": path}})
            try:
                ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                message = f"cannot start the batch on {where}: {exc}"
                if self.address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                    message += (
                        ". If the cluster uses token authentication (the default of `ray start`), set "
                        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to its token (`ray get-auth-token` on "
                        "the head shows it)"
                    )
                raise BatchAborted(message) from exc
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        cpus = max(1, int(resources.get("CPU", 1)))
        use_gpu = gpus > 0 and self.device not in ("cpu",)
        count = self.wanted or (max(1, int(gpus // self.gpus_per_actor)) if use_gpu else 1)
        self._actor_options = (
            {"num_gpus": self.gpus_per_actor, "num_cpus": 1}
            if use_gpu
            else {"num_cpus": max(1, cpus // count), "num_gpus": 0}
        )
        if self.max_replacements is None:
            self.max_replacements = count
        self.board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        self.slots = [self._new_slot(f"ray-{i}") for i in range(count)]

    def _new_slot(self, name: str) -> _Slot:
        actor = self.ray.remote(BatchWorker).options(**self._actor_options)
        return _Slot(name, actor.remote(name, self.models_dir, self.device, self.dtype, self.board))

    @property
    def actors(self) -> list[Any]:
        """The live actors' handles (e.g. for ``ray.kill`` in a test of worker loss)."""
        return [s.handle for s in self.slots if s.alive]

    # ------------------------------------------------------------------ runner
    def run(
        self, items: Sequence[BatchItem], progress: ItemProgress, cancel: CancelToken
    ) -> Iterator[ItemResult]:
        if not items:
            return
        if not self.slots:
            self.start()
        ray = self.ray
        queue: deque[BatchItem] = deque(items)
        owner: dict[Any, _Slot] = {}
        try:
            yield from self._loop(queue, owner, progress, cancel)
        finally:
            for ref in owner:  # stopped early: what the actors have not started is dropped
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def _loop(
        self, queue: deque[BatchItem], owner: dict[Any, _Slot], progress: ItemProgress, cancel: CancelToken
    ) -> Iterator[ItemResult]:
        from .engine import Canceled

        ray = self.ray
        while queue or owner:
            for slot in self.slots:
                while slot.alive and queue and len(slot.in_flight) < self.in_flight:
                    item = queue.popleft()
                    if self.files == "shared":
                        ref = slot.handle.run.remote(item)
                    else:
                        try:
                            sent = _send(item)
                        except OSError as exc:
                            reason = f"cannot read {exc.filename or item.input}: {exc.strerror or exc}"
                            yield ItemResult(item.relpath, "failed", reason, seed=item.seed)
                            continue
                        ref = slot.handle.run_sent.remote(sent)
                    slot.in_flight[ref] = item
                    owner[ref] = slot
                    progress(item.relpath, "queued", 0, 1)
            if cancel.canceled:
                raise Canceled("batch canceled")
            if not owner:
                continue
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=REPORT_EVERY)
            self._relay(owner, progress)
            for ref in ready:
                slot = owner.pop(ref)
                item = slot.in_flight.pop(ref)
                try:
                    returned = ray.get(ref)
                except ray.exceptions.RayActorError:
                    self._lost(slot, item, queue, owner)
                    continue
                except ray.exceptions.RayTaskError as exc:  # raised inside the actor
                    if isinstance(exc.cause, BatchAborted):  # e.g. a full disk: stop, as in process
                        raise exc.cause from None
                    reason = f"worker error: {type(exc.cause).__name__}: {exc.cause}"
                    yield ItemResult(item.relpath, "failed", reason, seed=item.seed, worker=slot.name)
                    continue
                yield returned if self.files == "shared" else _received(item, *returned)

    def _relay(self, owner: dict[Any, _Slot], progress: ItemProgress) -> None:
        """Pass the actors' latest stages on (only for items still running: a late report is stale)."""
        running = {slot.in_flight[ref].relpath for ref, slot in owner.items() if ref in slot.in_flight}
        try:
            reports = self.ray.get(self.board.take.remote(), timeout=10)
        except Exception:  # progress is a nicety; the batch goes on without it
            return
        for relpath, stage, step, total in reports:
            if relpath in running:
                progress(relpath, stage, step, total)

    def _lost(self, slot: _Slot, item: BatchItem, queue: deque[BatchItem], owner: dict[Any, _Slot]) -> None:
        """A dead actor: its items go back to the front of the queue, a replacement takes its place."""
        queue.appendleft(item)
        if not slot.alive:
            return
        slot.alive = False
        for ref, other in list(slot.in_flight.items()):
            queue.append(other)
            owner.pop(ref, None)
        slot.in_flight.clear()
        if self._replaced < (self.max_replacements or 0):
            self._replaced += 1
            self.slots.append(self._new_slot(f"{slot.name}-r{self._replaced}"))
        if not any(s.alive for s in self.slots):
            raise BatchAborted(
                "every Ray actor was lost; the manifest keeps what is done, run again to resume"
            )

    def close(self) -> None:
        """Stop the actors and wait until they are gone, so none still writes into OUT_DIR."""
        live = [s.handle for s in self.slots if s.alive]
        if self.board is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(self.board)
            self.board = None
        for handle in live:
            with contextlib.suppress(Exception):  # an actor already gone is fine
                self.ray.kill(handle)
        for handle in live:
            with contextlib.suppress(Exception):  # RayActorError once it is dead
                self.ray.get(handle.pid.remote(), timeout=30)
        self.slots = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False


def parse_address(address: str) -> tuple[str, int] | None:
    """HOST:PORT (or ray://HOST:PORT, [IPv6]:PORT) of a cluster; None for ``auto``, which Ray finds."""
    if address == "auto":
        return None
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--ray {address}: expected HOST:PORT (for example 10.0.0.5:6379) or ray://HOST:PORT"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with what to do, when nothing listens at a cluster address (Ray itself retries
    for minutes)."""
    where = parse_address(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout):
            pass
    except OSError as exc:
        raise BatchAborted(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start it there with "
            "`ray start --head --port PORT`, check the address and that the port is open to this machine"
        ) from exc


def _send(item: BatchItem) -> Sent:
    """Read an item's files for an actor on a node that cannot see them."""
    mask = item.mask.read_bytes() if item.mask is not None else None
    return Sent(item, item.input.read_bytes(), mask)


def _received(item: BatchItem, result: ItemResult, data: bytes | None) -> ItemResult:
    """Write the bytes an actor returned into OUT_DIR atomically; the result as the actor reported it."""
    from .image_io import ImageInputError, write_bytes

    if data is None:
        return result
    try:
        write_output(item, lambda: write_bytes(item.output, data))
    except (OSError, ImageInputError) as exc:
        reason = f"cannot write {item.output}: {getattr(exc, 'strerror', None) or exc}"
        return ItemResult(item.relpath, "failed", reason, seed=item.seed)
    return result
