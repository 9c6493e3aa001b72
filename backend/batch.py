"""Whole folders through the engine: plan, a crash-safe manifest, one function per image, the driver loop.

The manifest (``OUT_DIR/.gdu-batch/manifest.jsonl``, one fsynced JSON line per finished image) is the
single source of truth: an output counts as done only when its line says so and the file still has the
recorded sha256. Outputs are written atomically *before* their line, so a kill anywhere costs at most a
redo of the image in flight, never a half-written file. Every runner (in this process, on a backend
server, on Ray actors) calls :func:`run_item` / :func:`run_item_on_server`; only the driver writes the
manifest, so a batch can be resumed with another runner.
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .pipelines.params import ParamsError, RestoreParams

if TYPE_CHECKING:
    from .client import Client
    from .engine import CancelToken, Engine

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".npy")
STATE_DIR = ".gdu-batch"
MANIFEST_NAME = "manifest.jsonl"
OPTIONS_NAME = "batch.json"
SEED_MASK = 2**31 - 1
EXISTING = ("replace", "keep")  # an output the manifest does not vouch for: redo it, or leave it alone
# Side-file columns that are not RestoreParams fields.
SIDE_KEYS = ("file", "mask")


class BatchError(ValueError):
    """The batch cannot start (bad folders, side file, changed options); the message says why."""


class BatchAborted(RuntimeError):
    """The batch cannot go on (every worker lost); the manifest keeps what is done."""


class OptionsChanged(BatchError):
    """A resume asked for other options than the batch was started with."""


def derive_seed(base: int, relpath: str) -> int:
    """One image's seed from the batch's and its relative path: the same however the batch is split."""
    digest = hashlib.sha256(f"{base}:{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & SEED_MASK


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BatchOptions:
    """What a batch does; everything but the runner, so a batch resumes with any runner."""

    in_dir: Path
    out_dir: Path
    params: RestoreParams = field(default_factory=RestoreParams)  # the base; the side file overrides
    model: str | None = None
    models_dir: Path | None = None
    recursive: bool = False
    masks_dir: Path | None = None
    side_file: Path | None = None
    seed: int | None = None  # the base seed; None: a random one, kept in batch.json for resumes
    existing: str = "replace"
    force_options: bool = False

    def fingerprint(self, seed: int) -> dict[str, Any]:
        """What must match for a resume: everything that changes an output's pixels or set of files."""
        params = self.params.to_dict()
        params.pop("seed", None)
        side = None
        if self.side_file is not None and self.side_file.is_file():
            side = {"path": str(self.side_file.resolve()), "sha256": file_sha256(self.side_file)}
        return {
            "version": 1,
            "in_dir": str(self.in_dir.resolve()),
            "recursive": self.recursive,
            "params": params,
            "model": self.model,
            "masks_dir": str(self.masks_dir.resolve()) if self.masks_dir else None,
            "side_file": side,
            "seed": seed,
        }


@dataclass(frozen=True)
class BatchItem:
    """One image: where it is, where its result goes, and exactly what is asked of it."""

    relpath: str  # POSIX, relative to IN_DIR: the manifest's key
    input: Path
    output: Path
    params: RestoreParams  # with the item's seed
    mask: Path | None = None
    model: str | None = None

    @property
    def seed(self) -> int:
        assert self.params.seed is not None
        return self.params.seed


@dataclass(frozen=True)
class ItemResult:
    """What became of one item; the manifest line is this, as JSON."""

    relpath: str
    state: str  # done, failed, skipped
    reason: str = ""
    seed: int | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    seconds: float = 0.0
    bytes: int = 0
    sha256: str = ""
    worker: str = ""
    faces: int = 0  # faces that were part of the foreground

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Plan:
    items: list[BatchItem]
    ignored: list[ItemResult]  # files that are not images: reported, never run
    seed: int


