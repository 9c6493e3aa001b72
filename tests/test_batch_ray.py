"""``batch --ray``: a local Ray with two CPU actors on tiny models gives a plain batch's bytes, survives a
lost actor, and shares its manifest with plain batches (each resumes the other)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.batch import BatchProgress, LocalRunner, Manifest, run_batch
from backend.engine import CancelToken, Engine
from tests.conftest import ROOT
from tests.test_batch import make_folder, options, outputs

try:  # CI installs the ray extra: a missing Ray fails here, it never skips
    import ray
except ImportError as exc:  # pragma: no cover - a broken set-up
    raise RuntimeError("Ray is not installed: pip install -e '.[ray]' (CI does)") from exc
from backend.batch_ray import RayRunner


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


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["full"].parent


@pytest.fixture(scope="module")
def engine(models: Path, one_thread: None) -> Engine:
    return Engine(models, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("ray-in")
    make_folder(src)
    return src


@pytest.fixture(scope="module")
def reference(folder: Path, models: Path, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray-reference")
    run_batch(options(folder, out, models), LocalRunner(engine=engine))
    return out


@pytest.fixture
def ray_runner(cluster: None, models: Path) -> Iterator[RayRunner]:
    """Two CPU actors, each loading the tiny model once; stopped after the test (the cluster has 2 CPUs)."""
    runner = RayRunner(actors=2, models_dir=models, device="cpu")
    yield runner
    runner.close()


def test_ray_batch_equals_a_plain_batch(
    ray_runner: RayRunner, tmp_path: Path, models: Path, folder: Path, reference: Path
) -> None:
    summary = run_batch(options(folder, tmp_path / "out", models), ray_runner)
    assert len(summary.done) == 6 and [r.relpath for r in summary.failed] == ["sub/broken.png"]
    assert {r.worker for r in summary.done} == {"ray-0", "ray-1"}  # both actors took a share
    assert outputs(tmp_path / "out") == outputs(reference)


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
