"""Seconds per image and peak memory of the full-width PASD architecture, ours beside the reference.

Random weights at the real widths, an input of SIZE² upscaled ×2 with classifier-free guidance.

- ``--family sd15`` (the default): SD1.5's UNet + PASD ControlNet + VAE + CLIP-L text encoder, 20 UniPC
  steps, guidance 7.5. On a GPU the default is 512² → 1024²; on a CPU use a small size (for example
  ``--size 128 --steps 4``).
- ``--family sdxl``: PASD-SDXL (SDXL's UNet + PASD ControlNet, CLIP-L and OpenCLIP bigG text encoders,
  SDXL's VAE and Euler), 25 steps, guidance 7.0, ControlNet scale 0.8, latent tiles of 180 with an
  overlap of 8 (the reference's settings for PASD-SDXL). On a GPU the default is 1024² → 2048². The
  UNet and ControlNet alone are ~4.9 billion parameters (~19.4 GB in float32), so on a CPU take it in
  bfloat16 at a small size: ``--device cpu --dtype bf16 --size 64 --steps 2 --runs 1``. Its weights
  are made directly on the device in the run's precision (parameters built on the meta device, then
  filled from a random pool), never in float32 first.

    python bench/gpu_pasd.py [--family sd15|sdxl] [--size N] [--steps N] [--runs 3] [--dtype auto]
        [--device auto] [--compile] [--fast [--lcm-lora FILE]] [--tiny]
        [--reference-python PY --pasd-repo DIR]

With ``--reference-python`` (an environment with the reference's pins: diffusers 0.29.2,
transformers 4.44.2) and a checkout of github.com/yangxy/PASD, the reference pipeline
(``pipeline_pasd.StableDiffusionControlNetPipeline``, or ``pipeline_pasd_sdxl.
StableDiffusionXLControlNetPipeline`` for SDXL) runs the same job through ``bench/reference_pasd.py``
in a child process, with the same component configs, sizes, steps, dtype and device. Peak memory is
``torch.cuda.max_memory_allocated`` of the last run on a GPU, the process's peak resident set on a CPU.

``--fast`` (SD1.5) also times the fast mode on the same image after the normal runs: the LCM-LoRA
fused into the UNet (``PasdPipeline.enable_fast``), LCM with ``fast.FAST_STEPS`` steps at
``fast.FAST_GUIDANCE``, and prints the speed-up over the normal run. The LoRA is ``--lcm-lora FILE``
(the real ``lcm-lora-sdv1-5/pytorch_lora_weights.safetensors`` fits the full-width UNet), else a
random one in the official layout at the run's widths (``backend/models/pasd/tiny_lcm.py``); like
the other weights, its values do not change the timing.

``--tiny`` (or ``--tiny-widths``; a development check, not a benchmark) swaps in the tiny test
configs of ``backend/models/tiny.py``, so every side runs end to end in seconds, on a CPU too:
``python bench/gpu_pasd.py --tiny --device cpu --fast``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent

# SD1.5's text encoder (CLIP ViT-L/14 text tower) and VAE, as in their official config.json files.
# SDXL base's first text encoder is the same CLIP-L.
CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)  # fmt: skip
# SDXL base's second text encoder (OpenCLIP ViT-bigG/14 text tower with its projection), VAE and
# scheduler, as in stabilityai/stable-diffusion-xl-base-1.0's config files.
BIGG_TEXT = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu",
)  # fmt: skip
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_EULER = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
    steps_offset=1, timestep_spacing="leading", use_karras_sigmas=False,
)  # fmt: skip

# Each family's job; the ControlNet scale of SD1.5 is the pipelines' default, 1.0.
JOBS: dict[str, dict[str, Any]] = {
    "sd15": dict(size=512, steps=20, guidance=7.5, conditioning_scale=1.0),
    "sdxl": dict(size=1024, steps=25, guidance=7.0, conditioning_scale=0.8),
}
SDXL_LATENT_TILE = (180, 8)  # PASD-SDXL's latent_tiled_size / latent_tiled_overlap


def components(family: str, tiny: bool) -> dict[str, Any]:
    """The component configs both sides build (plain data: the reference reads them as JSON)."""
    from backend.models import tiny as t
    from backend.models.pasd.configs import (
        pasd_sdxl_controlnet_config,
        pasd_sdxl_unet_config,
        sd15_controlnet_config,
    )
    from backend.models.sd15 import SD15_UNET_CONFIG

    def tiny_text(hidden: int, act: str, projection: int) -> dict[str, Any]:
        return dict(
            vocab_size=49408, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=projection, hidden_act=act,
        )  # fmt: skip

    if family == "sd15":
        if tiny:
            width = t.TINY_UNET_CONFIG["cross_attention_dim"]
            return dict(
                unet=t.tiny_unet_config(),
                controlnet=t.tiny_controlnet_config(),
                text=tiny_text(width, "quick_gelu", width),
                vae=t.tiny_vae_config(),
            )
        return dict(unet=SD15_UNET_CONFIG, controlnet=sd15_controlnet_config(), text=CLIP_L_TEXT, vae=SD_VAE)
    if tiny:
        half = t.TINY_SDXL_UNET_CONFIG["cross_attention_dim"] // 2
        return dict(
            unet=t.tiny_sdxl_unet_config(),
            controlnet=t.tiny_sdxl_controlnet_config(),
            text=tiny_text(half, "quick_gelu", half),
            text_2=tiny_text(half, "gelu", t.TINY_SDXL_POOLED_DIM),
            vae={**t.tiny_vae_config(), "scaling_factor": 0.13025, "force_upcast": True},
            scheduler=SDXL_EULER,
        )
    return dict(
        unet=pasd_sdxl_unet_config(),
        controlnet=pasd_sdxl_controlnet_config(),
        text=CLIP_L_TEXT,
        text_2=BIGG_TEXT,
        vae=SDXL_VAE,
        scheduler=SDXL_EULER,
    )


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory, no initialisation.
    Buffers (CLIP's position ids) stay real."""
    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def materialise(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """Give a module built under :func:`parameters_on_meta` real parameters on ``device`` in ``dtype``:
    matrices and kernels ~ N(0, 1/fan_in) copied from one random pool (memory speed, where a random draw
    per element takes half a minute on a small CPU), norm scales 1, biases 0."""
    pool = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    made: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub._parameters.items():
                if param is None:
                    continue
                if id(param) not in made:
                    data = torch.empty(param.shape, device=device, dtype=dtype)
                    if param.ndim > 1:
                        flat = data.view(-1)
                        for i in range(0, flat.numel(), pool.numel()):
                            part = flat[i : i + pool.numel()]
                            part.copy_(pool[: part.numel()])
                        flat.mul_(param[0].numel() ** -0.5)
                    else:
                        data.fill_(1.0 if name == "weight" else 0.0)
                    made[id(param)] = torch.nn.Parameter(data, requires_grad=False)
                sub._parameters[name] = made[id(param)]
    return torch.nn.Module.to(module, device=device, dtype=dtype)  # the buffers


def build(factory: Callable[[], Any], device: torch.device | str, dtype: torch.dtype, fast: bool) -> Any:
    """``factory()``; with ``fast``, its weights made on ``device`` in ``dtype`` (:func:`materialise`),
    else initialised by the classes on the CPU in float32, as SD1.5's benchmark always did."""
    if not fast:
        return factory()
    with parameters_on_meta():
        module = factory()
    return materialise(module, device, dtype)


def peak_gib(cuda: bool) -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU, else the process's peak resident set: VmHWM on
    Linux (``ru_maxrss`` would count the parent's peak into the reference's: it survives fork and exec)."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes there, KiB elsewhere


def build_ours(args: argparse.Namespace, spec: dict[str, Any], tokenizers: list[Path]):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UniPCMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from backend.devices import choose_device
    from backend.models.pasd import PasdControlNetModel, PasdUNet2DConditionModel
    from backend.models.sdxl.text import SdxlText
    from backend.pipelines.pasd import PasdPipeline
    from backend.pipelines.pasd_sdxl import PasdSdxlPipeline

    choice = choose_device(args.device, args.dtype)
    sdxl = args.family == "sdxl"
    device, dtype = choice.device, choice.dtype
    torch.manual_seed(0)
    unet = build(
        lambda: PasdUNet2DConditionModel.from_config(spec["unet"], pasd_variant="full"), device, dtype, sdxl
    )
    controlnet = build(lambda: PasdControlNetModel.from_config(spec["controlnet"]), device, dtype, sdxl)
    vae = build(lambda: AutoencoderKL(**spec["vae"]), device, choice.vae_dtype, sdxl)
    text_encoder = build(lambda: CLIPTextModel(CLIPTextConfig(**spec["text"])), device, dtype, sdxl)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizers[0]))
    if sdxl:
        text = SdxlText(
            text_encoder=text_encoder,
            text_encoder_2=build(
                lambda: CLIPTextModelWithProjection(CLIPTextConfig(**spec["text_2"])), device, dtype, True
            ),
            tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer.from_pretrained(str(tokenizers[1])),
        )
        scheduler = EulerDiscreteScheduler(**spec["scheduler"])
        pipe = PasdSdxlPipeline(
            vae=vae, text=text, unet=unet, controlnet=controlnet, scheduler=scheduler, choice=choice
        )
    else:
        scheduler = UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        pipe = PasdPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            choice=choice,
        )
    if args.compile:
        pipe.unet = torch.compile(pipe.unet, dynamic=False)
        pipe.controlnet = torch.compile(pipe.controlnet, dynamic=False)
    return pipe, choice


