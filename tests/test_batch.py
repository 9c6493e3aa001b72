"""``python -m backend batch``: folders through the engine and the service, resumable, on tiny models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from backend.batch import (
    STATE_DIR,
    BatchError,
    BatchOptions,
    BatchProgress,
    LocalRunner,
    Manifest,
    OptionsChanged,
    derive_seed,
    run_batch,
)
from backend.engine import CancelToken, Engine
from backend.image_io import read_image, read_mask, write_image
from backend.pipelines.params import RestoreParams
from tests.conftest import ROOT, fill, run_backend
from tests.service_server import ServerProcess

MODEL = "tiny-full"
BASE = RestoreParams(steps=1, process_size=256, fidelity_fg=1.5, fidelity_bg=0.3)
KNOBS = ["--model", MODEL, "--steps", "1", "--process-size", "256", "--fidelity-fg", "1.5"]
KNOBS += ["--fidelity-bg", "0.3", "--quiet"]


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["full"].parent


@pytest.fixture(scope="module")
def engine(models: Path, one_thread: None) -> Engine:
    return Engine(models, device="cpu")


def make_folder(root: Path) -> dict[str, np.ndarray]:
    """Nested images in every format and depth (with alpha and grey), a corrupt file and a non-image."""
    rng = np.random.default_rng(0)
    images = {
        "a.png": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8),
        "grey.png": rng.integers(0, 256, (32, 32), dtype=np.uint8),
        "d.jpg": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "sub/b.tif": rng.integers(0, 65536, (32, 32), dtype=np.uint16),
        "sub/alpha16.tiff": rng.integers(0, 65536, (32, 32, 4), dtype=np.uint16),
        "sub/deeper/c.webp": rng.integers(0, 256, (32, 32, 4), dtype=np.uint8),
    }
    for rel, pixels in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, pixels)
    (root / "sub/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"hidden files are not part of a batch")
    return {rel: read_image(root / rel) for rel in images}


def hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def outputs(root: Path) -> dict[str, bytes]:
    """Result files (the batch's state folder aside), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and STATE_DIR not in p.parts
    }


