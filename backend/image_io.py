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

import functools
import math
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


def read_image(path: str | os.PathLike[str], budget: DecodeBudget | None = None) -> np.ndarray:
    """Read an image file as H×W×C (C in 1..4), uint8 / uint16 as stored, or float32 for float data.

    With a ``budget`` the file's header is checked against it first, so an image too large for it (or a
    decompression bomb) is refused before a single pixel is decoded.
    """
    path = Path(path)
    kind = _sniff(path)
    if budget is not None:
        budget.check(probe_image(path), path.stat().st_size, path)
    # A failure must not keep the decoded pixels alive: the traceback of an error raised inside the
    # decoders holds their frames, and those hold the arrays (gigabytes for a large scan) for as long as
    # anyone keeps the error. So only the message and type leave the except blocks; the error raised
    # below is new, with no chain and a traceback that starts here.
    error: type[Exception] = ImageInputError
    try:
        return _normalise(_READERS[kind](path), path, kind)
    except ImageInputError as exc:
        error, message = type(exc), str(exc)
    except MemoryError as exc:
        error, message = MemoryError, str(exc) or f"Out of memory decoding the {kind} file {path}."
    except Exception as exc:
        message = f"Could not decode the {kind} file {path}: {exc}"
    raise error(message)


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
    """What a file decodes to, from its header alone, so that limits apply before any pixel is decoded."""

    kind: str  # PNG, TIFF, JPEG, WebP or NPY
    height: int
    width: int
    channels: int  # of the array read_image returns (1 to 4)
    dtype: str  # of the samples the decoder produces: bool, uint8, uint16 or float16/32/64
    # What decoding holds at once: the decoder's output (Pillow keeps every multi-channel 8-bit image
    # at 4 bytes a pixel, a CMYK JPEG included); for a palette TIFF, the indices and their 16-bit RGB.
    decoded_bytes: int
    segment_bytes: int = 0  # TIFF: its largest strip or tile, decoded (0 for the other formats)

    @property
    def sample_bytes(self) -> int:
        """Bytes per sample of the decoder's array."""
        return np.dtype(self.dtype).itemsize

    @property
    def stored_bytes(self) -> int:
        """Bytes of the array read_image returns (floats become float32, so float16 grows)."""
        sample = 4 if np.dtype(self.dtype).kind == "f" else self.sample_bytes
        return self.height * self.width * self.channels * sample


class DecodeBudgetError(ImageInputError):
    """An image that would take more memory to decode than allowed, or that looks like a decompression
    bomb; refused from its header, before decoding."""


@dataclass(frozen=True)
class DecodeBudget:
    """How much one image may decode to: at most ``max_bytes``, and at most ``max_ratio`` times the
    file's own size once past ``floor`` (a few kilobytes of zlib can declare gigabytes of pixels)."""

    max_bytes: int
    max_ratio: float
    floor: int = 64 * 2**20
    who: str = "this server"  # named in the messages: "this server decodes at most ..."

    def check(self, header: ImageHeader, file_bytes: int, path: str | os.PathLike[str]) -> None:
        """Raise :class:`DecodeBudgetError` in plain words if decoding ``header``'s image is over budget."""
        if header.segment_bytes > self.max_bytes:
            raise DecodeBudgetError(
                f"The image file {path} has a TIFF strip or tile that alone would take "
                f"{format_bytes(header.segment_bytes)} of memory to decode; {self.who} decodes at most "
                f"{format_bytes(self.max_bytes)} per image."
            )
        needed = max(header.decoded_bytes, header.stored_bytes)
        what = (
            f"a {header.width}×{header.height} {header.kind} image with {header.channels} channel"
            f"{'s' if header.channels != 1 else ''} of {header.dtype}"
        )
        if needed > self.max_bytes:
            raise DecodeBudgetError(
                f"The image file {path} is {what} and would take {format_bytes(needed)} of memory to "
                f"decode; {self.who} decodes at most {format_bytes(self.max_bytes)} per image. Send a "
                "smaller image, or one with fewer channels or bits per channel."
            )
        if needed > max(self.floor, self.max_ratio * file_bytes):
            raise DecodeBudgetError(
                f"The image file {path} is {what}: {format_bytes(file_bytes)} that would decode to "
                f"{format_bytes(needed)}, {needed / max(file_bytes, 1):.0f} times its size. Files that "
                f"expand more than {self.max_ratio:g} times (beyond the first {format_bytes(self.floor)}) "
                "are refused as likely decompression bombs; if this is a real image, send it "
                "uncompressed (.npy or uncompressed TIFF)."
            )