def time_runs(pipe: Any, image: torch.Tensor, runs: int, cuda: bool, **job: Any) -> tuple[float, float]:
    """Best seconds of ``runs`` timed runs after one warm-up (kernels, compilation), and the peak memory
    of the last one on a GPU (the process's peak so far on a CPU)."""
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pipe(image, prompt="a photo", negative_prompt="blurry", seed=i, **job)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return min(times), peak_gib(cuda)


def fuse_fast(args: argparse.Namespace, spec: dict[str, Any], pipe: Any, folder: Path) -> tuple[int, float]:
    """The fast mode on ``pipe``: ``--lcm-lora`` or a random LoRA in the official layout at the run's
    widths (rank 64 at full width, as published); returns the layers changed and the seconds fusing took."""
    from backend.models.pasd.tiny_lcm import LCM_LORA_RANK, write_tiny_lcm_lora

    lora = args.lcm_lora
    if lora is None:
        rank = 4 if args.tiny_widths else LCM_LORA_RANK
        lora = write_tiny_lcm_lora(folder, seed=0, rank=rank, alpha=rank / 8, unet_config=spec["unet"])
    start = time.perf_counter()
    with torch.inference_mode():
        layers = pipe.enable_fast(lora)
    if pipe.choice.device.type == "cuda":
        torch.cuda.synchronize()
    return layers, time.perf_counter() - start


