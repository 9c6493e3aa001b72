"""Reading and writing images and masks at the depth and channel layout they are stored in.

Arrays are H×W×C with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), uint8 or uint16, or float32 in
[0, 1] for ``.npy`` and float TIFFs. Alpha is straight (not premultiplied), as GIMP exports it.

Libraries, one per format:

* PNG: ``imagecodecs`` (libpng). Restoring scans means 16-bit PNGs, and Pillow reduces 16-bit RGB, RGBA
  and grey+alpha PNGs to 8 bits on reading and cannot write them. imagecodecs decodes and encodes every
  PNG colour type at its stored depth and expands palettes and tRNS transparency the way libpng does.
  OpenCV was the other candidate: it reads grey+alpha as BGRA, cannot write grey+alpha, and swaps the
  channel order; pypng is pure Python and far too slow for large scans.
* TIFF: ``tifffile``, by the author of imagecodecs, which supplies its compression codecs (LZW, JPEG,
  ...): any depth, contiguous or planar samples.
* JPEG and WebP: Pillow (8-bit formats; already a dependency).
* ``.npy``: numpy, without pickles.

Files are recognised by their first bytes, not their extension, so a PNG named ``.jpg`` still reads.
Writing picks the format from the extension and is atomic: a temporary file beside the target is
renamed over it only once complete, so a failed write never leaves a half-written file in its place.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from .image_ops import to_float

# Decompression-bomb guard, checked from each file's header before decoding. Users restore large scans,
# so this is far above Pillow's default; a tighter per-job limit (max_pixels) is the caller's check.
MAX_PIXELS = 1 << 30
# Pillow's own guard would refuse images above about 0.18 gigapixels; ours above replaces it.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# Weights for a mask drawn in RGB: Rec.709 on the stored values, so a grey RGB mask reads exactly like
# the same grey stored as one channel.
_MASK_RGB_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
# Float pixels a little outside [0, 1] are rounding and are clipped; further out they are an error.
_FLOAT_SLACK = 0.01
_NPY_MAGIC = b"\x93NUMPY"


class ImageInputError(ValueError):
    """An image or mask file that cannot be used, with a message in plain words naming the file."""


# --- reading ---------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as H×W×C (C in 1..4), uint8 / uint16 as stored, or float32 for float data."""
    path = Path(path)
    kind = _sniff(path)
    try:
        array = _READERS[kind](path)
    except (ImageInputError, MemoryError):
        raise
    except Exception as exc:
        raise ImageInputError(f"Could not decode the {kind} file {path}: {exc}") from exc
    return _normalise(array, path, kind)


