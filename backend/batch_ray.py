"""Batch scale-out on Ray (optional extra ``ray``): one actor per GPU, each holding one Engine.

Actors run :func:`backend.batch.run_item` and write their result into OUT_DIR themselves (storage shared
with the driver); only the driver writes the manifest, so a batch started here resumes without Ray and
the other way round. Each actor has at most ``in_flight`` items queued (backpressure through
``ray.wait``); an actor that dies hands its unfinished items back to the queue for another actor.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch import BatchAborted, BatchItem, ItemProgress, ItemResult, run_item

if TYPE_CHECKING:
    from .engine import CancelToken

ROOT = Path(__file__).resolve().parents[1]


class RayUnavailable(ImportError):
    """Ray is not installed; the message says how to add it."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("--ray needs Ray: pip install '.[ray]' (or pip install ray)") from exc
    return ray


class BatchWorker:
    """The actor: one Engine (the model loaded once), items one after another."""

    def __init__(self, name: str, models_dir: str | None, device: str, dtype: str) -> None:
        from .engine import Engine

        self.name = name
        self.engine = Engine(models_dir, device=device, dtype=dtype)

    def run(self, item: BatchItem) -> ItemResult:
        return run_item(self.engine, item, worker=self.name)

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
    ) -> None:
        self.ray = _ray()
        self.address = address
        self.wanted = actors
        self.gpus_per_actor = gpus_per_actor
        self.models_dir = str(models_dir) if models_dir is not None else None
        self.device, self.dtype = device, dtype
        self.in_flight = max(1, in_flight)
        self.init_options = init_options or {}
        self.max_replacements = max_replacements
        self.slots: list[_Slot] = []
        self._started_ray = False
        self._actor_options: dict[str, Any] = {}
        self._replaced = 0

    # ------------------------------------------------------------------ actors
    def start(self) -> None:
        """Connect (or start a local Ray) and create the actors; each loads its model on first use."""
        ray = self.ray
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            # Local workers must import this package like the driver does.
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
            options.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": path}})
            ray.init(address=self.address, **options)
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
        self.slots = [self._new_slot(f"ray-{i}") for i in range(count)]

    def _new_slot(self, name: str) -> _Slot:
        actor = self.ray.remote(BatchWorker).options(**self._actor_options)
        return _Slot(name, actor.remote(name, self.models_dir, self.device, self.dtype))

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
                    ref = slot.handle.run.remote(item)
                    slot.in_flight[ref] = item
                    owner[ref] = slot
                    progress(item.relpath, "queued", 0, 1)
            if cancel.canceled:
                raise Canceled("batch canceled")
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=0.5)
            for ref in ready:
                slot = owner.pop(ref)
                item = slot.in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError:
                    self._lost(slot, item, queue, owner)
                    continue
                yield result

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
