"""Batch throughput on CPU with a tiny model: the batch layer's cost, and scaling over Ray actors.

32 small images (48×48 RGB, ×2, 2 steps, process size 256) go through

* the engine called directly (read, ``Engine.restore``, ``write_image``: what a hand-written loop does),
* ``run_batch`` with the same warm engine in this process (plan, manifest lines fsynced, sha256 of
  every output): the batch layer's overhead per image against the direct loop (target < 5 %),
* ``run_batch`` on a local Ray with 1 and 2 CPU actors (each one thread, its model loaded before the
  clock starts): images per minute and the scaling efficiency rate(2) / (2 × rate(1)); and 2 actors
  with ``files="send"`` (the bytes through Ray's object store, the driver writing the results).

Direct and in-process batch runs alternate ``--repeats`` times and the best of each counts (the
machine may be busy). Every way of running must write the same bytes.

    python bench/batch.py [--images 32] [--side 48] [--steps 2] [--repeats 3] [--target 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from backend.batch import BatchOptions, LocalRunner, plan_batch, run_batch  # noqa: E402
from backend.engine import Engine  # noqa: E402
from backend.image_io import read_image, write_image  # noqa: E402
from backend.models.tiny import write_tiny_model  # noqa: E402
from backend.pipelines.params import RestoreParams  # noqa: E402


def outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".gdu-batch" not in p.parts
    }


def direct(engine: Engine, options: BatchOptions, out: Path) -> float:
    """The same images, seeds and outputs without the batch layer."""
    items = plan_batch(options, options.seed).items
    started = time.perf_counter()
    for item in items:
        result = engine.restore(read_image(item.input), item.params, model=item.model)
        (out / item.relpath).parent.mkdir(parents=True, exist_ok=True)
        write_image(out / item.relpath, result.image)
    return time.perf_counter() - started


def batch(runner: object, options: BatchOptions) -> float:
    started = time.perf_counter()
    summary = run_batch(options, runner)  # type: ignore[arg-type]
    assert len(summary.done) == len(plan_batch(options, options.seed).items), summary.table()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--side", type=int, default=48)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=5.0, help="batch overhead per image, percent")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        write_tiny_model(root / "models" / "tiny-full", "full", seed=1)
        rng = np.random.default_rng(0)
        (root / "in").mkdir()
        for i in range(args.images):
            write_image(
                root / "in" / f"{i:03d}.png", rng.integers(0, 256, (args.side, args.side, 3), np.uint8)
            )
        params = RestoreParams(steps=args.steps, process_size=256)

        def options(out: str) -> BatchOptions:
            return BatchOptions(root / "in", root / out, params, "tiny-full", root / "models", seed=1)

        engine = Engine(root / "models", device="cpu")
        engine.restore(read_image(root / "in" / "000.png"), params.with_(seed=0), model="tiny-full")  # load
        direct_s, batch_s = [], []
        for r in range(args.repeats):
            print(f"… direct and in-process batch, round {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
            direct_s.append(direct(engine, options(f"direct{r}"), root / f"direct{r}"))
            batch_s.append(batch(LocalRunner(engine=engine), options(f"batch{r}")))
        same = outputs(root / "direct0") == outputs(root / "batch0")
        rows = [("engine directly, 1 thread", min(direct_s), same), ("batch, in process", min(batch_s), same)]

        if not args.no_ray:
            import ray

            from backend.batch_ray import RayRunner

            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
            )
            try:
                warm = plan_batch(options("warm"), 1).items[0]
                for actors, files in ((1, "shared"), (2, "shared"), (2, "send")):
                    print(f"… Ray, {actors} actor(s), files {files}", file=sys.stderr, flush=True)
                    runner = RayRunner(actors=actors, models_dir=root / "models", device="cpu", files=files)
                    runner.start()
                    ray.get([a.run.remote(warm) for a in runner.actors])  # each actor loads its model
                    out = f"ray{actors}{files}"
                    seconds = batch(runner, options(out))
                    runner.close()
                    name = f"Ray, {actors} CPU actor(s)"
                    name += ", files sent through Ray" if files == "send" else ""
                    rows.append((name, seconds, outputs(root / out) == outputs(root / "batch0")))
            finally:
                ray.shutdown()

    n = args.images
    print(
        f"\n{n} images {args.side}×{args.side} RGB → ×2, {args.steps} steps, tiny PASD, CPU "
        f"(best of {args.repeats} for the first two)"
    )
    print("| run | seconds | images/min | s/image | same bytes |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, same_bytes in rows:
        print(
            f"| {name} | {seconds:.2f} | {n / seconds * 60:.0f} | {seconds / n:.3f} "
            f"| {'yes' if same_bytes else 'NO'} |"
        )
    overhead = (min(batch_s) - min(direct_s)) / min(direct_s) * 100
    per_image_ms = (min(batch_s) - min(direct_s)) / n * 1000
    print(
        f"\nbatch layer overhead: {overhead:+.1f} % ({per_image_ms:+.1f} ms per image); "
        f"target < {args.target:g} %"
    )
    ok = overhead < args.target and all(r[2] for r in rows)
    if len(rows) == 5:
        efficiency = rows[2][1] / (2 * rows[3][1])
        print(f"Ray scaling efficiency, 2 actors vs 1: {efficiency * 100:.0f} % (on {os.cpu_count()} cores)")
        sent = (rows[4][1] - rows[3][1]) / n * 1000
        print(f"sending the files through Ray instead of shared folders: {sent:+.1f} ms per image")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
