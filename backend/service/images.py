"""Uploaded images on disk, referred to by id, so a preview and the final run upload only once.

Each upload is checked completely when it arrives (from its header first: megapixels, layout and
the decode budget, so a decompression bomb is refused before any pixel is decoded; then a full
decode), and kept as a normalised ``pixels.npy`` that later jobs load without decoding again. A
``.npy`` upload of 8- or 16-bit pixels in the right layout is kept as it is: no decode, no copy.

An upload is received into a hidden ``.upload-*`` file and ingested in a hidden ``.ingest-<id>``
folder that becomes the visible ``<id>`` folder in one rename once ``pixels.npy`` and ``meta.json``
are complete, so the expiry sweep never sees half an image, and it leaves alone every hidden file or
folder this process is still working in.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..image_io import (
    DecodeBudget,
    DecodeBudgetError,
    ImageHeader,
    ImageInputError,
    probe_image,
    read_image,
    write_image,
)
from .config import ServerConfig

log = logging.getLogger(__name__)

# Declared content type → the format the bytes must have (sniffed, not trusted).
CONTENT_TYPES = {
    "image/png": "PNG",
    "image/tiff": "TIFF",
    "image/jpeg": "JPEG",
    "image/webp": "WebP",
    "application/x-npy": "NPY",
    "application/octet-stream": None,  # any supported format
}

# Hidden work in the store's folder: an upload being received, an image being ingested.
_UPLOAD_PREFIX = ".upload-"
_INGEST_PREFIX = ".ingest-"
# Hidden work this old that this process is not doing is a crash's leftover and is deleted.
STALE_WORK_AFTER = 3600.0


class UploadError(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UnknownImage(KeyError):
    pass


@dataclass(frozen=True)
class StoredImage:
    id: str
    height: int
    width: int
    channels: int
    dtype: str
    bytes: int
    created: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class ImageStore:
    def __init__(
        self,
        root: Path,
        max_pixels: int,
        max_bytes: int,
        ttl: float,
        *,
        max_image_bytes: int = ServerConfig.max_image_bytes,
        max_compression_ratio: float = ServerConfig.max_compression_ratio,
    ) -> None:
        self.root = root
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes  # of an upload's body
        self.ttl = ttl
        # Of what an upload decodes to, and so of what it may become on disk.
        self.budget = DecodeBudget(max_image_bytes, max_compression_ratio)
        try:  # on a full disk the server still starts; uploads then answer 507
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s: %s", self.root, exc)
        self._lock = threading.Lock()
        self._last_used: dict[str, float] = {}
        self._busy: set[str] = set()  # hidden files and folders this process is still writing

    # ------------------------------------------------------------------ upload
    async def receive(self, chunks: AsyncIterator[bytes], content_type: str) -> Path:
        """Stream a body to a temporary file, refusing types and sizes the store does not take.

        The file stays marked as in use until :meth:`ingest` has consumed it.
        """
        declared = content_type.split(";")[0].strip().lower()
        if declared not in CONTENT_TYPES:
            raise UploadError(
                415,
                f"Content type {declared or '(none)'!r} is not an image type this server takes; send "
                f"one of {', '.join(CONTENT_TYPES)}.",
            )
        tmp = self.root / f"{_UPLOAD_PREFIX}{secrets.token_hex(8)}"
        self._work_started(tmp.name)
        size = 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadError(413, self._too_many_bytes())
                    fh.write(chunk)
            if size == 0:
                raise UploadError(
                    400, "The upload is empty (0 bytes); send the image file's bytes as the body."
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._work_done(tmp.name)
            raise
        return tmp

    def _too_many_bytes(self) -> str:
        return f"The upload is larger than this server's limit of {self.max_bytes / 2**20:.0f} MiB."

    def ingest(self, tmp: Path, content_type: str) -> StoredImage:
        """Check and store a received file (blocking: call it from a worker thread)."""
        try:
            return self._ingest(tmp, content_type.split(";")[0].strip().lower())
        finally:
            tmp.unlink(missing_ok=True)
            self._work_done(tmp.name)

    def _ingest(self, tmp: Path, declared: str) -> StoredImage:
        header = self._check_header(tmp, declared)
        image_id = secrets.token_hex(12)
        work = self.root / f"{_INGEST_PREFIX}{image_id}"
        self._work_started(work.name)
        try:
            work.mkdir()
            if not self._adopt_npy(tmp, header.kind, work / "pixels.npy"):
                self._decode(tmp, work / "pixels.npy")
            array = np.load(work / "pixels.npy", mmap_mode="r", allow_pickle=False)
            height, width, channels = array.shape
            stored = StoredImage(
                id=image_id,
                height=height,
                width=width,
                channels=channels,
                dtype=str(array.dtype),
                bytes=(work / "pixels.npy").stat().st_size,
                created=time.time(),
            )
            del array
            (work / "meta.json").write_text(json.dumps(stored.to_json()))
            self.touch(image_id)  # before it is visible, so the sweep sees a fresh last use
            os.rename(work, self.root / image_id)  # atomic: the image appears complete or not at all
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            with self._lock:
                self._last_used.pop(image_id, None)
            raise
        finally:
            self._work_done(work.name)
        log.info("stored image %s: %dx%dx%d %s", image_id, width, height, channels, stored.dtype)
        return stored

    def _check_header(self, tmp: Path, declared: str) -> ImageHeader:
        """Everything that can be refused from the header, before any pixel is decoded."""
        try:
            header = probe_image(tmp)
        except ImageInputError as exc:
            raise UploadError(422, _strip_path(str(exc), tmp)) from None
        expected = CONTENT_TYPES[declared]
        if expected is not None and header.kind != expected:
            raise UploadError(415, f"The body was declared as {declared} but holds a {header.kind} image.")
        pixels = header.height * header.width
        if pixels == 0:
            raise UploadError(422, f"The image has no pixels ({header.width}×{header.height}).")
        if pixels > self.max_pixels:
            raise UploadError(
                413,
                f"The image is {header.width}×{header.height} ({pixels / 1e6:.1f} megapixels); this server "
                f"takes at most {self.max_pixels / 1e6:.1f} megapixels per image.",
            )
        # For every format, .npy too: an adopted .npy is kept as it is, so its size is what it costs.
        try:
            self.budget.check(header, tmp.stat().st_size, tmp)
        except DecodeBudgetError as exc:
            raise UploadError(413, _strip_path(str(exc), tmp)) from None
        return header

    def _decode(self, tmp: Path, target: Path) -> None:
        """Decode ``tmp`` and store it normalised as ``target``; a failure frees the pixels at once.

        Only the message leaves the except blocks (an error's traceback would keep the decoder's frames
        and their arrays alive), and a collection then clears whatever a decoder left in cycles.
        """
        error: UploadError | None = None
        try:
            write_image(target, read_image(tmp))  # the header passed the budget in _check_header
        except ImageInputError as exc:
            error = UploadError(422, _strip_path(str(exc), tmp))
        except MemoryError:
            error = UploadError(413, "The image is too large to decode on this server.")
        if error is not None:
            gc.collect()
            raise error

    @staticmethod
    def _adopt_npy(tmp: Path, kind: str, target: Path) -> bool:
        """Keep a ready ``.npy`` (H×W×C, C 1–4, little-endian 8/16-bit, C order) without a copy."""
        if kind != "NPY":
            return False
        try:
            array = np.load(tmp, mmap_mode="r", allow_pickle=False)
        except Exception:
            return False
        ok = (
            array.ndim == 3
            and 1 <= array.shape[2] <= 4
            and array.dtype in (np.dtype("<u2"), np.dtype("u1"))
            and array.flags.c_contiguous
        )
        del array
        if ok:
            os.replace(tmp, target)
        return ok

    def _work_started(self, name: str) -> None:
        with self._lock:
            self._busy.add(name)

    def _work_done(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)

    # ------------------------------------------------------------------ access
    def get(self, image_id: str) -> StoredImage:
        meta = self._folder(image_id) / "meta.json"
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            raise UnknownImage(
                f"No image with id {image_id!r}: it was never uploaded, was deleted, or expired "
                f"(uploads are kept {self.ttl / 3600:g} hours after their last use). Upload it again."
            ) from None
        return StoredImage(**data)

    def path(self, image_id: str) -> Path:
        self.get(image_id)
        self.touch(image_id)
        return self._folder(image_id) / "pixels.npy"

    def load(self, image_id: str) -> np.ndarray:
        return np.load(self.path(image_id), allow_pickle=False)

    def touch(self, image_id: str) -> None:
        with self._lock:
            self._last_used[image_id] = time.time()

    def delete(self, image_id: str) -> None:
        self.get(image_id)
        shutil.rmtree(self._folder(image_id), ignore_errors=True)
        with self._lock:
            self._last_used.pop(image_id, None)

    def expire(self, now: float, in_use: set[str]) -> None:
        """Delete uploads unused for ``ttl`` seconds (never ones a queued or running job needs), and
        the leftovers of a crash: hidden work older than an hour that this process is not doing, and
        image folders without ``meta.json`` whose folder is older than ``ttl``."""
        for entry in list(self.root.iterdir()):
            try:
                if entry.name.startswith((_UPLOAD_PREFIX, _INGEST_PREFIX)):
                    self._expire_work(entry, now)
                    continue
                if not entry.is_dir() or entry.name in in_use:
                    continue
                with self._lock:
                    last = self._last_used.get(entry.name)
                if last is None:
                    try:
                        last = (entry / "meta.json").stat().st_mtime
                    except FileNotFoundError:  # every image gets its meta.json before it is visible
                        last = entry.stat().st_mtime
                if now - last > self.ttl:
                    shutil.rmtree(entry, ignore_errors=True)
                    with self._lock:
                        self._last_used.pop(entry.name, None)
            except FileNotFoundError:  # deleted, or an ingest renamed it, while this sweep ran
                continue

    def _expire_work(self, entry: Path, now: float) -> None:
        """Delete a hidden upload file or ingest folder left by a crash: old, and not this process's."""
        with self._lock:
            if entry.name in self._busy:  # names are random and marked before they are created
                return
        if now - entry.stat().st_mtime <= STALE_WORK_AFTER:
            return
        log.info("deleting %s, left by an interrupted upload", entry.name)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)

    def _folder(self, image_id: str) -> Path:
        if not image_id or not all(c in "0123456789abcdef" for c in image_id) or len(image_id) != 24:
            raise UnknownImage(f"{image_id!r} is not an image id (ids are 24 hexadecimal digits).")
        return self.root / image_id


def _strip_path(message: str, tmp: Path) -> str:
    """Messages from image_io name the file; the client's upload has no name on this machine."""
    name = re.escape(str(tmp))
    message = re.sub(rf"\b([Tt]he) image file {name}", r"\1 upload", message)
    message = re.sub(rf"\b([Tt]he) (PNG|TIFF|JPEG|WebP|NPY) file {name}", r"\1 \2 upload", message)
    return message.replace(str(tmp), "the upload")
