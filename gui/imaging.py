"""Pixels between the client's RawImage, numpy and Qt: crops to preview, images to show.

The dialog keeps the input at its own depth (what the backend gets) and converts only copies to
8 bits for the screen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtGui import QImage

from backend.client import RawImage


@dataclass(frozen=True)
class Rect:
    """A rectangle in input pixels (the crop the preview runs on)."""

    x: int
    y: int
    width: int
    height: int

    def clamped(self, width: int, height: int) -> Rect:
        """Moved (not shrunk, unless the image is smaller) to lie inside a width × height image."""
        w, h = min(self.width, width), min(self.height, height)
        return Rect(min(max(self.x, 0), width - w), min(max(self.y, 0), height - h), w, h)

    def centered_on(self, cx: float, cy: float) -> Rect:
        return Rect(round(cx - self.width / 2), round(cy - self.height / 2), self.width, self.height)


def as_array(image: RawImage) -> np.ndarray:
    """H×W×C view of the pixels (no copy)."""
    return np.frombuffer(image.data, dtype=image.dtype).reshape(image.height, image.width, image.channels)


def to_raw(array: np.ndarray) -> RawImage:
    if array.ndim == 2:
        array = array[..., None]
    array = np.ascontiguousarray(array)
    h, w, c = array.shape
    return RawImage(w, h, c, str(array.dtype), array.tobytes())


def crop(array: np.ndarray, rect: Rect) -> np.ndarray:
    return np.ascontiguousarray(array[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width])


def mask_bounds(mask: np.ndarray) -> Rect | None:
    """The bounding box of the selected (non-zero) pixels, or None for an empty mask."""
    selected = mask.reshape(mask.shape[0], mask.shape[1], -1).any(axis=2)
    rows, cols = np.flatnonzero(selected.any(axis=1)), np.flatnonzero(selected.any(axis=0))
    if not len(rows):
        return None
    return Rect(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def to_8bit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    return (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_qimage(array: np.ndarray) -> QImage:
    """An 8-bit RGBA copy for the screen: grey is spread to RGB, missing alpha is opaque."""
    pixels = to_8bit(array if array.ndim == 3 else array[..., None])
    h, w, c = pixels.shape
    rgba = np.empty((h, w, 4), np.uint8)
    colour = pixels[..., :3] if c >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    rgba[..., :3] = colour
    rgba[..., 3] = pixels[..., c - 1] if c in (2, 4) else 255
    image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return image.copy()  # own the pixels: the numpy buffer goes away


def mask_to_upload(mask: np.ndarray) -> np.ndarray:
    """A soft mask as 16-bit grey (what the service takes), from 8/16-bit or float values."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.dtype == np.uint16:
        return mask
    if mask.dtype == np.uint8:
        return mask.astype(np.uint16) * 257
    return (np.clip(mask.astype(np.float32), 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