# ---------------------------------------------------------------------------------------------- plan
def _scan(in_dir: Path, recursive: bool, exclude: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Images and non-image files under ``in_dir``, sorted by relative path; hidden entries skipped."""
    images: list[Path] = []
    others: list[Path] = []
    excluded = {p.resolve() for p in exclude}
    for root, dirs, files in os.walk(in_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in excluded)
        if not recursive:
            dirs[:] = []
        for name in files:
            if name.startswith("."):
                continue
            path = here / name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    key = lambda p: p.relative_to(in_dir).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key)


def _convert(name: str, text: str) -> Any:
    """A CSV cell as the parameter's type: JSON for numbers, booleans and lists; text fields as they are."""
    kind = {f.name: str(f.type) for f in fields(RestoreParams)}.get(name, "")
    if kind.startswith("str") and "tuple" not in kind:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_side_file(path: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Per-image overrides: relative path → (fields, where they were written, for messages).

    CSV with a header ``file,prompt,...`` (empty cells leave the batch's value) or JSON
    ``{relpath: {param: value}}``; ``mask`` names a mask file relative to the side file.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BatchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    rows: dict[str, tuple[dict[str, Any], str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BatchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise BatchError(f"{path}: expected {{relative path: {{parameter: value}}}}")
        lines = text.splitlines()
        for rel, values in data.items():
            line = next((i + 1 for i, t in enumerate(lines) if json.dumps(rel) in t), 1)
            rows[rel.replace("\\", "/")] = (dict(values), f"{path}:{line}")
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "file" not in reader.fieldnames:
        raise BatchError(f"{path}:1: the CSV needs a header with a 'file' column (file,prompt,...)")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        rel = (row.get("file") or "").strip().replace("\\", "/")
        if not rel:
            raise BatchError(f"{where}: no file name")
        if None in row:
            raise BatchError(f"{where}: more cells than header columns")
        values = {k: _convert(k, v) for k, v in row.items() if k != "file" and v not in ("", None)}
        rows[rel] = (values, where)
    return rows


def _item_params(base: RestoreParams, values: dict[str, Any], where: str) -> RestoreParams:
    data = {**base.to_dict(), **{k: v for k, v in values.items() if k not in SIDE_KEYS}}
    try:
        return RestoreParams.from_dict(data)
    except (ParamsError, TypeError) as exc:
        raise BatchError(f"{where}: {exc}") from exc


def _find_mask(masks_dir: Path, relpath: str) -> Path | None:
    """MASK_DIR/<same relative path>, with any image suffix."""
    stem = Path(relpath).with_suffix("")
    for suffix in IMAGE_SUFFIXES:
        for candidate in (masks_dir / stem.with_suffix(suffix), masks_dir / stem.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def check_folders(options: BatchOptions) -> None:
    if not options.in_dir.is_dir():
        raise BatchError(f"{options.in_dir} is not a folder")
    if options.out_dir.resolve() == options.in_dir.resolve():
        raise BatchError("OUT_DIR is IN_DIR: the originals would be overwritten; choose another folder")
    if options.masks_dir is not None and not options.masks_dir.is_dir():
        raise BatchError(f"--masks {options.masks_dir} is not a folder")
    if options.existing not in EXISTING:
        raise BatchError(f"existing must be one of {', '.join(EXISTING)}")


def plan_batch(options: BatchOptions, seed: int | None = None) -> Plan:
    """Every image under IN_DIR (sorted, deterministic) with its output, mask, parameters and seed."""
    check_folders(options)
    base_seed = seed if seed is not None else options.seed
    if base_seed is None:
        base_seed = secrets.randbelow(SEED_MASK)
    try:
        options.params.validate()
    except ParamsError as exc:
        raise BatchError(str(exc)) from exc
    side = read_side_file(options.side_file) if options.side_file else {}
    exclude = [options.out_dir] + ([options.masks_dir] if options.masks_dir else [])
    images, others = _scan(options.in_dir, options.recursive, exclude)
    items: list[BatchItem] = []
    for path in images:
        rel = path.relative_to(options.in_dir).as_posix()
        values, where = side.get(rel, ({}, ""))
        params = _item_params(options.params, values, where or "parameters") if values else options.params
        if "seed" not in values:
            params = params.with_(seed=derive_seed(base_seed, rel))
        mask = None
        if "mask" in values and options.side_file is not None:
            mask = options.side_file.parent / str(values["mask"])
            if not mask.is_file():
                raise BatchError(f"{where}: mask {mask} does not exist")
        elif options.masks_dir is not None:
            mask = _find_mask(options.masks_dir, rel)
        items.append(BatchItem(rel, path, options.out_dir / rel, params, mask, options.model))
    unknown = sorted(set(side) - {i.relpath for i in items})
    if unknown:
        raise BatchError(f"{side[unknown[0]][1]}: no image {unknown[0]!r} under {options.in_dir}")
    ignored = [
        ItemResult(p.relative_to(options.in_dir).as_posix(), "skipped", "not an image file") for p in others
    ]
    return Plan(items, ignored, base_seed)


# ---------------------------------------------------------------------------------------------- manifest
class Manifest:
    """The batch's journal: one fsynced JSON line per result, plus the options it was started with."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / STATE_DIR
        self.path = self.dir / MANIFEST_NAME
        self.options_path = self.dir / OPTIONS_NAME
        self._fd: int | None = None

    def read_options(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.options_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise BatchError(f"cannot read {self.options_path}: {exc}") from exc

    def write_options(self, fingerprint: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        temp = self.options_path.with_suffix(".tmp")
        with temp.open("w", encoding="utf-8") as fh:
            json.dump(fingerprint, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self.options_path)

    def records(self) -> list[ItemResult]:
        """Every complete line; a torn last line (power loss mid-write) is ignored."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n"):
            try:
                out.append(ItemResult.from_json(json.loads(line)))
            except (ValueError, TypeError):
                continue
        return out

    def latest(self) -> dict[str, ItemResult]:
        return {r.relpath: r for r in self.records()}

    def append(self, result: ItemResult) -> None:
        """One line in one write, then fsync: a crash loses at most this line.

        A journal that cannot be written (disk full) stops the batch: going on would redo the work.
        """
        try:
            self._append(result)
        except OSError as exc:
            raise BatchAborted(
                f"cannot write the batch journal {self.path}: {exc.strerror or exc}; "
                "free some space, then run the same command again to resume"
            ) from exc

    def _append(self, result: ItemResult) -> None:
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if os.fstat(self._fd).st_size and not self._ends_with_newline():
                os.write(self._fd, b"\n")  # after a torn line, start afresh
        os.write(self._fd, json.dumps(result.to_json()).encode() + b"\n")
        os.fsync(self._fd)

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def is_done(self, item: BatchItem, record: ItemResult | None) -> bool:
        """Done only if the manifest says so and the output is still the file it wrote."""
        if record is None or record.state != "done" or not item.output.is_file():
            return False
        return item.output.stat().st_size == record.bytes and file_sha256(item.output) == record.sha256


# ---------------------------------------------------------------------------------------------- one image
ItemProgress = Callable[[str, str, int, int], None]  # relpath, stage, step, total


def _done(
    item: BatchItem, model: str, params: dict[str, Any], seconds: float, worker: str, faces: int = 0
) -> ItemResult:
    return ItemResult(
        item.relpath,
        "done",
        seed=item.seed,
        model=model,
        params=params,
        seconds=round(seconds, 4),
        bytes=item.output.stat().st_size,
        sha256=file_sha256(item.output),
        worker=worker,
        faces=faces,
    )


def run_item(
    engine: Engine,
    item: BatchItem,
    progress: ItemProgress | None = None,
    cancel: CancelToken | None = None,
    worker: str = "local",
) -> ItemResult:
    """Read, restore, write atomically; a bad input or run is a failed result, not an exception.

    Canceled and KeyboardInterrupt propagate (the batch stops; nothing is written for this item).
    """
    from .engine import EngineError
    from .image_io import ImageInputError, read_image, read_mask, write_image

    started = time.perf_counter()
    try:
        image = read_image(item.input)
        mask = read_mask(item.mask, image.shape[:2]) if item.mask is not None else None
        result = engine.restore(
            image,
            item.params,
            mask=mask,
            model=item.model,
            progress=(lambda s, i, n: progress(item.relpath, s, i, n)) if progress else None,
            cancel=cancel,
        )
        write_output(item, lambda: write_image(item.output, result.image))
    except (ImageInputError, EngineError, ParamsError, OSError) as exc:
        return ItemResult(item.relpath, "failed", _reason(exc), seed=item.seed, worker=worker)
    used = result.params.to_dict() if result.params else item.params.to_dict()
    return _done(item, result.model, used, time.perf_counter() - started, worker, len(result.faces))


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot write {exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    return str(exc)


def write_output(item: BatchItem, write: Callable[[], None]) -> None:
    """Write an item's result; a full disk stops the batch (every next image would fail the same way),
    any other write error fails this item only. The write itself is atomic, so nothing is half-written."""
    try:
        item.output.parent.mkdir(parents=True, exist_ok=True)
        write()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BatchAborted(
                f"the disk is full writing {item.output}; free some space, then run the same command "
                "again to resume (what is done is kept)"
            ) from exc
        if exc.filename is None:
            exc.filename = str(item.output)
        raise


def run_item_on_server(
    client: Client,
    item: BatchItem,
    progress: ItemProgress | None = None,
    cancel: CancelToken | None = None,
) -> ItemResult:
    """:func:`run_item` through the backend service (upload, submit, wait, fetch)."""
    import numpy as np

    from .client import ApiError, JobCanceled, JobFailed, RawImage
    from .engine import Canceled
    from .image_io import ImageInputError, read_image, read_mask, write_image

    def raw(array: np.ndarray) -> RawImage:
        array = np.ascontiguousarray(array if array.ndim == 3 else array[..., None])
        h, w, c = array.shape
        return RawImage(w, h, c, str(array.dtype), array.data)

    started = time.perf_counter()
    try:
        image = read_image(item.input)
        mask = read_mask(item.mask, image.shape[:2]) if item.mask is not None else None
        image_id = client.upload(raw(image)).id
        mask_id = client.upload(raw(mask)).id if mask is not None else None
        job = client.submit(image_id, item.params.to_dict(), mask=mask_id, model=item.model)
        job = client.wait(
            job.id,
            (lambda j: progress(item.relpath, j.progress.stage, j.progress.step, j.progress.total))
            if progress
            else None,
            (lambda: cancel.canceled) if cancel is not None else None,
            interval=0.1,
        )
        pixels = client.result_image(job.id)
        array = np.frombuffer(pixels.data, dtype=pixels.dtype).reshape(
            pixels.height, pixels.width, pixels.channels
        )
        write_output(item, lambda: write_image(item.output, array))
    except JobCanceled as exc:
        raise Canceled(str(exc)) from exc
    except (ImageInputError, JobFailed, ApiError, OSError) as exc:
        return ItemResult(item.relpath, "failed", _reason(exc), seed=item.seed, worker="server")
    info = job.result or {}
    seconds = time.perf_counter() - started
    faces = len(info.get("faces") or [])
    return _done(item, str(info.get("model", item.model)), item.params.to_dict(), seconds, "server", faces)


# ---------------------------------------------------------------------------------------------- runners
class Runner(Protocol):
    """Runs items somewhere and yields their results as they finish (any order)."""

    def run(
        self, items: Sequence[BatchItem], progress: ItemProgress, cancel: CancelToken
    ) -> Iterator[ItemResult]: ...

    def close(self) -> None: ...


class LocalRunner:
    """This process's engine, one image after another (the model stays loaded between images)."""

    def __init__(
        self,
        models_dir: Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        engine: Engine | None = None,
        **kw: Any,
    ) -> None:
        self.models_dir, self.device, self.dtype, self.kw = models_dir, device, dtype, kw
        self._engine = engine
        self._own = engine is None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from .engine import Engine

            self._engine = Engine(self.models_dir, device=self.device, dtype=self.dtype, **self.kw)
        return self._engine

    def run(
        self, items: Sequence[BatchItem], progress: ItemProgress, cancel: CancelToken
    ) -> Iterator[ItemResult]:
        for item in items:
            yield run_item(self.engine, item, progress, cancel)

    def close(self) -> None:
        if self._own:
            self._engine = None


class ServerRunner:
    """A backend server (``--server URL``), one image after another."""

    def __init__(self, url: str, token: str | None = None, **client_options: Any) -> None:
        from .client import Client

        self.client = Client(url, token=token, **client_options)

    def run(
        self, items: Sequence[BatchItem], progress: ItemProgress, cancel: CancelToken
    ) -> Iterator[ItemResult]:
        for item in items:
            yield run_item_on_server(self.client, item, progress, cancel)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class BatchProgress:
    done: int  # finished this run (done or failed)
    total: int  # to run this run
    current: str  # the item last heard of
    stage: str
    step: int
    steps: int
    eta: float | None  # seconds, from this run's finished items


@dataclass
class BatchSummary:
    done: list[ItemResult] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: list[ItemResult] = field(default_factory=list)
    skipped: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0
    interrupted: bool = False
    aborted: str = ""  # why the batch stopped early (a full disk), if it did
    pending: int = 0  # left to do when interrupted or aborted

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.failed or self.aborted else 0

    def table(self) -> str:
        """The end-of-run report: one line per count, then every failure and skip with its reason."""
        lines = [
            f"{'done':<22} {len(self.done)}",
            f"{'skipped (done before)':<22} {len(self.already_done)}",
            f"{'skipped':<22} {len(self.skipped)}",
            f"{'failed':<22} {len(self.failed)}",
        ]
        if self.interrupted:
            lines.append(f"{'not done (interrupted)':<22} {self.pending}")
        elif self.aborted:
            lines.append(f"{'not done (stopped)':<22} {self.pending}")
        lines.append(f"{'time':<22} {self.seconds:.1f} s (batch seed {self.seed})")
        for r in self.failed:
            lines.append(f"failed  {r.relpath}: {r.reason}")
        for r in self.skipped:
            lines.append(f"skipped {r.relpath}: {r.reason}")
        return "\n".join(lines)


def _start(options: BatchOptions, manifest: Manifest) -> int:
    """The batch seed, after checking a resume asks for what the batch was started with (the options
    are written only once the plan stands, so a fixed side file is not "other options")."""
    stored = manifest.read_options()
    seed = options.seed
    if stored is not None and seed is None:
        seed = stored.get("seed")
    if seed is None:
        seed = secrets.randbelow(SEED_MASK)
    fingerprint = options.fingerprint(seed)
    if stored is not None and stored != fingerprint and not options.force_options:
        changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        if "params" in changed:
            old, new = stored.get("params", {}), fingerprint["params"]
            changed = [c for c in changed if c != "params"]
            changed += [f"params.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        raise OptionsChanged(
            f"{options.out_dir} holds a batch started with other options ({', '.join(changed)}); "
            "resume with the same options, choose another OUT_DIR, or pass --force-options"
        )
    return seed


def pending_items(
    options: BatchOptions, plan: Plan, manifest: Manifest
) -> tuple[list[BatchItem], BatchSummary]:
    """The items still to run, and a summary holding those the manifest vouches for."""
    summary = BatchSummary(seed=plan.seed, skipped=list(plan.ignored))
    latest = manifest.latest()
    todo = []
    for item in plan.items:
        # image_io's temporary files of a write a kill interrupted: never a result, so removed
        if item.output.parent.is_dir():
            for temp in item.output.parent.glob(f".{glob.escape(item.output.name)}.*.tmp"):
                temp.unlink(missing_ok=True)
        record = latest.get(item.relpath)
        if manifest.is_done(item, record):
            summary.already_done.append(item.relpath)
        elif options.existing == "keep" and item.output.exists():
            skip = ItemResult(item.relpath, "skipped", "output exists (kept)", seed=item.seed)
            summary.skipped.append(skip)
        else:
            todo.append(item)
    return todo, summary


def run_batch(
    options: BatchOptions,
    runner: Runner,
    progress: Callable[[BatchProgress], None] | None = None,
    cancel: CancelToken | None = None,
) -> BatchSummary:
    """Plan, skip what the manifest vouches for, run the rest, record each result as it comes.

    Ctrl+C (KeyboardInterrupt) or ``cancel`` ends the run with the manifest whole; the summary says
    ``interrupted`` and the CLI exits 130. The runner stays open (its caller closes it), so a warm
    runner can serve several batches.
    """
    from .engine import Canceled, CancelToken

    started = time.perf_counter()
    cancel = cancel or CancelToken()
    check_folders(options)
    manifest = Manifest(options.out_dir)
    seed = _start(options, manifest)
    plan = plan_batch(options, seed)
    if manifest.read_options() != (fingerprint := options.fingerprint(seed)):
        manifest.write_options(fingerprint)
    todo, summary = pending_items(options, plan, manifest)
    for skip in summary.skipped:
        if skip.reason.startswith("output exists"):
            manifest.append(skip)
    finished = 0
    run_started = time.perf_counter()

    def report(rel: str, stage: str, step: int, total: int) -> None:
        if progress is None:
            return
        elapsed = time.perf_counter() - run_started
        eta = elapsed / finished * (len(todo) - finished) if finished else None
        progress(BatchProgress(finished, len(todo), rel, stage, step, total, eta))

    try:
        for result in runner.run(todo, report, cancel):
            manifest.append(result)
            finished += 1
            (summary.done if result.state == "done" else summary.failed).append(result)
            report(result.relpath, result.state, 1, 1)
    except (KeyboardInterrupt, Canceled):
        summary.interrupted = True
    except BatchAborted as exc:
        summary.aborted = str(exc)
    finally:
        manifest.close()
    summary.pending = len(todo) - finished
    summary.seconds = time.perf_counter() - started
    return summary
