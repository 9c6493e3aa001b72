"""The reference PASD pipeline on the same job as ``gpu_pasd.py`` (run by it, in the reference's env).

Needs diffusers 0.29.2 / transformers 4.44.2 and a checkout of github.com/yangxy/PASD. Builds the
reference's full PASD UNet and ControlNet with random weights from the component configs that
``gpu_pasd.py`` writes (``--components``, JSON), and runs:

- ``--family sd15``: its ``StableDiffusionControlNetPipeline`` with the settings of its ``test_pasd.py``
  (UniPC, added noise 900, its tiled VAE hooks at their defaults, latent tiles of 320 / 4);
- ``--family sdxl``: its ``pipeline_pasd_sdxl.StableDiffusionXLControlNetPipeline`` as PASD-SDXL runs it
  (two text encoders and tokenizers, Euler, start from pure noise, latent tiles of 180 / 8, no tiled
  VAE, ControlNet scale 0.8), its weights made directly on the device in the run's precision.

    python bench/reference_pasd.py --pasd-repo DIR --components FILE --tokenizer DIR [--tokenizer DIR]
        [--family sd15|sdxl] [--size N] [--steps N] [--runs N] [--device auto] [--dtype auto]

Prints one JSON line.
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


def build_sd15(spec: dict, tokenizers: list[Path], device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from pasd.models.pasd.controlnet import ControlNetModel
    from pasd.models.pasd.unet_2d_condition import UNet2DConditionModel
    from pasd.pipelines.pipeline_pasd import StableDiffusionControlNetPipeline
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_config(spec["unet"])
    controlnet = ControlNetModel.from_unet(unet)
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL(**spec["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**spec["text"])),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizers[0])),
        feature_extractor=CLIPImageProcessor(),
        unet=unet,
        controlnet=controlnet,
        scheduler=UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe = pipe.to(device, dtype)
    pipe._init_tiled_vae(encoder_tile_size=1024, decoder_tile_size=224)
    run_args = types.SimpleNamespace(
        init_latent_with_noise=False, added_noise_level=900, offset_noise_scale=0.0,
        latent_tiled_size=320, latent_tiled_overlap=4,
    )  # fmt: skip
    return pipe, run_args, {}  # its scale keyword is conditioning_scale; 1.0, the job's, is its default


def build_sdxl(spec: dict, tokenizers: list[Path], device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from gpu_pasd import JOBS, SDXL_LATENT_TILE, build
    from pasd.models.pasd.controlnet import ControlNetModel
    from pasd.models.pasd.unet_2d_condition import UNet2DConditionModel
    from pasd.pipelines.pipeline_pasd_sdxl import StableDiffusionXLControlNetPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    pipe = StableDiffusionXLControlNetPipeline(
        vae=build(lambda: AutoencoderKL(**spec["vae"]), device, dtype, True),
        text_encoder=build(lambda: CLIPTextModel(CLIPTextConfig(**spec["text"])), device, dtype, True),
        text_encoder_2=build(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**spec["text_2"])), device, dtype, True
        ),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizers[0])),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tokenizers[1])),
        unet=build(lambda: UNet2DConditionModel.from_config(spec["unet"]), device, dtype, True),
        controlnet=build(lambda: ControlNetModel.from_config(spec["controlnet"]), device, dtype, True),
        scheduler=EulerDiscreteScheduler(**spec["scheduler"]),
    )
    pipe = pipe.to(device, dtype)  # already there: places nothing
    tile, overlap = SDXL_LATENT_TILE
    run_args = types.SimpleNamespace(latent_tiled_size=tile, latent_tiled_overlap=overlap)
    return pipe, run_args, {"controlnet_conditioning_scale": JOBS["sdxl"]["conditioning_scale"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pasd-repo", type=Path, required=True)
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--components", type=Path, required=True, help="JSON written by gpu_pasd.py")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokenizer", type=Path, action="append", required=True, help="twice for sdxl")
    args = parser.parse_args()

    sys.path.insert(0, str(args.pasd_repo))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import diffusers.models.unets.unet_2d_blocks as blocks
    import transformers  # noqa: F401  (loading it probes for torchvision, as diffusers did)
    from PIL import Image

    _stub_torchvision()  # after diffusers and transformers have probed for the real one

    sys.modules.setdefault("diffusers.models.transformers.unet_2d_blocks", blocks)
    from gpu_pasd import JOBS, peak_gib

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype)
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32

    spec = json.loads(args.components.read_text())
    job = JOBS[args.family]
    torch.manual_seed(0)
    builder = build_sdxl if args.family == "sdxl" else build_sd15
    pipe, run_args, call_args = builder(spec, args.tokenizer, device, dtype)
    run_args.num_inference_steps = args.steps
    size = args.size * 2
    image = Image.fromarray((torch.rand(args.size, args.size, 3) * 255).byte().numpy()).resize((size, size))
    times = []
    with torch.no_grad():
        for i in range(args.runs + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pipe(
                run_args, "a photo", image=image, num_inference_steps=args.steps,
                guidance_scale=job["guidance"], negative_prompt="blurry",
                generator=torch.Generator(device).manual_seed(i), **call_args,
            )  # fmt: skip
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    peak = peak_gib(device.startswith("cuda"))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    row = {"name": "reference", "device": name, "dtype": str(dtype), "seconds": min(times), "peak_gib": peak}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