def options(src: Path, out: Path, models: Path, **changes: object) -> BatchOptions:
    values: dict[str, object] = {
        "in_dir": src,
        "out_dir": out,
        "params": BASE,
        "model": MODEL,
        "models_dir": models,
        "recursive": True,
        "seed": 11,
    }
    values.update(changes)
    return BatchOptions(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("batch-in")
    make_folder(src)
    return src


@pytest.fixture(scope="module")
def reference(folder: Path, models: Path, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted batch over ``folder`` (seed 11): what every other way of running must equal."""
    out = tmp_path_factory.mktemp("batch-reference")
    summary = run_batch(options(folder, out, models), LocalRunner(engine=engine))
    assert len(summary.done) == 6 and [r.relpath for r in summary.failed] == ["sub/broken.png"]
    return out


def test_cli_restores_a_nested_folder_and_resumes_without_redoing(
    tmp_path: Path, models: Path, engine: Engine
) -> None:
    src = tmp_path / "in"
    originals = make_folder(src)
    before = hashes(src)
    out = tmp_path / "out"
    done = run_backend(
        "batch", str(src), str(out), "--recursive", "--models", str(models), *KNOBS, OMP_NUM_THREADS="1"
    )
    assert done.returncode == 1, done.stderr  # one corrupt file: reported, the rest done
    assert "sub/broken.png: " in done.stdout and "notes.txt: not an image file" in done.stdout
    assert "done                   6" in done.stdout and "Traceback" not in done.stderr
    for rel, pixels in originals.items():
        result = read_image(out / rel)
        assert result.dtype == pixels.dtype
        assert result.shape[:2] == (pixels.shape[0] * 2, pixels.shape[1] * 2)
        assert result.shape[2:] == pixels.shape[2:] or (rel == "grey.png" and result.ndim == 2)
    assert sorted(outputs(out)) == sorted(originals)  # same relative paths and formats; nothing else
    assert hashes(src) == before  # originals untouched
    records = Manifest(out).records()
    assert {r.relpath: r.state for r in records} == {
        **dict.fromkeys(originals, "done"),
        "sub/broken.png": "failed",
    }
    done_record = next(r for r in records if r.relpath == "a.png")
    assert done_record.model == MODEL and done_record.params and done_record.params["steps"] == 1
    assert done_record.sha256 == hashlib.sha256((out / "a.png").read_bytes()).hexdigest()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts}
    again = run_backend(
        "batch", str(src), str(out), "--recursive", "--models", str(models), *KNOBS, OMP_NUM_THREADS="1"
    )
    assert again.returncode == 1 and "skipped (done before)  6" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing redone

    # Without --recursive only the top folder; OUT_DIR == IN_DIR and a different resume are usage errors.
    flat = run_batch(options(src, tmp_path / "flat", models, recursive=False), LocalRunner(engine=engine))
    assert flat.exit_code == 0
    assert sorted(outputs(tmp_path / "flat")) == ["a.png", "d.jpg", "grey.png"]
    same = run_backend("batch", str(src), str(src), "--models", str(models), *KNOBS, OMP_NUM_THREADS="1")
    assert same.returncode == 2 and "OUT_DIR is IN_DIR" in same.stderr
    changed = run_backend(
        "batch",
        str(src),
        str(out),
        "--recursive",
        "--models",
        str(models),
        *KNOBS,
        "--steps",
        "2",
        OMP_NUM_THREADS="1",
    )
    assert changed.returncode == 2 and "params.steps" in changed.stderr
    assert hashes(src) == before


def test_sigkill_mid_batch_resumes_without_redoing_or_half_files(
    tmp_path: Path, models: Path, folder: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "backend", "batch", str(folder), str(out), "--recursive", "--seed", "11"]
    command += ["--models", str(models), *KNOBS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not outputs(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the batch ended before it could be killed"
    written = outputs(out)
    assert 1 <= len(written) < 6
    for rel in written:
        read_image(out / rel)  # every file present is whole
    kept = {
        r.relpath: (out / r.relpath).stat().st_mtime_ns for r in Manifest(out).records() if r.state == "done"
    }

    resumed = run_backend(
        "batch",
        str(folder),
        str(out),
        "--recursive",
        "--seed",
        "11",
        "--models",
        str(models),
        *KNOBS,
        OMP_NUM_THREADS="1",
    )
    assert resumed.returncode == 1, resumed.stderr  # the corrupt file
    assert {rel: (out / rel).stat().st_mtime_ns for rel in kept} == kept  # done before the kill: not redone
    records = [r for r in Manifest(out).records() if r.state == "done"]
    assert len(records) == len({r.relpath for r in records}) == 6  # each image done exactly once
    assert outputs(out) == outputs(reference)
    assert not [p for p in out.rglob(".*.tmp")]


def test_seed_gives_the_same_pixels_however_the_batch_is_split(
    tmp_path: Path, models: Path, engine: Engine, folder: Path, reference: Path
) -> None:
    halves = (["a.png", "sub/b.tif", "sub/deeper/c.webp"], ["d.jpg", "grey.png", "sub/alpha16.tiff"])
    merged: dict[str, bytes] = {}
    for i, half in enumerate(halves):
        src = tmp_path / f"in{i}"
        for rel in half:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / rel, src / rel)
        summary = run_batch(options(src, tmp_path / f"out{i}", models), LocalRunner(engine=engine))
        assert len(summary.done) == 3
        assert {r.relpath: r.seed for r in summary.done} == {rel: derive_seed(11, rel) for rel in half}
        merged.update(outputs(tmp_path / f"out{i}"))
    assert merged == outputs(reference)


def test_interrupt_then_resume_equals_an_uninterrupted_batch(
    tmp_path: Path, models: Path, engine: Engine, folder: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    cancel = CancelToken()

    def progress(p: BatchProgress) -> None:
        if p.stage == "done":  # the first image is recorded: stop the batch as Ctrl+C would
            cancel.cancel()

    first = run_batch(options(folder, out, models), LocalRunner(engine=engine), progress, cancel)
    assert first.interrupted and first.exit_code == 130 and len(first.done) == 1 and first.pending == 6
    rest = run_batch(options(folder, out, models), LocalRunner(engine=engine))
    assert rest.already_done == [first.done[0].relpath] and len(rest.done) == 5
    assert outputs(out) == outputs(reference)

    with pytest.raises(OptionsChanged, match=r"params\.prompt"):
        run_batch(options(folder, out, models, params=BASE.with_(prompt="x")), LocalRunner(engine=engine))
    forced = run_batch(
        options(folder, out, models, params=BASE.with_(prompt="x"), force_options=True),
        LocalRunner(engine=engine),
    )
    assert len(forced.already_done) == 6  # forcing accepts the new options; done files stay done


def test_side_files_give_per_image_prompts_and_masks(
    tmp_path: Path, models: Path, engine: Engine, folder: Path
) -> None:
    mask = np.zeros((32, 40), np.uint8)
    mask[4:20, 8:30] = 255
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "masks" / "a-mask.png", mask)
    csv_file = tmp_path / "params.csv"
    csv_file.write_text("file,prompt,mask,guidance\na.png,a red barn,masks/a-mask.png,4.5\nd.jpg,a dog,,\n")
    summary = run_batch(
        options(folder, tmp_path / "csv", models, side_file=csv_file), LocalRunner(engine=engine)
    )
    by_file = {r.relpath: r for r in summary.done}
    assert by_file["a.png"].params is not None and by_file["a.png"].params["prompt"] == "a red barn"
    assert by_file["a.png"].params["guidance"] == 4.5 and by_file["d.jpg"].params["prompt"] == "a dog"
    assert by_file["grey.png"].params["prompt"] == ""
    # The batch's output is exactly the engine's run with that prompt, mask and seed.
    direct = engine.restore(
        read_image(folder / "a.png"),
        BASE.with_(prompt="a red barn", guidance=4.5, seed=derive_seed(11, "a.png")),
        mask=read_mask(tmp_path / "masks" / "a-mask.png", (32, 40)),
        model=MODEL,
    )
    assert np.array_equal(read_image(tmp_path / "csv" / "a.png"), direct.image)

    json_file = tmp_path / "params.json"
    json_file.write_text(json.dumps({"sub/b.tif": {"prompt": "old map", "steps": 2, "seed": 5}}, indent=1))
    summary = run_batch(
        options(folder, tmp_path / "json", models, side_file=json_file, recursive=True),
        LocalRunner(engine=engine),
    )
    record = next(r for r in summary.done if r.relpath == "sub/b.tif")
    assert record.seed == 5 and record.params is not None and record.params["steps"] == 2
    assert record.params["prompt"] == "old map"

    bad = tmp_path / "bad.csv"
    bad.write_text("file,prompt,strength\na.png,fine,1\n")
    with pytest.raises(BatchError, match=r"bad\.csv:2: unknown parameter\(s\): strength"):
        run_batch(options(folder, tmp_path / "bad", models, side_file=bad), LocalRunner(engine=engine))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n "a.png": {"prompt": "ok"},\n "d.jpg": {"steps": 500}\n}\n')
    with pytest.raises(BatchError, match=r"bad\.json:3: steps must be between 1 and 200"):
        run_batch(options(folder, tmp_path / "bad2", models, side_file=bad_json), LocalRunner(engine=engine))
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    bad.write_text("file,prompt,steps\na.png,fixed,2\n")  # a fixed side file is not "other options"
    fixed = run_batch(options(folder, tmp_path / "bad", models, side_file=bad), LocalRunner(engine=engine))
    assert len(fixed.done) == 6 and next(r for r in fixed.done if r.relpath == "a.png").params["steps"] == 2


def test_masks_folder_by_matching_name_and_faces(tmp_path: Path, models: Path, engine: Engine) -> None:
    src = tmp_path / "in"
    (src / "people").mkdir(parents=True)
    portrait = data.astronaut()[::3, ::3]  # 171×171, her face still found
    write_image(src / "people" / "astronaut.png", portrait)
    write_image(src / "plain.png", np.full((32, 32, 3), 128, np.uint8))
    mask = np.zeros((171, 171), np.uint8)
    mask[:80] = 255
    (tmp_path / "masks" / "people").mkdir(parents=True)
    write_image(tmp_path / "masks" / "people" / "astronaut.tif", mask)
    params = BASE.with_(scale=1.0)
    summary = run_batch(
        options(src, tmp_path / "out", models, params=params, masks_dir=tmp_path / "masks"),
        LocalRunner(engine=engine),
    )
    assert summary.exit_code == 0 and len(summary.done) == 2
    direct = engine.restore(
        portrait,
        params.with_(seed=derive_seed(11, "people/astronaut.png")),
        mask=read_mask(tmp_path / "masks" / "people" / "astronaut.tif", (171, 171)),
        model=MODEL,
    )
    assert np.array_equal(read_image(tmp_path / "out" / "people" / "astronaut.png"), direct.image)

    faces = run_batch(
        options(src, tmp_path / "faces", models, params=params.with_(faces="on")), LocalRunner(engine=engine)
    )
    record = next(r for r in faces.done if r.relpath == "people/astronaut.png")
    assert record.faces >= 1 and record.params is not None and record.params["faces"] == "on"


def test_server_mode_gives_the_same_pixels_as_local(
    tmp_path: Path, models: Path, folder: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    with ServerProcess(models, tmp_path) as server:
        done = run_backend(
            "batch", str(folder), str(out), "--recursive", "--seed", "11", "--server", server.url, *KNOBS
        )
    assert done.returncode == 1, done.stderr  # the corrupt file, read here before anything is sent
    assert "done                   6" in done.stdout and "sub/broken.png: " in done.stdout
    assert {r.worker for r in Manifest(out).records() if r.state == "done"} == {"server"}
    assert outputs(out) == outputs(reference)


def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path: Path, models: Path, folder: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "backend", "batch", str(folder), str(out), "--recursive", "--seed", "11"]
    command += ["--models", str(models), *KNOBS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not Manifest(out).records() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert (
        "interrupted; run the same command again to resume" in stderr and "not done (interrupted)" in stdout
    )
    records = Manifest(out).records()
    assert records and (out / STATE_DIR / "manifest.jsonl").read_bytes().endswith(b"\n")
    for record in records:
        if record.state == "done":
            assert hashlib.sha256((out / record.relpath).read_bytes()).hexdigest() == record.sha256


def test_torn_manifest_line_and_existing_outputs(tmp_path: Path, models: Path, engine: Engine) -> None:
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "one.png", np.full((32, 32, 3), 90, np.uint8))
    write_image(src / "two.png", np.full((32, 32, 3), 160, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "two.png").write_bytes(b"the user's own file")
    kept = run_batch(options(src, out, models, existing="keep"), LocalRunner(engine=engine))
    assert [r.relpath for r in kept.done] == ["one.png"] and [r.relpath for r in kept.skipped] == ["two.png"]
    assert (out / "two.png").read_bytes() == b"the user's own file"

    # Power loss mid-line: the torn line is ignored, the next record starts on a line of its own.
    journal = out / STATE_DIR / "manifest.jsonl"
    with journal.open("ab") as fh:
        fh.write(b'{"relpath": "two.png", "state": "do')
    records = Manifest(out).records()  # the skip and the done image, not the torn line
    assert sorted((r.relpath, r.state) for r in records) == [("one.png", "done"), ("two.png", "skipped")]
    replaced = run_batch(
        options(src, out, models, existing="keep", force_options=True), LocalRunner(engine=engine)
    )
    assert replaced.already_done == ["one.png"] and [r.relpath for r in replaced.skipped] == ["two.png"]
    replaced = run_batch(options(src, out, models, force_options=True), LocalRunner(engine=engine))
    assert replaced.already_done == ["one.png"] and [r.relpath for r in replaced.done] == ["two.png"]
    assert read_image(out / "two.png").shape == (64, 64, 3)
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b"" and b'{"relpath": "two.png", "state": "do' in lines  # kept apart from the next
    assert Manifest(out).latest()["two.png"].state == "done"


def test_a_full_disk_stops_the_batch_plainly_and_it_resumes_once_freed(
    small_disk: Path, models: Path, engine: Engine, folder: Path, reference: Path
) -> None:
    """The first image is written, then the disk fills: the batch stops (no traceback, no half file,
    no failure recorded against the images), and once space is freed the same batch finishes."""
    out = small_disk / "restored"
    filled: list[Path] = []

    def progress(p: BatchProgress) -> None:
        if p.done == 1 and not filled:  # the first result is written and journalled
            filled.append(fill(small_disk))

    stopped = run_batch(options(folder, out, models), LocalRunner(engine=engine), progress)
    assert len(stopped.done) == 1 and not stopped.failed and stopped.exit_code == 1
    assert "disk is full" in stopped.aborted and "run the same command again" in stopped.aborted
    assert stopped.pending == 6 and "not done (stopped)" in stopped.table()
    assert not [p for p in out.rglob("*.tmp")]  # no temporary file left behind
    for filler in (*filled, small_disk / "filler-small"):
        filler.unlink()
    resumed = run_batch(options(folder, out, models), LocalRunner(engine=engine))
    assert resumed.already_done == [stopped.done[0].relpath] and len(resumed.done) == 5
    assert outputs(out) == outputs(reference)
