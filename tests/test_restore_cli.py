"""``python -m backend upscale|colorize`` end to end in a child process, on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.image_io import read_image, write_image
from tests.conftest import run_backend

FAST = ["--steps", "2", "--seed", "5", "--process-size", "256", "--quiet"]


def test_upscale_with_mask_end_to_end(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    src = tmp_path / "in.png"
    img = np.random.default_rng(0).integers(0, 256, (30, 44, 4), dtype=np.uint8)
    write_image(src, img)
    mask = np.zeros((30, 44), np.uint8)
    mask[5:20, 10:30] = 255
    write_image(tmp_path / "mask.png", mask)
    out = tmp_path / "out.png"
    args = ["upscale", str(src), "-o", str(out), "--model", str(tiny_models["full"]), "--scale", "2"]
    args += ["--mask", str(tmp_path / "mask.png"), "--fidelity-fg", "1.2", "--fidelity-bg", "0.6", *FAST]
    done = run_backend(*args)
    assert done.returncode == 0, done.stderr
    assert "seed 5" in done.stdout and "88×60" in done.stdout
    result = read_image(out)
    assert result.shape == (60, 88, 4) and result.dtype == np.uint8
    assert np.array_equal(read_image(src), img)  # the input is untouched

    # Same seed, same result; the run is reproducible from the CLI too.
    again = tmp_path / "again.png"
    done = run_backend(*[a if a != str(out) else str(again) for a in args])
    assert done.returncode == 0, done.stderr
    assert np.array_equal(read_image(again), result)


def test_colorize_16_bit_tiff(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    src = tmp_path / "old.tif"
    grey = np.random.default_rng(1).integers(0, 65536, (24, 32), dtype=np.uint16)
    write_image(src, grey)
    out = tmp_path / "colour.tif"
    done = run_backend("colorize", str(src), "-o", str(out), "--model", str(tiny_models["color"]), *FAST)
    assert done.returncode == 0, done.stderr
    result = read_image(out)
    assert result.shape == (24, 32, 3) and result.dtype == np.uint16


def test_cli_errors_are_plain_and_leave_files_alone(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    model = ["--model", str(tiny_models["full"]), *FAST]
    src = tmp_path / "in.png"
    write_image(src, np.zeros((8, 8, 3), np.uint8))

    done = run_backend("upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"), *model)
    assert done.returncode == 1 and "missing.png" in done.stderr and "Traceback" not in done.stderr

    existing = tmp_path / "existing.png"
    existing.write_bytes(b"precious")
    done = run_backend("upscale", str(src), "-o", str(existing), *model)
    assert done.returncode == 1 and "--force" in done.stderr
    assert existing.read_bytes() == b"precious"

    write_image(tmp_path / "small.png", np.zeros((4, 4), np.uint8))
    done = run_backend(
        "upscale", str(src), "-o", str(tmp_path / "o.png"), "--mask", str(tmp_path / "small.png"), *model
    )
    assert done.returncode == 1 and "4×4" in done.stderr.replace("x", "×") and "Traceback" not in done.stderr

    done = run_backend("upscale", str(src), "-o", str(tmp_path / "o.png"), "--scale", "9", *model)
    assert done.returncode == 1 and "scale must be between 1 and 4" in done.stderr

    done = run_backend("colorize", str(src), "-o", str(tmp_path / "o.png"), *model)
    assert done.returncode == 1 and "does not do colorize" in done.stderr

    done = run_backend("upscale", str(src), "-o", str(src), *model, "--force")
    assert done.returncode == 1 and "replace the input" in done.stderr

    done = run_backend("upscale", str(src))
    assert done.returncode == 2
    assert not (tmp_path / "o.png").exists()
