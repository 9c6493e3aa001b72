"""``batch --ray``: a local Ray with two CPU actors on tiny models gives a plain batch's bytes (files shared
or sent through Ray), shows the actors' stages, survives a lost actor, and shares its manifest with plain
batches (each resumes the other); ``--ray ADDRESS`` does the same on a separately started cluster."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from backend.batch import BatchProgress, LocalRunner, Manifest, run_batch
from backend.engine import CancelToken, Engine
from backend.image_io import write_image
from tests import test_batch
from tests.conftest import ROOT
from tests.test_batch import KNOBS, options, outputs

try:  # CI installs the ray extra: a missing Ray fails here, it never skips
    import ray
except ImportError as exc:  # pragma: no cover - a broken set-up
    raise RuntimeError("Ray is not installed: pip install -e '.[ray]' (CI does)") from exc
from backend.batch_ray import RayRunner

# test_batch's fixtures: the same tiny model, engine, folder and uninterrupted reference batch
models, engine = test_batch.models, test_batch.engine
folder, reference = test_batch.folder, test_batch.reference


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture
def ray_runner(cluster: None, models: Path) -> Iterator[RayRunner]:
    """Two CPU actors, each loading the tiny model once; stopped after the test (the cluster has 2 CPUs)."""
    runner = RayRunner(actors=2, models_dir=models, device="cpu")
    yield runner
    runner.close()


@pytest.mark.parametrize("files", ["shared", "send"])
def test_ray_batch_equals_a_plain_batch(
    cluster: None, tmp_path: Path, models: Path, folder: Path, reference: Path, files: str
) -> None:
    seen: list[BatchProgress] = []
    runner = RayRunner(actors=2, models_dir=models, device="cpu", files=files)
    try:
        summary = run_batch(options(folder, tmp_path / "out", models), runner, seen.append)
    finally:
        runner.close()
    assert len(summary.done) == 6 and [r.relpath for r in summary.failed] == ["sub/broken.png"]
    assert {r.worker for r in summary.done} == {"ray-0", "ray-1"}  # both actors took a share
    assert outputs(tmp_path / "out") == outputs(reference)
    # the progress bar hears each image's stages from inside the actors, not only queued/done
    # (the actors' latest stage is polled 4 times a second, so an image may skip a stage in between)
    inside = {"load", "prescale", "describe", "encode", "denoise", "decode", "finish"}
    heard = {p.current for p in seen if p.stage in inside}
    assert len(heard) >= 3 and heard <= {r.relpath for r in summary.done + summary.failed}
    assert "denoise" in {p.stage for p in seen}
    for r in summary.done:
        stages = [p.stage for p in seen if p.current == r.relpath]
        assert stages[0] == "queued" and stages[-1] == "done"
    broken = next(r for r in summary.failed if r.relpath == "sub/broken.png")
    assert str(folder / "sub/broken.png") in broken.reason  # the user's file, never a temporary copy
    assert all(0 <= p.done <= p.total == 7 for p in seen)


def test_sent_files_carry_masks_and_per_image_prompts(
    cluster: None, tmp_path: Path, models: Path, engine: Engine
) -> None:
    """``files="send"``: the mask travels with its image and a side file's prompt reaches the actor."""
    src = tmp_path / "in"
    (src / "album").mkdir(parents=True)
    rng = np.random.default_rng(3)
    write_image(src / "album" / "p1.png", rng.integers(0, 256, (40, 32, 3), dtype=np.uint8))
    write_image(src / "p2.tif", rng.integers(0, 65536, (32, 32), dtype=np.uint16))
    (tmp_path / "masks" / "album").mkdir(parents=True)
    mask = np.zeros((40, 32), np.uint8)
    mask[:20] = 255
    write_image(tmp_path / "masks" / "album" / "p1.webp", mask)
    side = tmp_path / "prompts.csv"
    side.write_text("file,prompt\nalbum/p1.png,a red barn in snow\n", encoding="utf-8")
    extra = {"masks_dir": tmp_path / "masks", "side_file": side}
    plain = run_batch(options(src, tmp_path / "plain", models, **extra), LocalRunner(engine=engine))
    runner = RayRunner(actors=1, models_dir=models, device="cpu", files="send")
    try:
        sent = run_batch(options(src, tmp_path / "sent", models, **extra), runner)
    finally:
        runner.close()
    assert plain.exit_code == sent.exit_code == 0 and len(sent.done) == 2
    assert outputs(tmp_path / "sent") == outputs(tmp_path / "plain")
    record = next(r for r in sent.done if r.relpath == "album/p1.png")
    assert record.params is not None and record.params["prompt"] == "a red barn in snow"
    assert record.worker == "ray-0"