def run_ours(args: argparse.Namespace, spec: dict[str, Any], tokenizers: list[Path]) -> list[dict]:
    from backend.image_ops import resize
    from backend.pipelines.base import DenoiseTiling
    from backend.pipelines.fast import FAST_GUIDANCE, FAST_STEPS

    pipe, choice = build_ours(args, spec, tokenizers)
    job = JOBS[args.family]
    tiling = DenoiseTiling(*SDXL_LATENT_TILE) if args.family == "sdxl" else None
    size = args.size * 2
    small = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    image = resize(small, (size, size))
    cuda = choice.device.type == "cuda"
    common = dict(scale_map=job["conditioning_scale"], tiling=tiling)
    seconds, peak = time_runs(
        pipe, image, args.runs, cuda, steps=args.steps, guidance=job["guidance"], **common
    )
    if pipe.vae.dtype != choice.vae_dtype:  # _decode's retry: the figure counts an extra float32 decode
        print(f"ours: the random VAE overflowed in {choice.vae_dtype}; ran again in fp32", file=sys.stderr)
    row = {"device": choice.name, "dtype": str(choice.dtype)}
    rows = [row | {"name": "ours", "steps": args.steps, "guidance": job["guidance"]}]
    rows[0] |= {"seconds": seconds, "peak_gib": peak}
    if args.fast:
        with tempfile.TemporaryDirectory() as tmp:
            layers, fuse_seconds = fuse_fast(args, spec, pipe, Path(tmp))
        print(f"fast mode: LCM-LoRA fused into {layers} UNet layers in {fuse_seconds:.2f} s", file=sys.stderr)
        seconds, peak = time_runs(
            pipe, image, args.runs, cuda, steps=FAST_STEPS, guidance=FAST_GUIDANCE, **common
        )
        fast = {"name": "ours fast", "steps": FAST_STEPS, "guidance": FAST_GUIDANCE}
        rows.append(row | fast | {"seconds": seconds, "peak_gib": peak, "fuse_seconds": fuse_seconds})
    return rows


