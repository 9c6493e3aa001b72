"""The official SUPIR (``SUPIRModel.batchify_sample``) on the job ``gpu_supir.py`` times (run by it,
in the reference environment of ``tools/make_supir_fixtures.py``).

``--tiny``: the harness's tiny official model with the random weights of ``random_state(…, 1234)``
(the very weights our tiny SUPIR holds), on the CPU in float32. Without ``--tiny``: the full-width
official model from ``options/SUPIR_v0.yaml`` with random weights, as ``test.py`` runs it on a GPU
(``--loading_half_params``: every weight in float16, its autocasts bf16 VAE / fp16 diffusion).

    python bench/reference_supir.py --supir-repo DIR --tokenizers DIR [--tiny] [--size 64] [--scale 2]
        [--steps 50] [--runs 1] [--device auto]

Prints one JSON line: seconds of the best run and peak memory (GPU GiB, or the process's RSS MB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# OpenAI CLIP ViT-L/14's text tower, SDXL's first encoder (random weights here)
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def harness():
    spec = importlib.util.spec_from_file_location(
        "make_supir_fixtures", ROOT / "tools" / "make_supir_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_supir_fixtures"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supir-repo", type=Path, required=True)
    parser.add_argument("--tokenizers", type=Path, required=True, help="folder with tokenizer/, tokenizer_2/")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=int, default=512, help="input side; the output is --scale times it")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    tool = harness()
    tool._install_shims(args.supir_repo, args.tokenizers / "tokenizer_2")
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            model, _, _ = tool.build_tiny_model(args.supir_repo, Path(tmp), args.tokenizers)
        else:
            model = build_full(tool, args.supir_repo, Path(tmp), args.tokenizers)
        model = model.to(device).eval()
        model.sampler_config.params.device = device
        knobs = {**tool.SAMPLE_KNOBS, "num_steps": args.steps, "color_fix_type": "Wavelet"}
        side = round(args.size * args.scale) // 64 * 64  # test.py's PIL2Tensor: sides rounded to 64
        image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1
        best = float("inf")
        for _ in range(args.runs + 1):  # one warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.no_grad():
                model.batchify_sample(
                    image.to(device), [tool.PROMPTS[0]], p_p=tool.A_PROMPT, n_p=tool.N_PROMPT, **knobs
                )
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    peak = (
        {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        if device == "cuda"
        else {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    )
    print(json.dumps({"seconds": best, "output": side, "device": device, **peak}))
    return 0


def build_full(tool, supir_repo: Path, work: Path, tokenizers: Path):
    """The full-width official model with random weights, float16 as ``--loading_half_params``."""
    import shutil

    import sgm.modules.encoders.modules as encoders
    import torch
    from sgm.util import instantiate_from_config
    from transformers import CLIPTextConfig, CLIPTextModel

    clip_dir = work / "clip_l"
    shutil.copytree(tokenizers / "tokenizer", clip_dir)  # ids of the tiny vocabulary fit the full one
    CLIPTextModel(CLIPTextConfig(**CLIP_L)).save_pretrained(str(clip_dir))
    encoders.SDXL_CLIP1_PATH = str(clip_dir)
    cfg = tool._model_config(supir_repo, tiny=False)
    cfg.params.ae_dtype = "bf16"
    cfg.params.diffusion_dtype = "fp16"
    model = instantiate_from_config(cfg)
    return model.half() if torch.cuda.is_available() else model


if __name__ == "__main__":
    sys.exit(main())
