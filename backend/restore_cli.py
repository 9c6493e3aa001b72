"""``python -m backend upscale|colorize``: one image through the engine, with a progress bar.

Exit codes: 0 written, 1 the run failed (bad input, missing model, out of memory; the message says
what to do), 2 bad usage, 130 interrupted. The output is written atomically and an existing file
is only replaced with ``--force``, so a failed run never destroys anything.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .client import STAGE_NAMES

if TYPE_CHECKING:
    from .pipelines.params import RestoreParams


def add_restore_parsers(sub: argparse._SubParsersAction) -> None:
    for task in ("upscale", "colorize"):
        helptext = "upscale and restore an image" if task == "upscale" else "colorize a black-and-white image"
        p = sub.add_parser(task, help=helptext)
        p.add_argument("input", type=Path, help="PNG, TIFF, JPEG, WebP or .npy (8 or 16 bit, alpha kept)")
        p.add_argument("-o", "--output", type=Path, required=True, help="where to write the result")
        p.add_argument("--force", action="store_true", help="replace the output file if it exists")
        add_knob_arguments(p, upscale=task == "upscale", mask=True)
        p.set_defaults(func=run_restore, task=task)


def add_knob_arguments(
    p: argparse.ArgumentParser,
    upscale: bool = True,
    mask: bool = True,
    seed_help: str = "default: random (printed)",
) -> None:
    """Every knob of a run, the model, device and server options: one list for upscale/colorize and batch."""
    if upscale:
        p.add_argument("--scale", type=float, default=2.0, help="1 to 4 (1 restores without resizing)")
        p.add_argument("--prescaler", help="GAN upscaler weights for pre-scaling (needs spandrel)")
        p.add_argument("--no-color-fix", action="store_true", help="skip the colour fix")
        p.add_argument(
            "--color-fix",
            choices=("wavelet", "adain"),
            default="wavelet",
            help="how colours are matched to the input: wavelet (local; default) or adain (per channel)",
        )
    p.add_argument("--model", help="model id or folder (default: the task's installed model)")
    p.add_argument("--models", type=Path, help="model folder (default: the per-user one)")
    p.add_argument("--prompt", default="", help="what the picture shows, in a few words")
    p.add_argument("--auto-prompt", action="store_true", help="add words from the captioning model")
    p.add_argument(
        "--prompt-words",
        choices=("caption", "classify"),
        default="caption",
        help="where --auto-prompt's words come from: a BLIP caption (default) or the ImageNet class "
        "(as ModelScope's PASD; needs resnet50-classifier)",
    )
    p.add_argument("--quality-prompt", help="quality words added to the prompt (default: the model's)")
    p.add_argument("--negative-prompt", help="what to avoid (default: the model's)")
    if mask:
        p.add_argument("--mask", type=Path, help="foreground mask (grey or alpha), same size as the input")
    faces = p.add_mutually_exclusive_group()
    faces.add_argument(
        "--faces",
        action="store_const",
        const="on",
        dest="faces",
        help="faces found automatically are the foreground (added to --mask); without --faces they are "
        "used when there is no mask and --fidelity-fg differs from --fidelity-bg",
    )
    faces.add_argument(
        "--no-faces", action="store_const", const="off", dest="faces", help="never look for faces"
    )
    p.set_defaults(faces="auto")
    style = p.add_argument_group("personalized base model and fast mode (PASD SD1.5 models)")
    style.add_argument(
        "--style",
        help="a style from `python -m backend models` or a file/folder: an SD1.5 checkpoint "
        "(.safetensors/.ckpt), a kohya LoRA or a diffusers UNet folder",
    )
    style.add_argument(
        "--style-strength",
        type=float,
        help="0 to 2: blending alpha of a checkpoint (default 1) or a LoRA's multiplier (default 0.6)",
    )
    style.add_argument(
        "--lora-scaling",
        choices=("alpha", "reference"),
        default="alpha",
        help="a style LoRA's alpha: scale by alpha/rank (default) or ignore it as PASD's code does",
    )
    style.add_argument(
        "--fast",
        action="store_true",
        help="LCM-LoRA fast mode: 4 steps at guidance 1.5 unless --steps/--guidance "
        "(needs `python -m backend download lcm-lora-sdv1-5`)",
    )
    p.add_argument(
        "--fidelity-fg", type=float, help="0 to 2: fidelity inside the mask (default: the model's)"
    )
    p.add_argument("--fidelity-bg", type=float, help="0 to 2: fidelity elsewhere (default: the model's)")
    p.add_argument(
        "--steps", type=int, help="1 to 200 (default: the model's: 20 PASD, 25 PASD-SDXL, 50 SUPIR)"
    )
    p.add_argument(
        "--guidance", type=float, help="0 to 30 (default: the model's: 7.5 PASD, 7 PASD-SDXL, 4 SUPIR)"
    )
    p.add_argument("--seed", type=int, help=seed_help)
    p.add_argument("--tile", type=int, help="diffusion tile in pixels (default: from free memory)")
    p.add_argument("--vae-tile", type=int, help="VAE tile in pixels (default: from free memory)")
    p.add_argument(
        "--process-size",
        type=int,
        help="short side the model works at (default: the model's: 768 PASD, 1280 PASD-SDXL, 1024 SUPIR)",
    )
    p.add_argument(
        "--noise-level",
        type=int,
        help="PASD's added noise level, 0 to 999 (default 900; PASD-SDXL starts from pure noise)",
    )
    supir = p.add_argument_group("SUPIR's sampler (other models ignore these; defaults: the model's)")
    supir.add_argument(
        "--guidance-start",
        type=float,
        help="guidance at the first step, rising linearly to --guidance (1)",
    )
    supir.add_argument(
        "--fidelity-start",
        type=float,
        help="fidelity (control scale) at the first step, linear to the fidelities (default: constant)",
    )
    supir.add_argument(
        "--restoration",
        type=float,
        help="restoration guidance strength τ: pulls early steps towards the input (0 or less: off)",
    )
    supir.add_argument(
        "--restoration-fg",
        type=float,
        default=1.0,
        help="0 to 1: its weight inside the mask (0: off there)",
    )
    supir.add_argument("--restoration-bg", type=float, default=1.0, help="0 to 1: its weight elsewhere")
    supir.add_argument("--churn", type=float, help="noise added back each step (5)")
    supir.add_argument("--churn-noise", type=float, help="scale of that noise (1.01)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    p.add_argument("--dtype", default="auto", help="auto, fp16, bf16 or fp32")
    p.add_argument(
        "--offload",
        choices=("auto", "on", "off"),
        default="auto",
        help="keep models in system memory and move each to the GPU only for its stage "
        "(auto: when GPU memory is short)",
    )
    p.add_argument(
        "--server",
        metavar="URL",
        help="run on a backend server (e.g. http://127.0.0.1:7861) instead of in this process; "
        "--device, --dtype and --offload are then the server's",
    )
    p.add_argument("--token", help="the server's access token (default: $DIFFUSION_UPSCALE_TOKEN)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_restore(args: argparse.Namespace) -> int:
    from .devices import DeviceError
    from .engine import Canceled, Engine, EngineError, OutOfMemory
    from .image_io import ImageInputError, read_image, read_mask
    from .pipelines.params import ParamsError

    output: Path = args.output
    if output.resolve() == args.input.resolve():
        print("error: the output would replace the input; choose another file name", file=sys.stderr)
        return 1
    if output.exists() and not args.force:
        print(f"error: {output} exists; use --force to replace it", file=sys.stderr)
        return 1
    try:
        params = params_from_args(args).validate()
        image = read_image(args.input)
        mask = read_mask(args.mask, image.shape[:2]) if args.mask else None
        if args.server:
            return _run_on_server(args, params, image, mask)
        offload = {"auto": None, "on": True, "off": False}[args.offload]
        engine = Engine(args.models, device=args.device, dtype=args.dtype, offload=offload)
    except (ParamsError, ImageInputError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    bar = _progress_bar(args)

    def progress(stage: str, step: int, total: int) -> None:
        _show(bar, stage, step, total)

    try:
        result = engine.restore(image, params, mask=mask, model=args.model, progress=progress)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing written", file=sys.stderr)
        return 130
    except Canceled:
        print("canceled; nothing written", file=sys.stderr)
        return 130
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, OutOfMemory):  # the engine's words are for every front end; these are ours
            print("(tile sizes: --tile and --vae-tile)", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    if not _write(output, result.image):
        return 1
    h, w = result.plan.output_size
    print(
        f"{output}: {w}×{h}, model {result.model}, seed {result.seed}, {result.seconds:.1f} s "
        f"({result.plan.tiles} tile{'s' if result.plan.tiles != 1 else ''})"
    )
    print(f"prompt: {result.prompt}")
    for face in result.faces:
        print(f"face: {face.width}×{face.height} at {face.x},{face.y} ({face.kind}, score {face.score:.2f})")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def params_from_args(args: argparse.Namespace, seed: bool = True) -> RestoreParams:
    """The run's parameters from the knob arguments (:func:`add_knob_arguments`), not yet validated."""
    from .pipelines.params import RestoreParams

    return RestoreParams(
        task=args.task,
        scale=args.scale if args.task == "upscale" else 1.0,
        prompt=args.prompt,
        auto_prompt=args.auto_prompt,
        quality_prompt=args.quality_prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed if seed else None,
        fidelity_fg=args.fidelity_fg,
        fidelity_bg=args.fidelity_bg,
        process_size=args.process_size,
        added_noise_level=args.noise_level,
        color_fix=not getattr(args, "no_color_fix", False),
        color_fix_method=getattr(args, "color_fix", "wavelet"),
        tile=args.tile,
        vae_tile=args.vae_tile,
        prescaler=getattr(args, "prescaler", None),
        guidance_start=args.guidance_start,
        fidelity_start=args.fidelity_start,
        restoration=args.restoration,
        restoration_fg=args.restoration_fg,
        restoration_bg=args.restoration_bg,
        churn=args.churn,
        churn_noise=args.churn_noise,
        faces=args.faces,
        auto_prompt_source=args.prompt_words,
        style=args.style,
        style_strength=args.style_strength,
        style_lora_scaling=args.lora_scaling,
        fast=args.fast,
    )


