"""Seconds per image and peak memory of the full-width PASD architecture, ours beside the reference.

Random weights at the real SD1.5 widths (UNet + PASD ControlNet + VAE + CLIP-L text encoder), an
input of SIZE² upscaled ×2, 20 UniPC steps with classifier-free guidance 7.5. On a GPU the default
is 512² → 1024²; on a CPU use a small size (for example ``--size 128 --steps 4``).

    python bench/gpu_pasd.py [--size 512] [--steps 20] [--runs 3] [--dtype auto] [--compile]
        [--reference-python PY --pasd-repo DIR]

With ``--reference-python`` (an environment with the reference's pins: diffusers 0.29.2,
transformers 4.44.2) and a checkout of github.com/yangxy/PASD, the reference pipeline
(``pipeline_pasd.StableDiffusionControlNetPipeline``) runs the same job through
``bench/reference_pasd.py`` in a child process, with the same sizes, steps, dtype and device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# SD1.5's text encoder (CLIP ViT-L/14 text tower) and VAE, as in their official config.json files.
CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)  # fmt: skip


def build_ours(device: str, dtype: str, tokenizer_dir: Path, compile_: bool):
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from backend.devices import choose_device
    from backend.models.pasd import PasdControlNetModel, PasdUNet2DConditionModel
    from backend.models.pasd.configs import sd15_controlnet_config
    from backend.models.sd15 import SD15_UNET_CONFIG
    from backend.pipelines.pasd import PasdPipeline

    choice = choose_device(device, dtype)
    torch.manual_seed(0)
    pipe = PasdPipeline(
        vae=AutoencoderKL(**SD_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        unet=PasdUNet2DConditionModel.from_config(SD15_UNET_CONFIG, pasd_variant="full"),
        controlnet=PasdControlNetModel.from_config(sd15_controlnet_config()),
        scheduler=UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        choice=choice,
    )
    if compile_:
        pipe.unet = torch.compile(pipe.unet, dynamic=False)
        pipe.controlnet = torch.compile(pipe.controlnet, dynamic=False)
    return pipe, choice


def run_ours(args: argparse.Namespace, tokenizer_dir: Path) -> dict:
    from backend.image_ops import resize

    pipe, choice = build_ours(args.device, args.dtype, tokenizer_dir, args.compile)
    size = args.size * 2
    small = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    image = resize(small, (size, size))
    times = []
    with torch.inference_mode():
        for i in range(args.runs + 1):  # the first run warms up (kernels, compilation)
            if choice.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pipe(image, prompt="a photo", negative_prompt="blurry", steps=args.steps, guidance=7.5, seed=i)
            if choice.device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if choice.device.type == "cuda" else float("nan")
    dtype = str(choice.dtype)
    return {"name": "ours", "device": choice.name, "dtype": dtype, "seconds": min(times), "peak_gib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input side; the output is twice that")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up; the best counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet")
    parser.add_argument("--reference-python", help="python of an environment with the reference's pins")
    parser.add_argument("--pasd-repo", type=Path, help="checkout of github.com/yangxy/PASD")
    args = parser.parse_args()

    from backend.models.tiny import write_tokenizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        write_tokenizer(tokenizer_dir)
        rows.append(run_ours(args, tokenizer_dir))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if args.reference_python:
            if not args.pasd_repo:
                parser.error("--reference-python needs --pasd-repo")
            cmd = [args.reference_python, str(HERE / "reference_pasd.py"), "--pasd-repo", str(args.pasd_repo)]
            cmd += ["--size", str(args.size), "--steps", str(args.steps), "--runs", str(args.runs)]
            cmd += ["--device", args.device]
            cmd += ["--dtype", args.dtype, "--tokenizer", str(tokenizer_dir)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-4000:], file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    out = args.size * 2
    print(f"\nPASD full width, random weights, {args.size}² → {out}², {args.steps} steps, guidance 7.5")
    print(f"{'pipeline':<10} {'device':<28} {'dtype':<15} {'s/image':>8} {'peak GiB':>9}")
    for row in rows:
        name, device, dtype = row["name"], row["device"], row["dtype"]
        print(f"{name:<10} {device:<28} {dtype:<15} {row['seconds']:>8.2f} {row['peak_gib']:>9.2f}")
    if len(rows) == 2:
        print(f"\nspeed-up over the reference: {rows[1]['seconds'] / rows[0]['seconds']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