def release_heap() -> None:
    """Hand the CPU memory our models held back to the system before the reference runs beside this
    process (glibc keeps freed small blocks otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(JOBS), default="sd15")
    parser.add_argument("--size", type=int, help="input side; the output is twice that (sd15 512, sdxl 1024)")
    parser.add_argument("--steps", type=int, help="sd15 20, sdxl 25")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up; the best counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet")
    parser.add_argument("--fast", action="store_true", help="also time the LCM-LoRA fast mode (sd15)")
    parser.add_argument("--lcm-lora", type=Path, help="the LCM-LoRA file for --fast (default: random)")
    parser.add_argument("--reference-python", help="python of an environment with the reference's pins")
    parser.add_argument("--pasd-repo", type=Path, help="checkout of github.com/yangxy/PASD")
    parser.add_argument(
        "--tiny",
        "--tiny-widths",
        dest="tiny_widths",
        action="store_true",
        help="tiny widths: a plumbing check",
    )
    args = parser.parse_args()
    job = JOBS[args.family]
    args.size = args.size or job["size"]
    args.steps = args.steps or job["steps"]
    if args.reference_python and not args.pasd_repo:
        parser.error("--reference-python needs --pasd-repo")
    if args.fast and args.family != "sd15":
        parser.error("--fast is for the SD1.5 PASD models (the LCM-LoRA is SD1.5's)")
    if args.lcm_lora and not args.fast:
        parser.error("--lcm-lora needs --fast")

    from backend.models.tiny import write_tokenizer

    spec = components(args.family, args.tiny_widths)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = [Path(tmp) / "tokenizer"]
        write_tokenizer(tokenizers[0])
        if args.family == "sdxl":
            tokenizers.append(Path(tmp) / "tokenizer_2")
            write_tokenizer(tokenizers[1], pad_token="!")  # SDXL's second tokenizer pads with "!"
        rows.extend(run_ours(args, spec, tokenizers))
        release_heap()
        if args.reference_python:
            spec_file = Path(tmp) / "components.json"
            spec_file.write_text(json.dumps(spec))
            cmd = [args.reference_python, str(HERE / "reference_pasd.py"), "--pasd-repo", str(args.pasd_repo)]
            cmd += ["--family", args.family, "--components", str(spec_file)]
            cmd += ["--size", str(args.size), "--steps", str(args.steps), "--runs", str(args.runs)]
            cmd += ["--device", args.device]
            cmd += ["--dtype", args.dtype]
            cmd += [arg for path in tokenizers for arg in ("--tokenizer", str(path))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-4000:], file=sys.stderr)
                return 1
            reference = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"steps": args.steps, "guidance": job["guidance"]} | reference)

    out = args.size * 2
    name = "PASD-SDXL" if args.family == "sdxl" else "PASD"
    widths = "TINY widths (a plumbing check, not a benchmark)" if args.tiny_widths else "full width"
    print(f"\n{name} {widths}, random weights, {args.size}² → {out}², {args.steps} steps, ", end="")
    print(f"guidance {job['guidance']}, ControlNet scale {job['conditioning_scale']}")
    print(f"{'pipeline':<10} {'device':<28} {'dtype':<15} {'steps':>5} {'guid.':>5} ", end="")
    print(f"{'s/image':>8} {'peak GiB':>9}")
    for row in rows:
        name, device, dtype, steps, guidance = (
            row[k] for k in ("name", "device", "dtype", "steps", "guidance")
        )
        print(
            f"{name:<10} {device:<28} {dtype:<15} {steps:>5} {guidance:>5.1f} {row['seconds']:>8.2f} "
            f"{row['peak_gib']:>9.2f}"
        )
    print("peak: CUDA max_memory_allocated of the last run; CPU: the process's peak resident set so far")
    by_name = {row["name"]: row for row in rows}
    if "ours fast" in by_name:
        fast = by_name["ours fast"]
        print(f"\nfast mode (LCM-LoRA fused once in {fast['fuse_seconds']:.2f} s): ", end="")
        print(f"{by_name['ours']['seconds'] / fast['seconds']:.2f}× the speed of the normal run")
    if "reference" in by_name:
        speed_up = by_name["reference"]["seconds"] / by_name["ours"]["seconds"]
        print(f"\nspeed-up over the reference: {speed_up:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