def test_a_lost_actor_s_images_are_retried_elsewhere(
    ray_runner: RayRunner, tmp_path: Path, models: Path, folder: Path, reference: Path
) -> None:
    killed: list[str] = []

    def progress(p: BatchProgress) -> None:
        if p.stage == "done" and not killed:
            killed.append(p.current)
            ray.kill(ray_runner.actors[0])

    summary = run_batch(options(folder, tmp_path / "out", models), ray_runner, progress)
    assert killed and len(summary.done) == 6 and len(summary.failed) == 1
    done = [r for r in Manifest(tmp_path / "out").records() if r.state == "done"]
    assert len(done) == len({r.relpath for r in done}) == 6
    assert outputs(tmp_path / "out") == outputs(reference)


@pytest.mark.parametrize("first", ["ray", "plain"])
def test_ray_and_plain_batches_resume_each_other(
    ray_runner: RayRunner,
    tmp_path: Path,
    models: Path,
    engine: Engine,
    folder: Path,
    reference: Path,
    first: str,
) -> None:
    out = tmp_path / "out"
    cancel = CancelToken()

    def progress(p: BatchProgress) -> None:
        if p.stage == "done":
            cancel.cancel()

    runners = [ray_runner, LocalRunner(engine=engine)]
    if first == "plain":
        runners.reverse()
    started = run_batch(options(folder, out, models), runners[0], progress, cancel)
    runners[0].close()  # as the CLI does on Ctrl+C: no actor writes on while the other batch runs
    assert started.interrupted and 1 <= len(started.done) < 6
    resumed = run_batch(options(folder, out, models), runners[1])
    assert sorted(resumed.already_done) == sorted(r.relpath for r in started.done)
    assert len(resumed.done) == 6 - len(started.done) and not resumed.interrupted
    assert outputs(out) == outputs(reference)


TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # the test cluster's own


def _without_token() -> dict[str, str]:
    """This environment without Ray's token settings (an in-process ray.init sets RAY_AUTH_MODE)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A Ray cluster started the way a studio starts one (``ray start --head``), in its own temp folder.

    Its own temp folder keeps it apart from this module's in-process Ray (ray.init without an address
    would otherwise join it). ``--block`` ties the cluster to the process: terminating it stops them all.
    """
    temp = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: Ray's socket paths have a limit
    port = _free_port()
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", **TOKEN}
    env.pop("PYTHONPATH", None)  # the cluster's workers get the backend from the driver (py_modules)
    command = [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1"]
    command += ["--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}"]
    process = subprocess.Popen(
        command, cwd=temp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not (temp / "ray_current_cluster").exists():
            if process.poll() is not None:
                raise RuntimeError(f"ray start failed: {process.stderr.read() if process.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("ray start did not come up within 120 s")
            time.sleep(0.5)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_batch_on_a_ray_cluster_address(
    head: str, tmp_path: Path, models: Path, folder: Path, reference: Path
) -> None:
    """``--ray ADDRESS`` from a separate process: without the cluster's token it is refused with what to
    set; with it the cluster's actors do the work, bytes travel through Ray (the default for a cluster),
    and the result equals a plain batch's."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "backend", "batch", str(folder), str(out), "--recursive", "--seed", "11"]
    command += ["--models", str(models), "--device", "cpu", "--ray", head, "--ray-actors", "2", *KNOBS]
    env = {**_without_token(), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and outputs(out) == {}
    done = subprocess.run(
        command, cwd=ROOT, env={**env, **TOKEN}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stderr  # 1: the corrupt file failed, the rest are done
    assert re.search(r"^done\s+6$", done.stdout, re.M) and "failed  sub/broken.png" in done.stdout
    assert outputs(out) == outputs(reference)
    workers = {r.worker for r in Manifest(out).records() if r.state == "done"}
    assert workers == {"ray-0", "ray-1"}


def test_a_cluster_address_nobody_listens_on_fails_in_seconds(
    tmp_path: Path, models: Path, folder: Path
) -> None:
    """Ray alone retries a dead address for minutes; the batch says what to do instead, and a malformed
    address is bad usage (exit 2) before anything runs."""
    command = [sys.executable, "-m", "backend", "batch", str(folder), str(tmp_path / "out"), "--recursive"]
    command += ["--models", str(models), *KNOBS, "--ray"]
    env = {**_without_token(), "RAY_USAGE_STATS_ENABLED": "0"}
    dead = subprocess.run(
        [*command, f"127.0.0.1:{_free_port()}"], env=env, capture_output=True, text=True, timeout=120
    )
    assert dead.returncode == 1 and "cannot reach the Ray cluster" in dead.stderr, dead.stderr
    assert "ray start --head" in dead.stderr and "Traceback" not in dead.stderr
    command[5] = str(tmp_path / "out2")
    malformed = subprocess.run([*command, "gpu-box"], env=env, capture_output=True, text=True, timeout=120)
    assert malformed.returncode == 2 and "expected HOST:PORT" in malformed.stderr
    assert not (tmp_path / "out2").exists()  # bad usage: nothing was started
