"""SUPIR speed and memory: our pipeline beside the official code, on the same job and machine.

Full width (a GPU): SUPIR-v0 with random weights (float16 diffusion, bfloat16 VAE), a 512² input
restored to 1024², 50 steps; the official side is ``SUPIRModel.batchify_sample`` as ``test.py`` runs
it with ``--loading_half_params``. Targets: at least 1.5× the official speed and under 12 GB peak.
``--tiny`` (any machine, the CPU here): both implementations at the tiny widths of the parity
fixtures, with the very same weights, float32.

    python bench/gpu_supir.py [--tiny] [--size 512] [--scale 2] [--steps 50] [--runs 2] [--device auto]
        [--reference-python PY --supir-repo DIR]

The reference environment is the one of ``tools/make_supir_fixtures.py``. Prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZERS = ROOT / "tests" / "fixtures" / "supir"


def _tool():
    spec = importlib.util.spec_from_file_location(
        "make_supir_fixtures", ROOT / "tools" / "make_supir_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_ours(args: argparse.Namespace, tmp: Path):
    from transformers import CLIPTokenizer

    from backend.devices import choose_device
    from backend.models.store import resolve_model
    from backend.models.supir.configs import full_configs
    from backend.models.supir.loading import build
    from backend.models.supir.tiny import write_tiny_supir
    from backend.pipelines.supir import SupirPipeline

    choice = choose_device(args.device, "fp32" if args.tiny else "auto")
    if args.tiny:
        root = write_tiny_supir(tmp / "bench-supir", seed=1234)  # the fixtures' weights
        return SupirPipeline.from_installed(resolve_model(root), choice), choice
    model = build(full_configs())  # on the meta device: random weights are made on the device itself
    with torch.no_grad():
        for module in model.modules().values():
            module.to_empty(device=choice.device)
            for p in module.parameters():
                p.normal_(0.0, 0.02)
    tok = [CLIPTokenizer.from_pretrained(str(TOKENIZERS / n)) for n in ("tokenizer", "tokenizer_2")]
    return SupirPipeline(model, tok[0], tok[1], choice), choice


def run_ours(args: argparse.Namespace) -> dict:
    from backend.pipelines.base import SamplingKnobs

    tool = _tool()
    k = {**tool.SAMPLE_KNOBS, "num_steps": args.steps}
    side = round(args.size * args.scale) // 64 * 64
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    knobs = SamplingKnobs(
        guidance_start=k["cfg_scale_start"],
        fidelity_start=k["control_scale_start"],
        restoration=k["restoration_scale"],
        churn=k["s_churn"],
        churn_noise=k["s_noise"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipe, choice = build_ours(args, Path(tmp))
        cuda = choice.device.type == "cuda"
        best = float("inf")
        for _ in range(args.runs + 1):  # one warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(
                    image,
                    prompt=tool.PROMPTS[0] + tool.A_PROMPT,
                    negative_prompt=tool.N_PROMPT,
                    steps=k["num_steps"],
                    guidance=k["cfg_scale"],
                    seed=1234,
                    scale_map=k["control_scale"],
                    knobs=knobs,
                )
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    peak = (
        {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        if cuda
        else {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    )
    return {"seconds": best, "output": side, "device": str(choice.device), **peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny widths, float32 (CPU comparison)")
    parser.add_argument("--size", type=int, default=512, help="input side; the output is --scale times it")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2, help="timed runs after one warm-up; the best counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reference-python", help="python of the reference environment")
    parser.add_argument("--supir-repo", type=Path, help="checkout of github.com/Fanghua-Yu/SUPIR")
    parser.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_only:
        print(json.dumps(run_ours(args)))
        return 0

    common = ["--size", str(args.size), "--scale", str(args.scale), "--steps", str(args.steps)]
    common += ["--runs", str(args.runs), "--device", args.device] + (["--tiny"] if args.tiny else [])
    rows = {}
    # Each side in its own process: peak memory is the process's own.
    ours = subprocess.run([sys.executable, __file__, "--ours-only", *common], capture_output=True, text=True)
    if ours.returncode:
        print(ours.stderr[-3000:], file=sys.stderr)
        return 1
    rows["ours"] = json.loads(ours.stdout.strip().splitlines()[-1])
    if args.reference_python and args.supir_repo:
        cmd = [
            args.reference_python,
            str(ROOT / "bench" / "reference_supir.py"),
            "--supir-repo",
            str(args.supir_repo),
        ]
        ref = subprocess.run([*cmd, "--tokenizers", str(TOKENIZERS), *common], capture_output=True, text=True)
        if ref.returncode:
            print(ref.stderr[-3000:], file=sys.stderr)
            return 1
        rows["official"] = json.loads(ref.stdout.strip().splitlines()[-1])

    width = "tiny widths, float32" if args.tiny else "full width, random weights"
    side = rows["ours"]["output"]
    device = rows["ours"]["device"]
    print(f"\nSUPIR, {width}, {side}×{side} output, {args.steps} steps, best of {args.runs} on {device}")
    unit = "peak GiB" if "peak_gib" in rows["ours"] else "peak RSS MB"
    print(f"{'':<10} {'seconds':>9} {unit:>12}")
    for name, row in rows.items():
        peak = row.get("peak_gib", row.get("peak_mb", 0.0))
        print(f"{name:<10} {row['seconds']:>9.2f} {peak:>12.1f}")
    if "official" in rows:
        print(f"\nours is {rows['official']['seconds'] / rows['ours']['seconds']:.2f}× the official speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
