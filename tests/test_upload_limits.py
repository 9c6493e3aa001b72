"""Hostile uploads against a real server: files that declare far more pixels than they carry, or layouts
the server cannot use, are refused from their headers before any pixel is decoded, and the server's
memory stays where it was. And the expiry sweep never touches an upload still being received or
ingested, while it does clean up what a crash left behind."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from backend.image_io import (
    DecodeBudget,
    DecodeBudgetError,
    ImageInputError,
    probe_image,
    read_image,
    write_image,
)
from backend.service.images import STALE_WORK_AFTER, ImageStore

from .service_server import RssSampler, ServerProcess, zero_tiff

MB = 10**6


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default limits: 100 megapixels, 800 MB decoded, 250 times the file size."""
    with ServerProcess(tiny_models["full"].parent, tmp_path_factory.mktemp("limits")) as running:
        yield running


def upload(server: ServerProcess, body: bytes, ctype: str = "application/octet-stream") -> tuple[int, dict]:
    """POST /v1/images over raw HTTP; returns (status, JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/v1/images", body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- hostile uploads
def test_tiff_declaring_gigabytes_is_refused_without_decoding(server: ServerProcess) -> None:
    # 10000×10000 RGBA float64: 3.2 GB of pixels in a 3 MB file (100 megapixels passes the pixel limit).
    body = zero_tiff((10000, 10000, 4), np.float64, photometric="rgb", extrasamples=("unassalpha",))
    assert len(body) < 4 * MB
    assert server.process is not None
    with RssSampler(server.process.pid) as rss:
        status, answer = upload(server, body, "image/tiff")
    assert status == 413, answer
    assert "3.2 GB of memory to decode" in answer["detail"]
    assert "at most 800 MB per image" in answer["detail"]
    assert "/" not in answer["detail"]  # no server paths
    assert rss.peak - rss.before < 300 * MB, (rss.before, rss.peak)
    assert server.healthy()


def test_tiff_with_sixteen_channels_is_refused_before_any_allocation(server: ServerProcess) -> None:
    # 10000×10000×16 bytes: decoding it first (as the server once did) takes 1.6 GB per request.
    body = zero_tiff((10000, 10000, 16), np.uint8, photometric="minisblack", planarconfig="contig")
    assert server.process is not None
    with RssSampler(server.process.pid) as rss:
        for _ in range(4):
            status, answer = upload(server, body, "image/tiff")
            assert status == 422, answer
            assert "16 channels" in answer["detail"]
    assert rss.peak - rss.before < 300 * MB, (rss.before, rss.peak)
    assert rss.after - rss.before < 100 * MB, (rss.before, rss.after)


def test_png_bomb_is_refused_with_advice(server: ServerProcess) -> None:
    # 4000×4000 RGBA 16-bit zeros: 128 MB of pixels in a 125 KB PNG, a thousand times its size.
    body = imagecodecs.png_encode(np.zeros((4000, 4000, 4), np.uint16))
    assert len(body) < MB
    status, answer = upload(server, body, "image/png")
    assert status == 413, answer
    detail = answer["detail"]
    assert "decompression bomb" in detail and "send it uncompressed (.npy or uncompressed TIFF)" in detail
    assert "4000×4000 PNG image with 4 channels of uint16" in detail


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (npy_bytes(np.zeros((8, 8, 16), np.uint8)), 422, "shape (8, 8, 16)"),
        (npy_bytes(np.zeros((8, 8), np.int64)), 422, "int64 pixels"),
        (npy_bytes(np.zeros((2, 8, 8, 3), np.uint8)), 422, "expected height×width"),
    ],
    ids=["16 channels", "int64", "4-D"],
)
def test_unusable_npy_layouts(server: ServerProcess, body: bytes, status: int, words: str) -> None:
    got, answer = upload(server, body, "application/x-npy")
    assert (got, words in answer["detail"]) == (status, True), answer


def test_npy_declaring_more_than_it_holds(server: ServerProcess) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10000, 10000, 4)}
    )
    body = header.getvalue() + bytes(64)
    assert server.process is not None
    with RssSampler(server.process.pid) as rss:
        status, answer = upload(server, body, "application/x-npy")
    assert status == 422, answer
    assert "truncated" in answer["detail"] and "10000×10000×4 float64 array (3.2 GB)" in answer["detail"]
    assert rss.peak - rss.before < 100 * MB


def test_ordinary_images_of_every_kind_are_accepted(server: ServerProcess, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = {
        "rgb8.png": (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), "uint8"),
        "rgba16.png": (rng.integers(0, 65536, (60, 80, 4), dtype=np.uint16), "uint16"),
        "grey16.tif": (rng.integers(0, 65536, (60, 80, 1), dtype=np.uint16), "uint16"),
        "float.tif": (rng.random((60, 80, 3), dtype=np.float32), "float32"),
        "photo.jpg": (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), "uint8"),
        "pixels.npy": (rng.random((60, 80, 2), dtype=np.float32), "float32"),
        # Flat, so it compresses a thousandfold, but 12 MB decoded is under the 64 MiB never called a bomb.
        "flat.png": (np.full((2000, 2000, 3), 90, np.uint8), "uint8"),
    }
    for name, (array, dtype) in images.items():
        write_image(tmp_path / name, array)
        status, answer = upload(server, (tmp_path / name).read_bytes())
        assert status == 201, (name, answer)
        height, width, channels = array.shape
        assert (answer["height"], answer["width"], answer["channels"], answer["dtype"]) == (
            height,
            width,
            channels,
            dtype,
        ), name


# --------------------------------------------------------------------------- image_io, no server
def test_headers_predict_the_decoded_array(tmp_path: Path) -> None:
    """What the budget is computed from matches what the decoders produce (never less)."""
    rng = np.random.default_rng(4)
    write_image(tmp_path / "a.png", rng.integers(0, 65536, (5, 6, 2), dtype=np.uint16))
    write_image(tmp_path / "b.webp", rng.integers(0, 256, (5, 6, 4), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "c.tif", rng.random((5, 6, 3)), photometric="rgb")  # float64
    tifffile.imwrite(tmp_path / "d.tif", rng.integers(0, 4, (5, 6), dtype=np.uint8), photometric="palette",
                     colormap=np.arange(768).reshape(3, 256).astype(np.uint16))  # fmt: skip
    np.save(tmp_path / "e.npy", rng.random((5, 6)).astype(np.float16))
    palette = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).quantize(colors=4)
    palette.save(tmp_path / "f.png", transparency=0)  # palette + tRNS: decodes as RGBA
    Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)).convert("CMYK").save(tmp_path / "g.jpg")
    for path in sorted(tmp_path.iterdir()):
        header, array = probe_image(path), read_image(path)
        assert (header.height, header.width, header.channels) == array.shape, path.name
        assert header.stored_bytes == array.nbytes, path.name
        assert header.decoded_bytes >= header.height * header.width * header.channels * header.sample_bytes
    assert probe_image(tmp_path / "c.tif").sample_bytes == 8
    assert probe_image(tmp_path / "g.jpg").decoded_bytes == 5 * 6 * 4  # CMYK decodes 4 bytes a pixel


def test_read_image_takes_a_budget(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    path.write_bytes(imagecodecs.png_encode(np.zeros((3000, 3000, 4), np.uint16)))  # 72 MB from 60 KB
    with pytest.raises(
        DecodeBudgetError, match=r"72 MB of memory to decode; this program decodes at most 10 MB"
    ):
        read_image(path, DecodeBudget(10 * MB, 250, who="this program"))
    with pytest.raises(DecodeBudgetError, match=r"likely decompression bombs"):
        read_image(path, DecodeBudget(100 * MB, 250))
    assert read_image(path, DecodeBudget(100 * MB, 2000)).shape == (3000, 3000, 4)
    assert issubclass(DecodeBudgetError, ImageInputError)


# --------------------------------------------------------------------------- expiry
def _store(root: Path, ttl: float) -> ImageStore:
    return ImageStore(root, max_pixels=10**8, max_bytes=1 << 30, ttl=ttl)


async def _slowly(data: bytes) -> AsyncIterator[bytes]:
    """The body in 64 KB chunks with a pause after each, as a network would deliver it."""
    for start in range(0, len(data), 1 << 16):
        yield data[start : start + (1 << 16)]
        await asyncio.sleep(0.001)


def test_expiry_never_touches_an_upload_in_progress(tmp_path: Path) -> None:
    """Sweeps run all the time while ten uploads are received and ingested; first with the real clock
    (hidden work is young), then an hour and more ahead (only "this process is busy with it" protects)."""
    rng = np.random.default_rng(5)
    body = imagecodecs.png_encode(rng.integers(0, 256, (1200, 1200, 3), dtype=np.uint8))  # 4.3 MB
    store = _store(tmp_path / "images", ttl=60.0)

    def run(ahead: float) -> list[str]:
        done = threading.Event()
        results: list[str] = []
        errors: list[BaseException] = []

        def sweep() -> None:
            while not done.is_set():
                store.expire(time.time() + ahead, set())

        todo = queue.SimpleQueue[int]()
        for number in range(5):
            todo.put(number)

        def worker() -> None:
            try:
                while True:
                    todo.get_nowait()
                    tmp = asyncio.run(store.receive(_slowly(body), "image/png"))
                    results.append(store.ingest(tmp, "image/png").id)
            except queue.Empty:
                pass
            except BaseException as exc:  # reported below
                errors.append(exc)

        sweeper = threading.Thread(target=sweep, daemon=True)
        sweeper.start()
        workers = [threading.Thread(target=worker) for _ in range(2)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)
        done.set()
        sweeper.join(10)
        assert not errors, errors
        assert len(results) == 5
        return results

    for image_id in run(ahead=0.0):
        assert store.get(image_id).width == 1200
        assert store.load(image_id).shape == (1200, 1200, 3)
    run(ahead=STALE_WORK_AFTER + 3600)  # every ingest succeeded although all hidden work was "old"
    # Nothing hidden was left behind, and the sweep was live: with the clock that far ahead it expired
    # every finished image.
    store.expire(time.time() + STALE_WORK_AFTER + 3600, set())
    assert list(store.root.iterdir()) == []


def test_crash_leftovers_are_cleaned_and_live_work_is_not(tmp_path: Path) -> None:
    store = _store(tmp_path / "images", ttl=3600.0)
    root = store.root
    old = time.time() - 2 * 3600
    entries = {
        ".ingest-" + "a" * 24: True,  # old working folder: a crash mid-ingest
        ".ingest-" + "b" * 24: False,  # young: maybe another process's ingest
        ".upload-" + "c" * 16: True,
        ".upload-" + "d" * 16: False,
        "e" * 24: True,  # an image folder without meta.json, older than the ttl
        "f" * 24: False,  # the same, young
    }
    for name, is_old in entries.items():
        path = root / name
        if name.startswith(".upload-"):
            path.write_bytes(b"partial")
        else:
            path.mkdir()
            (path / "pixels.npy").write_bytes(b"partial")
        if is_old:
            os.utime(path, (old, old))
    kept = store.ingest(_write_npy(tmp_path / "in-use.npy"), "application/x-npy").id

    # An upload still being received into an old-looking file is this process's: never deleted.
    release, received = threading.Event(), threading.Event()

    async def paused() -> AsyncIterator[bytes]:
        yield _npy_body()[:100]
        received.set()
        release.wait(10)
        yield _npy_body()[100:]

    uploaded: list[Path] = []
    receiver = threading.Thread(
        target=lambda: uploaded.append(asyncio.run(store.receive(paused(), "application/x-npy")))
    )
    receiver.start()
    assert received.wait(10)
    (receiving,) = {path.name for path in root.glob(".upload-*")} - set(entries)
    os.utime(root / receiving, (old, old))

    store.expire(time.time(), set())
    release.set()
    receiver.join(10)
    left = {path.name for path in root.iterdir()}
    assert left == {name for name, is_old in entries.items() if not is_old} | {kept, receiving}
    assert store.ingest(uploaded[0], "application/x-npy").height == 4
    # Once its ttl has passed, an image stays only while a job needs it.
    later = time.time() + store.ttl + 1
    store.expire(later, {kept})
    assert kept in {path.name for path in root.iterdir()}
    store.expire(later, set())
    assert kept not in {path.name for path in root.iterdir()}


def _npy_body() -> bytes:
    return npy_bytes(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))


def _write_npy(path: Path) -> Path:
    path.write_bytes(_npy_body())
    return path
