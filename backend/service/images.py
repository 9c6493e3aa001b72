"""Uploaded images on disk, referred to by id, so a preview and the final run upload only once.

Each upload is checked completely when it arrives (header size limit first, then a full decode),
and kept as a normalised ``pixels.npy`` that later jobs load without decoding again. A ``.npy``
upload of 8- or 16-bit pixels in the right layout is kept as it is: no decode, no copy.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..image_io import ImageInputError, probe_image, read_image, write_image

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
    def __init__(self, root: Path, max_pixels: int, max_bytes: int, ttl: float) -> None:
        self.root = root
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_used: dict[str, float] = {}

    # ------------------------------------------------------------------ upload
    async def receive(self, chunks: AsyncIterator[bytes], content_type: str) -> Path:
        """Stream a body to a temporary file, refusing types and sizes the store does not take."""
        declared = content_type.split(";")[0].strip().lower()
        if declared not in CONTENT_TYPES:
            raise UploadError(
                415,
                f"Content type {declared or '(none)'!r} is not an image type this server takes; send "
                f"one of {', '.join(CONTENT_TYPES)}.",
            )
        tmp = self.root / f".upload-{secrets.token_hex(8)}"
        size = 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadError(413, self._too_many_bytes())
                    fh.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if size == 0:
            tmp.unlink(missing_ok=True)
            raise UploadError(400, "The upload is empty (0 bytes); send the image file's bytes as the body.")
        return tmp

    def _too_many_bytes(self) -> str:
        return f"The upload is larger than this server's limit of {self.max_bytes / 2**20:.0f} MiB."

    def ingest(self, tmp: Path, content_type: str) -> StoredImage:
        """Check and store a received file (blocking: call it from a worker thread)."""
        try:
            return self._ingest(tmp, content_type.split(";")[0].strip().lower())
        finally:
            tmp.unlink(missing_ok=True)

    def _ingest(self, tmp: Path, declared: str) -> StoredImage:
        try:
            header = probe_image(tmp)
        except ImageInputError as exc:
            raise UploadError(422, _strip_path(str(exc), tmp)) from exc
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
        image_id = secrets.token_hex(12)
        folder = self.root / image_id
        folder.mkdir()
        try:
            if not self._adopt_npy(tmp, header.kind, folder / "pixels.npy"):
                try:
                    array = read_image(tmp)
                except ImageInputError as exc:
                    raise UploadError(422, _strip_path(str(exc), tmp)) from exc
                except MemoryError as exc:
                    raise UploadError(413, "The image is too large to decode on this server.") from exc
                write_image(folder / "pixels.npy", array)
            array = np.load(folder / "pixels.npy", mmap_mode="r", allow_pickle=False)
            height, width, channels = array.shape
            stored = StoredImage(
                id=image_id,
                height=height,
                width=width,
                channels=channels,
                dtype=str(array.dtype),
                bytes=(folder / "pixels.npy").stat().st_size,
                created=time.time(),
            )
            del array
            (folder / "meta.json").write_text(json.dumps(stored.to_json()))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.touch(image_id)
        log.info("stored image %s: %dx%dx%d %s", image_id, width, height, channels, stored.dtype)
        return stored

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
        """Delete uploads unused for ``ttl`` seconds (never ones a queued or running job needs)."""
        for folder in self.root.iterdir():
            if folder.name.startswith(".upload-") and now - folder.stat().st_mtime > 3600:
                folder.unlink(missing_ok=True)  # left by a crash mid-upload
                continue
            if not folder.is_dir() or folder.name in in_use:
                continue
            with self._lock:
                last = self._last_used.get(folder.name)
            if last is None:
                try:
                    last = (folder / "meta.json").stat().st_mtime
                except OSError:
                    last = 0.0
            if now - last > self.ttl:
                shutil.rmtree(folder, ignore_errors=True)
                with self._lock:
                    self._last_used.pop(folder.name, None)

    def _folder(self, image_id: str) -> Path:
        if not image_id or not all(c in "0123456789abcdef" for c in image_id) or len(image_id) != 24:
            raise UnknownImage(f"{image_id!r} is not an image id (ids are 24 hexadecimal digits).")
        return self.root / image_id


def _strip_path(message: str, tmp: Path) -> str:
    """Messages from image_io name the file; the client's upload has no name on this machine."""
    return message.replace(f"The image file {tmp}", "The upload").replace(str(tmp), "the upload")
