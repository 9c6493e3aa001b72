from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.models.tiny import write_tiny_model

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def run_backend(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m backend ARGS`` in a child process (hub settings are read at import), extra env added."""
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session", autouse=True)
def user_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One per-user server secret for every server and client of the run (tests move config folders)."""
    path = tmp_path_factory.mktemp("secret") / "server-secret"
    old = os.environ.get("GDU_SECRET_FILE")
    os.environ["GDU_SECRET_FILE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GDU_SECRET_FILE", None)
    else:
        os.environ["GDU_SECRET_FILE"] = old


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model folder per variant (plus a full one with the RRDB ControlNet), official layout."""
    root = tmp_path_factory.mktemp("models")
    return {
        "full": write_tiny_model(root / "tiny-full", "full", seed=1),
        "light": write_tiny_model(root / "tiny-light", "light", seed=2),
        "color": write_tiny_model(root / "tiny-color", "color", seed=3),
        "full_rrdb": write_tiny_model(root / "tiny-full-rrdb", "full", seed=4, use_rrdb=True),
    }


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PASD-SDXL with a tiny SDXL base (official layouts), in a model folder of its own."""
    return write_tiny_model(tmp_path_factory.mktemp("sdxl-models") / "tiny-sdxl", "sdxl", seed=6)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy runner their spin-waits cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_supir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SUPIR in the official file layouts (pickled .ckpt, SDXL single file), in its own folder."""
    from backend.models.supir.tiny import write_tiny_supir

    return write_tiny_supir(tmp_path_factory.mktemp("supir-models") / "tiny-supir", seed=7)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block; removing the returned file and ``filler-small`` frees it."""
    filler = disk / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    with contextlib.suppress(OSError), (disk / "filler-small").open("wb") as fh:
        while True:
            fh.write(b"\0" * 512)
            fh.flush()
    return filler


def screenshot(widget: Any, name: str) -> Path:
    """Save a widget's picture; into docs/images/ (the README's pictures) only with
    GDU_UPDATE_SCREENSHOTS=1, so a test run leaves the checkout as it was."""
    if os.environ.get("GDU_UPDATE_SCREENSHOTS") == "1":
        path = ROOT / "docs" / "images" / name
    else:
        path = Path(tempfile.gettempdir()) / "gdu-screenshots" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(path)), path
    return path
