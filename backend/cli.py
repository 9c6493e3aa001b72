"""Command line of the backend: model management, and upscale/colorize (``restore_cli``).

Exit codes: 0 success, 1 a model, download or run problem (with a message that says what to do),
2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    if args.variant in ("modelscope-v1", "modelscope-v2"):
        from .models.tiny import write_tiny_modelscope

        version = "pasd" if args.variant == "modelscope-v1" else "pasd_v2"
        root = write_tiny_modelscope(args.dir, version, seed=args.seed)
        print(f"Wrote a tiny ModelScope PASD {args.variant[-2:]} snapshot (with its checkpoint) to {root}")
        return 0
    if args.variant == "lcm-lora":
        from .models.pasd.tiny_lcm import write_tiny_lcm_lora

        path = write_tiny_lcm_lora(args.dir, seed=args.seed)
        print(f"Wrote a tiny LCM-LoRA (lcm-lora-sdv1-5's layout, for the tiny SD1.5 models) to {path}")
        return 0
    if args.variant == "supir":
        from .models.supir.tiny import write_tiny_supir

        root = write_tiny_supir(args.dir, seed=args.seed, base=args.base)
        print(f"Wrote a tiny SUPIR model (SDXL base as {args.base}) to {root}")
        return 0
    from .models.tiny import write_tiny_model

    root = write_tiny_model(args.dir, variant=args.variant, seed=args.seed, use_rrdb=args.rrdb)
    what = "PASD-SDXL" if args.variant == "sdxl" else f"{args.variant} PASD"
    print(f"Wrote a tiny {what} model to {root}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import FAMILIES, REGISTRY
    from .models.store import _models_dir, installed_models

    root = _models_dir(args.models)
    installed = {m.root.name: m for m in installed_models(root)}
    print(f"Model folder: {root}")
    print(f"{'id':<22} {'family':<10} {'tasks':<10} {'variant':<8} {'size':>9}  {'status':<10} licence")
    for spec in REGISTRY.values():
        on_disk = bool(spec.files) and (root / spec.id / spec.files[0]).is_file()
        status = "installed" if spec.id in installed or on_disk else "-"
        size = f"{spec.size_bytes / 1e9:.2f} GB" if spec.files else "linked"  # only other entries' files
        print(
            f"{spec.id:<22} {spec.family or '-':<10} {','.join(spec.tasks) or 'base':<10} "
            f"{spec.variant or '-':<8} {size:>9}  {status:<10} {spec.licence}"
        )
    for name, model in installed.items():
        if name not in REGISTRY:
            m = model.manifest
            print(
                f"{name:<22} {m.family:<10} {','.join(m.tasks):<10} {m.variant:<8} {'':>9}  "
                f"{'local':<10} {m.licence}"
            )
    from .models.pasd.styles import STYLES_DIR, find_styles

    styles = find_styles(root)
    print()
    print(
        f"Styles (personalized SD1.5 bases for the PASD SD1.5 models; --style NAME), in {root / STYLES_DIR}:"
    )
    for style in styles:
        what = {"checkpoint": "SD1.5 checkpoint", "unet": "UNet folder", "lora": "LoRA"}[style.kind]
        print(f"  {style.name:<28} {what:<17} strength {style.default_strength:g}  {style.licence}")
    if not styles:
        print("  none: put .safetensors/.ckpt checkpoints, LoRAs or UNet folders there, or download "
              "style-majicmix-realistic")  # fmt: skip
    print()
    for family in FAMILIES.values():
        d = family.defaults["upscale"]
        line = (
            f"{family.id}: {family.title} (needs {family.base}); about {family.gpu_memory_gb:g} GB of GPU "
            f"memory in half precision; defaults {d.steps} steps, guidance {d.guidance:g}, fidelity "
            f"{d.fidelity:g}, process size {d.process_size}"
        )
        print(line + (f"; {family.note}" if family.note else ""))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .models.registry import get_spec, with_requirements
    from .models.store import download_model

    for model_id in args.ids:
        specs = with_requirements(model_id)
        total = sum(s.size_bytes for s in specs)
        print(
            f"Downloading {model_id} with {', '.join(s.id for s in specs[:-1]) or 'nothing else'}: "
            f"up to {total / 1e9:.2f} GB"
        )
        path = download_model(model_id, args.models, progress=not args.quiet, accepted=args.accept_licence)
        print(f"{get_spec(model_id).title}: ready in {path}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .models import PasdControlNetModel, PasdUNet2DConditionModel
    from .models.store import resolve_model

    model = resolve_model(args.model, args.models)
    if model.manifest.family == "supir":
        return _inspect_supir(model)
    unet = PasdUNet2DConditionModel.from_pretrained(model.manifest.resolve(model.root, "unet"))
    controlnet = PasdControlNetModel.from_pretrained(model.manifest.resolve(model.root, "controlnet"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"{model.root}: PASD-{unet.pasd_variant}, tasks {', '.join(model.manifest.tasks)}")
    print(f"  unet:       {count(unet) / 1e6:10.2f} M parameters, loaded strictly")
    print(f"  controlnet: {count(controlnet) / 1e6:10.2f} M parameters, rrdb={controlnet.config.use_rrdb}")
    return 0


def _inspect_supir(model: Any) -> int:
    """SUPIR's files checked part by part against the official layout (headers only: gigabytes
    need not be read), with each part's size."""
    from .models.supir.configs import full_configs
    from .models.supir.loading import build, check_files, part_maps
    from .models.supir.tiny import tiny_supir_configs

    m, root = model.manifest, model.root
    configs = tiny_supir_configs(m.resolve(root, "tokenizer")) if m.tiny else full_configs()
    base = m.resolve(root, "base_file") if "base_file" in m.extra else None
    report = check_files(configs, m.resolve(root, "supir"), base)
    print(f"{root}: SUPIR, tasks {', '.join(m.tasks)}; every part matches the official layout")
    print(f"  SUPIR weights: {m.resolve(root, 'supir')}")
    print(f"  SDXL base:     {base or m.resolve(root, 'unet').parent}")
    shapes = build(configs)
    for part, (module, keymap) in part_maps(shapes, configs).items():
        count = sum(module.state_dict()[k].numel() for k in keymap)
        print(f"  {part:<16} {count / 1e6:10.2f} M parameters")
    ignored = [k for keys in report.ignored.values() for k in keys]
    if ignored:
        print(f"  ignored (no part of SUPIR): {', '.join(ignored[:6])}{' …' if len(ignored) > 6 else ''}")
    return 0


