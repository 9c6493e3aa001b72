"""Image files: round trips per format, depth and channel layout; bad input; atomic writes; masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend import image_io
from backend.image_io import ImageInputError, read_image, read_mask, write_image

CHANNELS = {"grey": 1, "grey+alpha": 2, "rgb": 3, "rgba": 4}


def _pixels(channels: int, dtype: type, height: int = 9, width: int = 13, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random((height, width, channels), dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, (height, width, channels), dtype=dtype)


@pytest.mark.parametrize("layout", list(CHANNELS))
@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [
        (".png", np.uint8),
        (".png", np.uint16),
        (".tif", np.uint8),
        (".tiff", np.uint16),
        (".tif", np.float32),
        (".npy", np.uint8),
        (".npy", np.uint16),
        (".npy", np.float32),
    ],
)
def test_lossless_round_trip(tmp_path: Path, suffix: str, dtype: type, layout: str) -> None:
    array = _pixels(CHANNELS[layout], dtype)
    path = tmp_path / f"image{suffix}"
    write_image(path, array)
    back = read_image(path)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    assert np.array_equal(back, array)


@pytest.mark.parametrize("layout", ["rgb", "rgba"])
def test_webp_round_trip_is_lossless(tmp_path: Path, layout: str) -> None:
    array = _pixels(CHANNELS[layout], np.uint8)
    write_image(tmp_path / "image.webp", array)
    assert np.array_equal(read_image(tmp_path / "image.webp"), array)


@pytest.mark.parametrize(("layout", "stored"), [("grey", 3), ("grey+alpha", 4)])
def test_webp_grey_is_stored_as_rgb(tmp_path: Path, layout: str, stored: int) -> None:
    array = _pixels(CHANNELS[layout], np.uint8)
    write_image(tmp_path / "image.webp", array)
    back = read_image(tmp_path / "image.webp")
    assert back.shape[2] == stored
    for c in range(3):
        assert np.array_equal(back[..., c], array[..., 0])
    if stored == 4:
        assert np.array_equal(back[..., 3], array[..., 1])


@pytest.mark.parametrize("layout", ["grey", "rgb"])
def test_jpeg_round_trip_is_close(tmp_path: Path, layout: str) -> None:
    # Smooth content: JPEG at quality 95 keeps it within a few levels.
    ramp = np.linspace(0, 255, 32 * 48).reshape(32, 48, 1)
    array = np.repeat(ramp, CHANNELS[layout], axis=2).astype(np.uint8)
    write_image(tmp_path / "image.jpg", array)
    back = read_image(tmp_path / "image.jpg")
    assert back.shape == array.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - array).max() <= 4


def test_two_dimensional_arrays_read_back_with_one_channel(tmp_path: Path) -> None:
    array = _pixels(1, np.uint16)[..., 0]
    write_image(tmp_path / "grey.png", array)
    assert np.array_equal(read_image(tmp_path / "grey.png"), array[..., None])


def test_palette_png_reads_as_rgb_and_rgba(tmp_path: Path) -> None:
    rgb = _pixels(3, np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=8)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))
    palette.save(tmp_path / "pt.png", transparency=0)
    expected = np.asarray(Image.open(tmp_path / "pt.png").convert("RGBA"))
    assert np.array_equal(read_image(tmp_path / "pt.png"), expected)


def test_format_is_recognised_by_content(tmp_path: Path) -> None:
    array = _pixels(3, np.uint16)
    write_image(tmp_path / "image.png", array)
    (tmp_path / "image.png").rename(tmp_path / "misnamed.jpg")
    assert np.array_equal(read_image(tmp_path / "misnamed.jpg"), array)


def test_planar_and_palette_tiffs(tmp_path: Path) -> None:
    import tifffile

    rgb = _pixels(3, np.uint16)
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    assert np.array_equal(read_image(tmp_path / "planar.tif"), rgb)
    index = _pixels(1, np.uint8)[..., 0] % 4
    colormap = np.zeros((3, 256), dtype=np.uint16)
    colormap[:, :4] = np.array([[0, 10, 20, 255], [5, 15, 25, 0], [9, 8, 7, 6]]) * 257
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=colormap)
    back = read_image(tmp_path / "palette.tif")
    assert back.dtype == np.uint8
    assert np.array_equal(back, np.moveaxis(colormap // 257, 0, -1)[index].astype(np.uint8))


# --- bad input -------------------------------------------------------------------------------------


def test_missing_empty_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match=r"does not exist") as info:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("hello, not a picture")
    with pytest.raises(ImageInputError, match=r"notes\.png is not an image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageInputError, match=r"not a file"):
        read_image(tmp_path)


def test_truncated_files(tmp_path: Path) -> None:
    for suffix in (".png", ".tif", ".jpg", ".webp"):
        path = tmp_path / f"image{suffix}"
        write_image(path, _pixels(3, np.uint8, 40, 40))
        path.write_bytes(path.read_bytes()[:30])
        with pytest.raises(ImageInputError, match=str(path.name)):
            read_image(path)


def test_unsupported_arrays(tmp_path: Path) -> None:
    cases = {
        "empty.npy": (np.zeros((0, 5, 3), np.uint8), r"no pixels"),
        "int32.npy": (np.zeros((4, 4), np.int32), r"int32 pixels"),
        "five.npy": (np.zeros((4, 4, 5), np.uint8), r"1 to 4 channels"),
        "bytes.npy": (np.full((4, 4, 3), 200.0, np.float32), r"from 200 to 200"),
        "nan.npy": (np.full((4, 4), np.nan, np.float32), r"NaN"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ImageInputError, match=message) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


def test_unwritable_inputs(tmp_path: Path) -> None:
    rgb16 = _pixels(3, np.uint16)
    with pytest.raises(ImageInputError, match=r"JPEG stores 8 bits.*16-bit"):
        write_image(tmp_path / "out.jpg", rgb16)
    with pytest.raises(ImageInputError, match=r"JPEG has no alpha"):
        write_image(tmp_path / "out.jpg", _pixels(4, np.uint8))
    with pytest.raises(ImageInputError, match=r"not floats"):
        write_image(tmp_path / "out.png", _pixels(3, np.float32))
    with pytest.raises(ImageInputError, match=r"unknown extension '\.bmp'"):
        write_image(tmp_path / "out.bmp", rgb16)
    with pytest.raises(ImageInputError, match=r"out\.png"):
        write_image(tmp_path / "missing-folder" / "out.png", rgb16)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_existing_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.jpg"
    write_image(path, _pixels(3, np.uint8))
    before = path.read_bytes()
    with pytest.raises(ImageInputError):
        write_image(path, _pixels(3, np.uint16))
    assert path.read_bytes() == before

    # A failure half-way through encoding: the partial temporary file is removed, the old file stays.
    def failing_writer(path: Path, array: np.ndarray):
        def encode(fh: io.BufferedWriter) -> None:
            fh.write(b"partial")
            raise OSError("disk full")

        return encode

    monkeypatch.setitem(image_io._WRITERS, ".jpg", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, _pixels(3, np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.jpg"]


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "result.png"
    write_image(path, _pixels(3, np.uint8, seed=1))
    second = _pixels(4, np.uint16, seed=2)
    write_image(path, second)
    assert np.array_equal(read_image(path), second)
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "big.png", _pixels(3, np.uint8, 20, 30))
    monkeypatch.setattr(image_io, "MAX_PIXELS", 599)
    with pytest.raises(ImageInputError, match=r"30×20 pixels, more than the limit"):
        read_image(tmp_path / "big.png")


# --- masks -----------------------------------------------------------------------------------------


def test_mask_sources(tmp_path: Path) -> None:
    grey = _pixels(1, np.uint8, 6, 8)
    write_image(tmp_path / "grey.png", grey)
    mask = read_mask(tmp_path / "grey.png", (6, 8))
    assert mask.dtype == np.float32 and mask.shape == (6, 8)
    assert np.array_equal(mask, grey[..., 0] / np.float32(255))

    rgba = _pixels(4, np.uint16, 6, 8)
    write_image(tmp_path / "rgba.tif", rgba)
    assert np.allclose(read_mask(tmp_path / "rgba.tif", (6, 8)), rgba[..., 3] / 65535, atol=1e-7)

    grey_alpha = _pixels(2, np.uint8, 6, 8)
    write_image(tmp_path / "ga.png", grey_alpha)
    assert np.allclose(read_mask(tmp_path / "ga.png", (6, 8)), grey_alpha[..., 1] / 255, atol=1e-7)

    # An RGB mask of greys reads as those greys; colours by their Rec.709 weights.
    rgb = np.repeat(grey, 3, axis=2)
    rgb[0, 0] = (255, 0, 0)
    write_image(tmp_path / "rgb.png", rgb)
    mask = read_mask(tmp_path / "rgb.png", (6, 8))
    assert mask[0, 0] == pytest.approx(0.2126, abs=1e-6)
    assert np.allclose(mask.ravel()[1:], grey.ravel()[1:] / 255, atol=1e-6)


def test_mask_of_wrong_size(tmp_path: Path) -> None:
    write_image(tmp_path / "mask.png", _pixels(1, np.uint8, 6, 8))
    with pytest.raises(ImageInputError, match=r"mask\.png is 8×6 pixels but the image is 9×7"):
        read_mask(tmp_path / "mask.png", (7, 9))
