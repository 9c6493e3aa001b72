"""``python -m backend batch IN_DIR OUT_DIR``: a folder through the engine, a server or Ray actors.

Exit codes: 0 every image done, 1 some failed (the summary says which and why) or the batch stopped (a
full disk), 2 bad usage and nothing was run (including OUT_DIR == IN_DIR, a bad side file, or a resume
with other options), 130 interrupted (run it again to resume; the manifest in OUT_DIR/.gdu-batch/ says
what is done).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .restore_cli import add_knob_arguments, params_from_args

if TYPE_CHECKING:
    from tqdm import tqdm

    from .batch import BatchOptions, BatchProgress, Runner


def add_batch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="restore every image in a folder (resumable)",
        description="Every PNG/TIFF/JPEG/WebP/.npy under IN_DIR is restored into the same relative path "
        "under OUT_DIR, in its own format. Run the same command again to resume an interrupted batch.",
    )
    p.add_argument("in_dir", type=Path, help="folder of images (left untouched)")
    p.add_argument("out_dir", type=Path, help="where results go (same relative paths and file names)")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--task", choices=("upscale", "colorize"), default="upscale")
    p.add_argument(
        "--masks",
        type=Path,
        metavar="MASK_DIR",
        help="foreground masks: MASK_DIR/<same relative path> with any image extension",
    )
    p.add_argument(
        "--params-file",
        type=Path,
        metavar="FILE",
        help="per-image parameters: CSV with a header file,prompt,... or JSON "
        "{relative path: {param: value}}; a 'mask' column/key names a mask file relative to FILE",
    )
    p.add_argument(
        "--existing",
        choices=("replace", "keep"),
        default="replace",
        help="an output file the batch's manifest does not vouch for: replace it (default) or keep it",
    )
    p.add_argument(
        "--force-options", action="store_true", help="resume even though the options differ from the start's"
    )
    ray = p.add_argument_group("Ray (pip install .[ray])")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray actors: a local Ray (no ADDRESS) or an existing cluster (e.g. 10.0.0.5:6379)",
    )
    ray.add_argument(
        "--ray-actors",
        type=int,
        help="number of actors (default: one per GPU; without GPUs one, using every core)",
    )
    ray.add_argument(
        "--ray-gpus-per-actor", type=float, default=1.0, help="GPUs each actor holds (default 1)"
    )
    ray.add_argument(
        "--ray-files",
        choices=("shared", "send"),
        help="shared: actors read IN_DIR and write OUT_DIR themselves (every node must see them); send: "
        "the images' bytes travel through Ray and this machine writes the results "
        "(default: shared for a local Ray, send for a cluster ADDRESS)",
    )
    add_knob_arguments(
        p, upscale=True, mask=False, seed_help="batch seed: each image's seed derives from it and its path"
    )
    p.set_defaults(func=run_batch_cli)


def options_from_args(args: argparse.Namespace) -> BatchOptions:
    from .batch import BatchOptions

    return BatchOptions(
        in_dir=args.in_dir,
        out_dir=args.out_dir,
        params=params_from_args(args, seed=False),
        model=args.model,
        models_dir=args.models,
        recursive=args.recursive,
        masks_dir=args.masks,
        side_file=args.params_file,
        seed=args.seed,
        existing=args.existing,
        force_options=args.force_options,
    )


def make_runner(args: argparse.Namespace) -> Runner:
    from .batch import LocalRunner, ServerRunner

    if args.ray and args.server:
        raise ValueError("choose --ray or --server, not both")
    if args.ray:
        from .batch_ray import RayRunner

        return RayRunner(
            address=None if args.ray == "local" else args.ray,
            actors=args.ray_actors,
            gpus_per_actor=args.ray_gpus_per_actor,
            models_dir=args.models,
            device=args.device,
            dtype=args.dtype,
            files=args.ray_files,
        )
    if args.ray_files:
        raise ValueError("--ray-files goes with --ray")
    if args.server:
        return ServerRunner(args.server, token=args.token)
    offload = {"auto": None, "on": True, "off": False}[args.offload]
    return LocalRunner(args.models, device=args.device, dtype=args.dtype, offload=offload)


def run_batch_cli(args: argparse.Namespace) -> int:
    from .batch import BatchAborted, BatchError, run_batch
    from .client import ClientError

    if args.seed is not None and args.seed < 0:
        print("error: --seed must be 0 or more", file=sys.stderr)
        return 2
    try:
        options = options_from_args(args)
        runner = make_runner(args)
    except (BatchError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = None if args.quiet else _bar()
    try:
        summary = run_batch(options, runner, progress=(lambda p: _show(bar, p)) if bar is not None else None)
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BatchAborted) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
        runner.close()
    print(summary.table())
    if summary.aborted:
        print(f"error: {summary.aborted}", file=sys.stderr)
    if summary.interrupted:
        print(f"interrupted; run the same command again to resume ({options.out_dir})", file=sys.stderr)
    return summary.exit_code


def _bar() -> tqdm:
    from tqdm import tqdm

    return tqdm(total=1, unit="image", dynamic_ncols=True, leave=False)


def _show(bar: tqdm, p: BatchProgress) -> None:
    from .client import STAGE_NAMES, format_duration

    bar.total = max(p.total, 1)
    bar.n = p.done
    stage = STAGE_NAMES.get(p.stage, p.stage)
    step = f" {p.step}/{p.steps}" if p.steps > 1 else ""
    bar.set_description(f"{p.current}: {stage}{step}", refresh=False)
    bar.set_postfix_str(f"ETA {format_duration(p.eta)}" if p.eta is not None else "", refresh=False)
    bar.refresh()