def _cmd_faces(args: argparse.Namespace) -> int:
    """The soft face mask the runs would use, at the image's size, for scripts and for checking."""
    import json

    import numpy as np

    from .faces import FaceDetectionError, describe, detect_faces, faces_mask
    from .image_io import ImageInputError, read_image, write_image

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; use --force to replace it", file=sys.stderr)
        return 1
    if args.output.resolve() == args.image.resolve():
        print("error: the mask would replace the image; choose another file name", file=sys.stderr)
        return 1
    try:
        image = read_image(args.image)
        faces = detect_faces(image)
    except (ImageInputError, FaceDetectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mask = faces_mask(image.shape[:2], faces)
    try:
        write_image(args.output, np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    except (ImageInputError, OSError) as exc:
        print(f"error: could not write {args.output}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"faces": [f.to_dict() for f in faces], "width": image.shape[1],
                          "height": image.shape[0]}))  # fmt: skip
    else:
        print(f"{args.output}: {image.shape[1]}×{image.shape[0]} mask; {describe(faces)}")
        for face in faces:
            print(
                f"face: {face.width}×{face.height} at {face.x},{face.y} ({face.kind}, score {face.score:.2f})"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="GIMP Diffusion Upscale backend")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny-model", help="write a tiny random-weight model folder in the official layout")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--variant",
        choices=("full", "light", "color", "sdxl", "supir", "modelscope-v1", "modelscope-v2", "lcm-lora"),
        default="full",
        help="PASD full / light / colour on a tiny SD1.5 base, PASD-SDXL on a tiny SDXL base, SUPIR in "
        "its official single-file layouts, a ModelScope PASD snapshot, or the fast mode's LCM-LoRA (write "
        "it to <models>/lcm-lora-sdv1-5)",
    )
    p.add_argument(
        "--base",
        choices=("file", "folders"),
        default="file",
        help="SUPIR only: its SDXL base as one official file (default) or as diffusers folders",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rrdb", action="store_true", help="give the ControlNet the RRDB pre-processing blocks")
    p.set_defaults(func=_cmd_tiny_model)

    p = sub.add_parser("models", help="list known and installed models")
    p.add_argument("--models", type=Path, help="model folder (default: the per-user one)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("download", help="download models from the Hugging Face hub")
    p.add_argument("ids", nargs="+")
    p.add_argument("--models", type=Path, help="model folder (default: the per-user one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--accept-licence",
        action="append",
        default=[],
        metavar="TERMS",
        help="accept a model's licence terms before its download (e.g. 'supir': SUPIR's non-commercial "
        "licence; without this the terms are shown and nothing is fetched)",
    )
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("inspect", help="load a model folder strictly and describe it")
    p.add_argument("model", help="model id or folder")
    p.add_argument("--models", type=Path, help="model folder (default: the per-user one)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("faces", help="find faces and write the soft face mask (8-bit grey, the image's size)")
    p.add_argument("image", type=Path, help="PNG, TIFF, JPEG, WebP or .npy")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the mask (e.g. mask.png)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--json", action="store_true", help="print the faces as JSON instead of text")
    p.set_defaults(func=_cmd_faces)

    from .batch_cli import add_batch_parser
    from .doctor import add_doctor_parser
    from .restore_cli import add_restore_parsers
    from .service.server import add_service_parsers

    add_restore_parsers(sub)
    add_batch_parser(sub)
    add_service_parsers(sub)
    add_doctor_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models.loading import ModelLoadError
    from .models.store import ModelDownloadError

    try:
        return args.func(args)
    except (ModelLoadError, ModelDownloadError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 1
