"""The reference PASD pipeline on the same job as ``gpu_pasd.py`` (run by it, in the reference's env).

Needs diffusers 0.29.2 / transformers 4.44.2 and a checkout of github.com/yangxy/PASD. Builds the
reference's full PASD UNet and ControlNet with random weights at SD1.5 widths, and runs its
``StableDiffusionControlNetPipeline`` with the settings of its ``test_pasd.py`` (UniPC, added noise
900, its tiled VAE hooks at their defaults). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch


def _stub_torchvision() -> None:
    """The pipeline imports torchvision only for a debugging ``save_image``; its pins lack torchvision."""
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision")
        utils = types.ModuleType("torchvision.utils")
        utils.save_image = lambda *a, **k: None
        tv.utils = utils
        sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, utils


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pasd-repo", type=Path, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokenizer", type=Path, required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(args.pasd_repo))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import diffusers.models.unets.unet_2d_blocks as blocks
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _stub_torchvision()  # after diffusers and transformers have probed for the real one

    sys.modules.setdefault("diffusers.models.transformers.unet_2d_blocks", blocks)
    from gpu_pasd import CLIP_L_TEXT, SD_VAE  # same component configs as ours
    from pasd.models.pasd.controlnet import ControlNetModel
    from pasd.models.pasd.unet_2d_condition import UNet2DConditionModel
    from pasd.pipelines.pipeline_pasd import StableDiffusionControlNetPipeline

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype)
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32

    torch.manual_seed(0)
    unet_cfg = {
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 64,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }  # fmt: skip
    unet = UNet2DConditionModel(**unet_cfg)
    controlnet = ControlNetModel.from_unet(unet)
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL(**SD_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        tokenizer=CLIPTokenizer.from_pretrained(str(args.tokenizer)),
        feature_extractor=CLIPImageProcessor(),
        unet=unet,
        controlnet=controlnet,
        scheduler=UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe = pipe.to(device, dtype)
    pipe._init_tiled_vae(encoder_tile_size=1024, decoder_tile_size=224)
    size = args.size * 2
    image = Image.fromarray((torch.rand(args.size, args.size, 3) * 255).byte().numpy()).resize((size, size))
    run_args = types.SimpleNamespace(
        init_latent_with_noise=False, added_noise_level=900, offset_noise_scale=0.0,
        latent_tiled_size=320, latent_tiled_overlap=4, num_inference_steps=args.steps,
    )  # fmt: skip
    times = []
    with torch.no_grad():
        for i in range(args.runs + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pipe(
                run_args, "a photo", image, num_inference_steps=args.steps, guidance_scale=7.5,
                negative_prompt="blurry", generator=torch.Generator(device).manual_seed(i),
            )  # fmt: skip
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    row = {"name": "reference", "device": name, "dtype": str(dtype), "seconds": min(times), "peak_gib": peak}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
