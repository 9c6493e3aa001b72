"""Peak memory of ×4 upscales to 1, 4, 16 and 64 megapixels with a tiny model (PASD, PASD-SDXL, SUPIR).

Each size runs in its own child process and reports its peak resident memory; the table shows the
growth per extra output megapixel, which must stay under 64 MB: only image-sized buffers (input,
pre-scaled image, output) may grow with the image, never model activations, because the diffusion
and the VAE run in tiles.

    python bench/engine_memory.py [--variant full|sdxl|supir] [--sizes 1,4,16,64] [--steps 1] [--tile 256]
                                  [--vae-tile 512]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB_PER_MP = 64.0


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from backend.engine import Engine
    from backend.pipelines.params import RestoreParams

    engine = Engine(args.models, device="cpu")
    params = RestoreParams(steps=args.steps, seed=1, scale=4.0, tile=args.tile, vae_tile=args.vae_tile)
    # Warm up (loads the model, touches every code path) on a small image first.
    engine.restore(np.zeros((64, 64, 3), np.uint8), params.with_(scale=1.0), model=args.model)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    side = round(math.sqrt(args.megapixels * 1e6) / 4)
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    start = time.perf_counter()
    result = engine.restore(image, params, model=args.model)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h, w = result.plan.output_size
    print(
        json.dumps(
            {
                "input": f"{side}×{side}",
                "output": f"{w}×{h}",
                "output_mp": h * w / 1e6,
                "tiles": result.plan.tiles,
                "seconds": seconds,
                "baseline_mb": baseline,
                "peak_mb": peak,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,64", help="output megapixels, comma-separated")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--vae-tile", type=int, default=512)
    parser.add_argument("--models", type=Path, help="folder holding the model (default: a fresh tiny one)")
    parser.add_argument("--model", default="bench-tiny")
    parser.add_argument(
        "--variant", choices=("full", "sdxl", "supir"), default="full", help="tiny PASD, PASD-SDXL or SUPIR"
    )
    parser.add_argument("--child-megapixels", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_megapixels is not None:
        args.megapixels = args.child_megapixels
        child(args)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if args.models is None:
            from backend.models.tiny import write_tiny_model

            args.models = Path(tmp)
            if args.variant == "supir":
                from backend.models.supir.tiny import write_tiny_supir

                write_tiny_supir(args.models / args.model, seed=0)
            else:
                write_tiny_model(args.models / args.model, args.variant, seed=0)
        rows = []
        for mp in [float(s) for s in args.sizes.split(",")]:
            cmd = [sys.executable, __file__, "--child-megapixels", str(mp), "--steps", str(args.steps)]
            cmd += ["--tile", str(args.tile), "--vae-tile", str(args.vae_tile)]
            cmd += ["--models", str(args.models), "--model", args.model]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"… {rows[-1]['output']} done in {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)

    tiles = f"tiles {args.tile}/{args.vae_tile} px"
    family = {"sdxl": "PASD-SDXL", "supir": "SUPIR"}.get(args.variant, "PASD")
    print(f"\nEngine peak memory, ×4 upscale, tiny {family} model, {args.steps} steps, {tiles}")
    header = ("output", "MP", "input", "tiles", "time s", "peak MB", "MB/extra MP")
    print("{:>12} {:>6} {:>10} {:>6} {:>8} {:>9} {:>12}".format(*header))
    ok = True
    for i, row in enumerate(rows):
        growth = ""
        if i:
            prev = rows[i - 1]
            per_mp = (row["peak_mb"] - prev["peak_mb"]) / (row["output_mp"] - prev["output_mp"])
            growth = f"{per_mp:.1f}"
            ok &= per_mp < LIMIT_MB_PER_MP
        print(
            f"{row['output']:>12} {row['output_mp']:>6.1f} {row['input']:>10} {row['tiles']:>6} "
            f"{row['seconds']:>8.1f} {row['peak_mb']:>9.0f} {growth:>12}"
        )
    print(
        f"\ngrowth per extra output megapixel {'stays under' if ok else 'EXCEEDS'} {LIMIT_MB_PER_MP:.0f} MB"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