def format_bytes(count: float) -> str:
    """A byte count in words: 3.2 GB, 800 MB, 17 KB (decimal units, as disks and limits are quoted)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    return f"{count:.0f} bytes"


def probe_image(path: str | os.PathLike[str]) -> ImageHeader:
    """Format, size, channels and decoded size from the file's header only, never the pixel data, so
    limits apply before decoding. Layouts read_image would refuse (more than 4 channels, unsupported
    sample types, 3-D TIFFs, absurd strip or tile counts) are refused here already."""
    path = Path(path)
    kind = _sniff(path)
    try:
        return _PROBES[kind](path)
    except ImageInputError:
        raise
    except Exception as exc:
        message = f"Could not read the {kind} header of {path}: {exc}"
    raise ImageInputError(message)


def _probe_png(path: Path) -> ImageHeader:
    with path.open("rb") as fh:
        head = fh.read(33)  # signature, then the IHDR chunk: length, type, 13 bytes, CRC
        if len(head) < 33 or head[8:16] != b"\x00\x00\x00\x0dIHDR":
            raise ImageInputError(f"The PNG file {path} is truncated or damaged (no image header).")
        width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
        if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
            raise ImageInputError(
                f"The PNG file {path} is damaged: colour type {colour} with bit depth {depth} is not PNG."
            )
        channels = _PNG_CHANNELS[colour]
        # libpng turns a tRNS chunk (before IDAT) into an alpha channel for grey, RGB and palette images.
        if colour in (0, 2, 3) and _png_has_trns(fh):
            channels += 1
    dtype = "uint16" if depth == 16 else "uint8"
    decoded = height * width * channels * (2 if depth == 16 else 1)
    return ImageHeader("PNG", height, width, channels, dtype, decoded)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type → channels decoded
_PNG_MAX_CHUNKS = 1000  # ancillary chunks before IDAT: real files have a handful


def _png_has_trns(fh: BinaryIO) -> bool:
    """Whether a tRNS chunk comes before the image data (``fh`` is just past IHDR); seeks, never reads
    chunk data. A file with implausibly many chunks counts as having one (the larger estimate)."""
    for _ in range(_PNG_MAX_CHUNKS):
        head = fh.read(8)
        if len(head) < 8:
            return False
        length, name = struct.unpack(">I4s", head)
        if name == b"tRNS":
            return True
        if name in (b"IDAT", b"IEND"):
            return False
        fh.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return True


# A TIFF split into more strips or tiles than this is not a real image (a 100-megapixel scan in 16×16
# tiles has 0.4 million) and would keep the decoder busy for minutes on per-segment overhead.
MAX_TIFF_SEGMENTS = 1 << 22
_TIFF_PHOTOMETRICS = ("MINISBLACK", "MINISWHITE", "RGB", "PALETTE")


def _probe_tiff(path: Path) -> ImageHeader:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if not isinstance(page, tifffile.TiffPage):
            raise ImageInputError(f"The TIFF file {path} has no readable first page.")
        height, width, samples = page.imagelength, page.imagewidth, page.samplesperpixel
        if samples > 4:
            raise ImageInputError(
                f"The TIFF file {path} has {samples} channels (samples per pixel); supported are 1 to 4 "
                "channels: grey, grey + alpha, RGB or RGBA."
            )
        if page.imagedepth > 1:
            raise ImageInputError(f"The TIFF file {path} is a 3-D volume; only 2-D images are supported.")
        dtype = page.dtype
        if dtype is None or not _supported_samples(dtype):
            raise ImageInputError(
                f"The TIFF file {path} has {dtype or 'unknown'} pixels ({page.bitspersample} bits per "
                "sample); supported are 8- and 16-bit integers and floats in [0, 1]."
            )
        photometric = tifffile.PHOTOMETRIC(page.photometric)
        if photometric.name not in _TIFF_PHOTOMETRICS:
            raise ImageInputError(
                f"The TIFF file {path} uses the {photometric.name} colour model; only grey, RGB and "
                "palette TIFFs are supported."
            )
        segments = len(page.dataoffsets)
        expected = math.prod(page.chunked)
        if segments > MAX_TIFF_SEGMENTS or segments > expected:
            raise ImageInputError(
                f"The TIFF file {path} is damaged: it lists {segments} strips or tiles for an image of "
                f"{expected}, and at most {MAX_TIFF_SEGMENTS} are read."
            )
        decoded = math.prod(page.shape) * dtype.itemsize
        segment = math.prod(page.chunks) * dtype.itemsize
        channels = samples
        if photometric.name == "PALETTE":
            channels, dtype = 3, np.dtype(np.uint16)  # indices looked up in the 16-bit colour map
            decoded += height * width * 3 * 2
    return ImageHeader("TIFF", height, width, channels, dtype.name, decoded, segment)


def _probe_pillow(path: Path, kind: str) -> ImageHeader:
    with Image.open(path) as image:  # lazy: reads the header, decodes nothing
        width, height, mode = image.width, image.height, image.mode
        has_alpha = mode in ("PA", "La", "RGBa") or "transparency" in image.info
        bands = len(image.getbands())
    channels = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(mode, 4 if has_alpha else 3)
    # Pillow stores one-band images at a byte a pixel and all others (RGB, CMYK, ...) at four.
    decoded = height * width * (1 if bands == 1 else 4)
    return ImageHeader(kind, height, width, channels, "uint8", decoded)


def _probe_npy(path: Path) -> ImageHeader:
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # 3.0 only differs for structured types with non-Latin-1 field names: never pixels
            raise ImageInputError(f"The NPY file {path} is format version {version}; expected 1.0 or 2.0.")
        offset = fh.tell()
    if len(shape) not in (2, 3) or (len(shape) == 3 and not 1 <= shape[2] <= 4):
        raise ImageInputError(
            f"The NPY file {path} holds an array of shape {shape}; expected height×width or "
            "height×width×channels with 1 to 4 channels."
        )
    if dtype.hasobject or not _supported_samples(dtype):
        raise ImageInputError(
            f"The NPY file {path} has {dtype} pixels; supported are 8- and 16-bit unsigned integers, "
            "booleans and floats in [0, 1]."
        )
    decoded = math.prod(shape) * dtype.itemsize
    have = path.stat().st_size - offset
    if have < decoded:
        raise ImageInputError(
            f"The NPY file {path} is truncated: its header declares a {'×'.join(map(str, shape))} "
            f"{dtype.name} array ({format_bytes(decoded)}) but the file holds {format_bytes(have)} of data."
        )
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    return ImageHeader("NPY", int(height), int(width), int(channels), dtype.name, decoded)


def _supported_samples(dtype: np.dtype) -> bool:
    """Sample types read_image turns into its outputs: bool, uint8, uint16 and floats."""
    return (dtype.kind, dtype.itemsize) in (("b", 1), ("u", 1), ("u", 2), ("f", 2), ("f", 4), ("f", 8))


_PROBES: dict[str, Callable[[Path], ImageHeader]] = {
    "PNG": _probe_png,
    "TIFF": _probe_tiff,
    "JPEG": functools.partial(_probe_pillow, kind="JPEG"),
    "WebP": functools.partial(_probe_pillow, kind="WebP"),
    "NPY": _probe_npy,
}


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
        array = page.asarray(maxworkers=1)  # one decode at a time: the peak is the array itself
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
        # In place where possible: the array is the decoder's own, and a second copy doubles the peak.
        return np.clip(array, 0.0, 1.0, out=array if array.flags.writeable else None)
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


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write already encoded bytes (a result a Ray worker encoded) atomically, like :func:`write_image`."""
    _write_atomically(Path(path), lambda fh: fh.write(data))


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