def read_mask(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """Read a mask as float32 H×W in [0, 1] and check it is ``size`` (height, width).

    The mask is the grey channel, or the alpha channel when the file has one (GIMP exports a selection or
    layer mask that way), or for RGB the Rec.709-weighted grey of the stored values.
    """
    path = Path(path)
    array = read_image(path)
    height, width = array.shape[:2]
    if (height, width) != tuple(size):
        raise ImageInputError(
            f"The mask {path} is {width}×{height} pixels but the image is {size[1]}×{size[0]} "
            "(width×height); the mask must have the image's size."
        )
    return mask_from_pixels(array)


def mask_from_pixels(array: np.ndarray) -> np.ndarray:
    """An H×W×C image as a float32 H×W mask: alpha if it has one, else grey, else Rec.709 grey of RGB."""
    channels = array.shape[2]
    if channels in (2, 4):
        return to_float(array[..., -1])
    if channels == 1:
        return to_float(array[..., 0])
    grey = to_float(array) @ _MASK_RGB_WEIGHTS
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ImageHeader:
    kind: str  # PNG, TIFF, JPEG, WebP or NPY
    height: int
    width: int


def probe_image(path: str | os.PathLike[str]) -> ImageHeader:
    """Format and size from the file's header only, so a size limit can be applied before decoding."""
    path = Path(path)
    kind = _sniff(path)
    try:
        if kind == "PNG":
            with path.open("rb") as fh:
                head = fh.read(24)
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise ImageInputError(f"The PNG file {path} is truncated or damaged (no image header).")
            width, height = struct.unpack(">II", head[16:24])
        elif kind == "TIFF":
            with tifffile.TiffFile(path) as tif:
                height, width = tif.pages[0].imagelength, tif.pages[0].imagewidth
        elif kind == "NPY":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            if len(shape) not in (2, 3):
                raise ImageInputError(
                    f"The NPY file {path} holds an array of shape {shape}; expected height×width "
                    "or height×width×channels."
                )
            height, width = shape[:2]
        else:
            with Image.open(path) as image:
                width, height = image.size
    except ImageInputError:
        raise
    except Exception as exc:
        raise ImageInputError(f"Could not read the {kind} header of {path}: {exc}") from exc
    return ImageHeader(kind, int(height), int(width))


def _sniff(path: Path) -> str:
    """The file's format from its first bytes (missing and unreadable files are input errors too)."""
    if not path.exists():
        raise ImageInputError(f"The image file {path} does not exist.")
    if not path.is_file():
        raise ImageInputError(f"{path} is not a file.")
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ImageInputError(f"Could not read {path}: {exc.strerror or exc}") from exc
    if not head:
        raise ImageInputError(f"The image file {path} is empty (0 bytes).")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(_NPY_MAGIC):
        return "NPY"
    raise ImageInputError(
        f"{path} is not an image this program reads: supported are PNG, TIFF, JPEG, WebP and .npy."
    )


def _check_pixels(path: Path, height: int, width: int) -> None:
    if height * width == 0:
        raise ImageInputError(f"The image {path} has no pixels ({width}×{height}).")
    if height * width > MAX_PIXELS:
        raise ImageInputError(
            f"The image {path} is {width}×{height} pixels, more than the limit of {MAX_PIXELS} pixels."
        )


def _read_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageInputError(f"The PNG file {path} is truncated or damaged (no image header).")
    width, height = struct.unpack(">II", data[16:24])
    _check_pixels(path, height, width)
    return imagecodecs.png_decode(data)


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_pixels(path, page.imagelength, page.imagewidth)
        array = page.asarray()
        axes = page.axes
        photometric = tifffile.PHOTOMETRIC(page.photometric)
        colormap = page.colormap
    if axes.startswith("S") and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    if array.dtype == np.bool_:  # 1-bit TIFFs
        array = array.astype(np.uint8) * np.uint8(255)
    if array.ndim == 2:
        array = array[..., None]
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        rgb = np.moveaxis(np.asarray(colormap), 0, -1)[array[..., 0]]
        # Palettes are 16-bit in TIFF; an 8-bit palette stored as v * 257 comes back as 8 bits, exactly.
        if rgb.dtype == np.uint16 and np.all(rgb % 257 == 0):
            rgb = (rgb // 257).astype(np.uint8)
        return rgb
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        if array.dtype.kind != "u":
            raise ImageInputError(
                f"The TIFF {path} is an inverted (white is zero) float image; not supported."
            )
        array = array.copy()
        array[..., 0] = np.iinfo(array.dtype).max - array[..., 0]
        return array
    if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
        raise ImageInputError(
            f"The TIFF {path} uses the {photometric.name} colour model; only grey, RGB and palette "
            "TIFFs are supported."
        )
    return array


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        _check_pixels(path, image.height, image.width)
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK JPEGs, palette or premultiplied WebP
            has_alpha = image.mode in ("PA", "La", "RGBa") or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        return np.asarray(image)


def _read_npy(path: Path) -> np.ndarray:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim in (2, 3):
        _check_pixels(path, array.shape[0], array.shape[1])
    return np.array(array)


_READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "PNG": _read_png,
    "TIFF": _read_tiff,
    "JPEG": _read_pillow,
    "WebP": _read_pillow,
    "NPY": _read_npy,
}


def _normalise(array: np.ndarray, path: Path, kind: str) -> np.ndarray:
    """Shape H×W×C with C in 1..4 and a supported pixel type, or an input error saying what is wrong."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise ImageInputError(
            f"The {kind} file {path} holds an array of shape {array.shape}; expected height×width "
            "or height×width×channels with 1 to 4 channels."
        )
    _check_pixels(path, array.shape[0], array.shape[1])
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ImageInputError(f"The {kind} file {path} has NaN or infinite pixel values.")
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
            raise ImageInputError(
                f"The {kind} file {path} has float pixels from {low:g} to {high:g}; float images must "
                "be in [0, 1]."
            )
        return np.clip(array, 0.0, 1.0)
    raise ImageInputError(
        f"The {kind} file {path} has {array.dtype} pixels; supported are 8- and 16-bit integers "
        "and floats in [0, 1]."
    )


# --- writing ---------------------------------------------------------------------------------------


def write_image(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write H×W×C (or H×W) ``array`` in the format of ``path``'s extension, keeping depth and channels.

    Lossless expansions are made where a format has no such layout (grey → RGB in WebP); anything that
    would lose data (16 bits or alpha in JPEG, floats in PNG) is an :class:`ImageInputError` instead.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    writer = _WRITERS.get(suffix)
    if writer is None:
        raise ImageInputError(
            f"Cannot write {path}: unknown extension {suffix or '(none)'!r}; use .png, .tif, .tiff, "
            ".jpg, .jpeg, .webp or .npy."
        )
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4 or array.shape[0] * array.shape[1] == 0:
        raise ImageInputError(
            f"Cannot write {path}: expected a non-empty height×width×channels array with 1 to 4 "
            f"channels, got shape {array.shape}."
        )
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    elif array.dtype not in (np.uint8, np.uint16):
        raise ImageInputError(f"Cannot write {path}: unsupported pixel type {array.dtype}.")
    # Encoders want C-contiguous rows; engine results are often transposed views.
    encode = writer(path, np.ascontiguousarray(array))
    _write_atomically(path, encode)


def _write_atomically(path: Path, encode: Callable[[BinaryIO], None]) -> None:
    """Encode into a temporary file beside ``path`` and rename it over ``path`` only once complete."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fh = temp.open("xb")  # new file, mode 0o666 minus the umask like any other
    except OSError as exc:
        raise ImageInputError(f"Cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with fh:
            encode(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _need_integers(path: Path, array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f":
        raise ImageInputError(
            f"Cannot write {path}: {name} stores 8- or 16-bit integers, not floats; convert with "
            "image_ops.from_float first, or write .tif or .npy."
        )


def _png_writer(path: Path, array: np.ndarray) -> Callable[[BinaryIO], None]:
    _need_integers(path, array, "PNG")
    return lambda fh: fh.write(imagecodecs.png_encode(array[..., 0] if array.shape[2] == 1 else array))


def _tiff_writer(path: Path, array: np.ndarray) -> Callable[[BinaryIO], None]:
    channels = array.shape[2]

    def encode(fh: BinaryIO) -> None:
        tifffile.imwrite(
            fh,
            array[..., 0] if channels == 1 else array,
            photometric="rgb" if channels >= 3 else "minisblack",
            extrasamples=("unassalpha",) if channels in (2, 4) else None,
            compression="zlib",
            predictor=True,
        )

    return encode


def _jpeg_writer(path: Path, array: np.ndarray) -> Callable[[BinaryIO], None]:
    if array.dtype != np.uint8:
        raise ImageInputError(
            f"Cannot write {path}: JPEG stores 8 bits per channel and this image is "
            f"{'float' if array.dtype.kind == 'f' else '16-bit'}; write .png or .tif to keep its depth."
        )
    if array.shape[2] in (2, 4):
        raise ImageInputError(
            f"Cannot write {path}: JPEG has no alpha channel; write .png, .tif or .webp to keep it."
        )
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    return lambda fh: image.save(fh, format="JPEG", quality=95, subsampling=0)


def _webp_writer(path: Path, array: np.ndarray) -> Callable[[BinaryIO], None]:
    if array.dtype != np.uint8:
        raise ImageInputError(
            f"Cannot write {path}: WebP stores 8 bits per channel; write .png or .tif to keep the depth."
        )
    if array.shape[2] <= 2:  # WebP has no grey layout: repeat the grey into RGB, losslessly
        array = np.concatenate([array[..., :1]] * 3 + [array[..., 1:]], axis=2)
    image = Image.fromarray(array)
    return lambda fh: image.save(fh, format="WEBP", lossless=True, quality=100, exact=True)


def _npy_writer(path: Path, array: np.ndarray) -> Callable[[BinaryIO], None]:
    return lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


_WRITERS: dict[str, Callable[[Path, np.ndarray], Callable[[BinaryIO], None]]] = {
    ".png": _png_writer,
    ".tif": _tiff_writer,
    ".tiff": _tiff_writer,
    ".jpg": _jpeg_writer,
    ".jpeg": _jpeg_writer,
    ".webp": _webp_writer,
    ".npy": _npy_writer,
}
