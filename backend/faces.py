"""Faces found automatically, as the foreground that gets its own fidelity.

ModelScope's PASD finds faces with RetinaFace and gives them ``fidelity_scale_fg`` as hard boxes.
We give users the same without a selection, but as soft feathered ellipses (``image_ops.face_mask``)
that then work exactly like a selection. The detector is OpenCV's Haar cascades, whose trained
weights ship inside the ``opencv-python-headless`` wheel: they run everywhere, need no download and
are tested on real photographs. Frontal faces come from the ``alt2`` cascade, turned heads from the
profile cascade run on the picture and its mirror image; overlapping finds are merged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import image_ops
from .face_box import Face

DETECTOR = "opencv-haar"
DETECTOR_LICENCE = "Intel License Agreement for Open Source Computer Vision Library (OpenCV's Haar cascades)"
MAX_SIDE = 640  # the detector sees the picture at most this large: faster, and steadier across sizes
MIN_FACE = 20  # smallest face side the detector looks for, in the pixels it sees
_FRONTAL = "haarcascade_frontalface_alt2.xml"
_PROFILE = "haarcascade_profileface.xml"
_NEIGHBOURS = {"frontal": 4, "profile": 5}  # profile finds are noisier: they need more agreement


class FaceDetectionError(RuntimeError):
    """The detector cannot run (OpenCV missing or damaged); the message says how to repair it."""


def _cascades() -> tuple[Any, Any, Any]:
    try:
        import cv2
    except ImportError as exc:
        raise FaceDetectionError(
            "Face detection needs OpenCV: install it into the backend's environment with "
            "`pip install 'opencv-python-headless>=4.8,<5'` (or run the installer again)."
        ) from exc
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    frontal = cv2.CascadeClassifier(folder + _FRONTAL)
    profile = cv2.CascadeClassifier(folder + _PROFILE)
    if frontal.empty() or profile.empty():
        raise FaceDetectionError(
            f"OpenCV's face cascades are missing from {folder or 'its data folder'} (OpenCV 5 dropped "
            "them): install `opencv-python-headless>=4.8,<5`."
        )
    return cv2, frontal, profile


def _grey_u8(cv2: Any, image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """8-bit grey of an 8/16-bit or float picture (grey or colour, alpha ignored), at most
    ``max_side`` large, and the scale it was brought to. It is scaled down first, in its own sample
    type, so a huge scan never gets a full-size float copy."""
    height, width = image.shape[:2]
    ratio = min(1.0, max_side / max(height, width))
    pixels = image
    if ratio < 1.0:
        size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        pixels = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    colour = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
    values = image_ops.to_float(np.ascontiguousarray(colour))
    if values.shape[2] == 3:
        grey = values[..., 0] * 0.299 + values[..., 1] * 0.587 + values[..., 2] * 0.114
    else:
        grey = values[..., 0]
    return np.clip(np.nan_to_num(grey) * 255.0 + 0.5, 0, 255).astype(np.uint8), ratio


def _score(neighbours: int, needed: int) -> float:
    """More agreeing windows → surer; exactly the minimum is 0.5."""
    return round(1.0 - 0.5 ** (neighbours / needed), 3)


def detect_faces(image: np.ndarray, max_side: int = MAX_SIDE) -> list[Face]:
    """Faces in ``image`` (H×W or H×W×C, uint8/uint16/float in [0, 1]), largest first, in its pixels."""
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"a picture is H×W or H×W×C, not shape {image.shape}")
    if image.ndim == 3 and not 1 <= image.shape[2] <= 4:
        raise ValueError(f"a picture has 1 to 4 channels, not {image.shape[2]}")
    cv2, frontal, profile = _cascades()
    grey, ratio = _grey_u8(cv2, image, max_side)
    if min(grey.shape) < MIN_FACE:
        return []
    # Old scans are often flat or faded: local contrast equalisation brings faces out evenly.
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    found: list[Face] = []
    runs = (("frontal", frontal, False), ("profile", profile, False), ("profile", profile, True))
    for kind, cascade, mirrored in runs:
        view = np.ascontiguousarray(grey[:, ::-1]) if mirrored else grey
        boxes, neighbours = cascade.detectMultiScale2(
            view, scaleFactor=1.1, minNeighbors=_NEIGHBOURS[kind], minSize=(MIN_FACE, MIN_FACE)
        )
        for (x, y, w, h), n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).ravel(),
                                   strict=True):  # fmt: skip
            if mirrored:
                x = view.shape[1] - x - w
            found.append(
                Face(
                    round(x / ratio), round(y / ratio), max(1, round(w / ratio)), max(1, round(h / ratio)),
                    _score(int(n), _NEIGHBOURS[kind]), kind,
                )
            )  # fmt: skip
    return merge_faces(found)


def _overlap(a: Face, b: Face) -> float:
    """Intersection over the smaller box: a face found twice (frontal and profile) overlaps ~fully."""
    ix = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    iy = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    smaller = min(a.width * a.height, b.width * b.height)
    return ix * iy / smaller if smaller else 0.0


def merge_faces(faces: list[Face], threshold: float = 0.5) -> list[Face]:
    """One face per place: frontal finds first, then the surest, then the largest."""
    order = sorted(faces, key=lambda f: (f.kind != "frontal", -f.score, -f.width * f.height))
    kept: list[Face] = []
    for face in order:
        if all(_overlap(face, other) < threshold for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: -f.width * f.height)


def faces_mask(size: tuple[int, int], faces: list[Face] | tuple[Face, ...]) -> np.ndarray:
    """The soft foreground of ``faces`` over a picture of ``size`` (H, W): float32 in [0, 1]."""
    return image_ops.face_mask(size, [f.box() for f in faces])


def clip_faces(faces: list[Face] | tuple[Face, ...], size: tuple[int, int]) -> list[Face]:
    """The faces that touch a picture of ``size`` (H, W) (a framed crop sees only its own)."""
    height, width = size
    return [f for f in faces if f.x < width and f.y < height and f.x + f.width > 0 and f.y + f.height > 0]


def describe(faces: list[Face] | tuple[Face, ...]) -> str:
    if not faces:
        return "no faces found"
    count = len(faces)
    sides = ", ".join(f"{f.width}×{f.height} at {f.x},{f.y}" for f in faces[:4])
    more = f" and {count - 4} more" if count > 4 else ""
    return f"{count} face{'s' if count != 1 else ''} found ({sides}{more})"