def _progress_bar(args: argparse.Namespace) -> tqdm | None:
    return None if args.quiet else tqdm(total=1, unit="step", dynamic_ncols=True, leave=False)


def _show(bar: tqdm | None, stage: str, step: int, total: int) -> None:
    if bar is None:
        return
    bar.set_description(STAGE_NAMES.get(stage, stage))
    bar.total = max(total, 1)
    bar.n = step
    bar.refresh()


def _write(output: Path, image: np.ndarray) -> bool:
    from .image_io import ImageInputError, write_image

    try:
        write_image(output, image)
    except (ImageInputError, OSError) as exc:
        print(f"error: could not write {output}: {exc}", file=sys.stderr)
        return False
    return True


def _run_on_server(
    args: argparse.Namespace, params: RestoreParams, image: np.ndarray, mask: np.ndarray | None
) -> int:
    """The same run through the HTTP service (e.g. a studio's GPU machine), with the same bar and codes."""
    from .client import Client, ClientError, JobCanceled, RawImage

    def raw(array: np.ndarray) -> RawImage:
        array = np.ascontiguousarray(array if array.ndim == 3 else array[..., None])
        h, w, c = array.shape
        return RawImage(w, h, c, str(array.dtype), array.data)

    client = Client(args.server, token=args.token)
    bar = _progress_bar(args)
    job_id = None
    try:
        image_id = client.upload(raw(image)).id
        mask_id = client.upload(raw(mask)).id if mask is not None else None
        job_id = client.submit(image_id, params.to_dict(), mask=mask_id, model=args.model).id
        job = client.wait(job_id, lambda j: _show(bar, j.progress.stage, j.progress.step, j.progress.total))
        result = client.result_image(job_id)
    except KeyboardInterrupt:
        if job_id is not None:
            with contextlib.suppress(ClientError):
                client.cancel(job_id)
        print("\ninterrupted; the job was canceled and nothing written", file=sys.stderr)
        return 130
    except JobCanceled as exc:
        print(f"canceled ({exc}); nothing written", file=sys.stderr)
        return 130
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    shape = (result.height, result.width, result.channels)
    if not _write(args.output, np.frombuffer(result.data, dtype=result.dtype).reshape(shape)):
        return 1
    info = job.result or {}
    print(
        f"{args.output}: {result.width}×{result.height}, model {info.get('model')}, seed {info.get('seed')}, "
        f"{info.get('seconds', 0):.1f} s on {args.server}"
    )
    print(f"prompt: {info.get('prompt', '')}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    return 0
