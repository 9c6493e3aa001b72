"""``python -m gui``: the dialog on a job file from the plug-in, or on an image file.

Exit codes: 0 applied (result and answer written), 3 canceled (nothing written), 1 an error that
stops the dialog from opening (message on stderr, which the plug-in shows), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QDialog

from backend.client import (
    DIALOG_EXIT_APPLIED,
    DIALOG_EXIT_CANCELED,
    ClientError,
    DialogAnswer,
    DialogJob,
    JobInfo,
    RawImage,
    Undelivered,
    read_npy,
    write_npy,
)

from .dialog import DialogInput, RestoreDialog
from .imaging import as_array, to_raw
from .request import Request

EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_SERVER = "http://127.0.0.1:7861"
# Formats a result is written in as they are; others (JPEG: lossy) become PNG.
KEEP_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".npy")


class InputError(Exception):
    """The dialog cannot open: a message for the user."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gui",
        description="Diffusion upscaling and colorization dialog: set up a run, preview it, apply it.",
    )
    parser.add_argument("image", nargs="?", help="an image file (PNG, TIFF, JPEG, WebP, .npy) to work on")
    parser.add_argument("--job", metavar="FILE", help="a job file written by the GIMP plug-in")
    parser.add_argument("--mask", help="with IMAGE: a selection mask of the same size (grey or alpha)")
    parser.add_argument("--task", choices=("upscale", "colorize"), default="upscale", help="with IMAGE")
    parser.add_argument(
        "--server",
        default=os.environ.get("DIFFUSION_UPSCALE_URL") or DEFAULT_SERVER,
        help="with IMAGE: the backend's address (default: %(default)s)",
    )
    parser.add_argument("--models", help="with IMAGE: the model folder for a backend started from the dialog")
    parser.add_argument("-o", "--output", help="with IMAGE: where to write the result (default: beside it)")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.add_argument(
        "--press",
        choices=("apply", "cancel"),
        help="press Apply or Cancel once the backend is ready (installation checks and tests)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2)
        return int(exc.code or 0)
    if bool(args.job) == bool(args.image):
        parser.print_usage(sys.stderr)
        print("python -m gui: give either --job FILE or an IMAGE file", file=sys.stderr)
        return EXIT_USAGE
    if args.job and (args.mask or args.output):
        print("python -m gui: --mask and --output go with an IMAGE, not with --job", file=sys.stderr)
        return EXIT_USAGE
    if args.output and Path(args.output).exists() and not args.force:
        print(f"python -m gui: {args.output} exists; add --force to overwrite it", file=sys.stderr)
        return EXIT_USAGE
    written: list[Path] = []
    try:
        source = job_input(args.job) if args.job else file_input(args, written)
    except (InputError, ClientError) as exc:
        print(f"python -m gui: {exc}", file=sys.stderr)
        return EXIT_ERROR

    app = QApplication.instance() or QApplication(sys.argv[:1] or ["gui"])
    app.setApplicationName("GIMP Diffusion Upscale")
    dialog = RestoreDialog(source)
    if args.press:
        dialog.press_when_ready(args.press)
    QTimer.singleShot(0, lambda: (dialog.raise_(), dialog.activateWindow()))  # above the host's window
    code = dialog.exec()
    dialog.deleteLater()
    if code != QDialog.DialogCode.Accepted:
        return DIALOG_EXIT_CANCELED
    if written:
        print(f"Wrote {written[-1]}")
    return DIALOG_EXIT_APPLIED


# --------------------------------------------------------------------------- a job file (the plug-in)
def job_input(path: str) -> DialogInput:
    job = DialogJob.read(path)
    image = _read_npy(job.image, "image")
    mask = _read_npy(job.mask, "mask") if job.mask else None
    if mask is not None and (mask.width, mask.height) != (image.width, image.height):
        raise InputError(
            f"The mask is {mask.width}×{mask.height} pixels but the image is {image.width}×{image.height}."
        )
    for target in (job.result, job.answer):
        if not Path(target).parent.is_dir():
            raise InputError(f"The folder for {target} does not exist.")

    def deliver(request: Request, info: JobInfo, result: RawImage) -> None:
        """The result first, then the answer: the host reads the answer as "everything is there"."""
        write_npy(job.result, result)
        try:
            DialogAnswer(request.recorded, request.options, {"id": info.id, **(info.result or {})}).write(
                job.answer
            )
        except BaseException:
            Path(job.result).unlink(missing_ok=True)
            raise

    def adopt(kept: Undelivered) -> None:
        """An earlier finished result as this run's: the same two files, the answer last."""
        answer = DialogAnswer.read(kept.answer)
        write_npy(job.result, read_npy(kept.result))
        answer.job = {**answer.job, "undelivered": job.key}  # the host drops the kept copy once applied
        answer.write(job.answer)

    folder = Path(path).resolve().parent
    return DialogInput(
        task=job.task,
        image=image,
        mask=mask,
        server=job.server,
        token=job.token,
        python=job.python,
        models=job.models,
        title=job.title,
        host_settings=job.settings,
        deliver=deliver,
        host_pid=job.host_pid,
        about=job.about,
        window=job.window if isinstance(job.window, dict) else None,
        stop_file=job.stop,
        # The host's own run folder (its stop file lives there): only that is ever removed.
        scratch=folder if job.stop and Path(job.stop).resolve().parent == folder else None,
        undelivered=Undelivered.read(job.undelivered) if job.undelivered else None,
        adopt=adopt,
    )


def _read_npy(path: str, what: str) -> RawImage:
    try:
        return read_npy(path)
    except (OSError, ValueError, KeyError, SyntaxError, ClientError) as exc:
        raise InputError(f"Cannot read the {what} {path}: {exc}") from exc


# --------------------------------------------------------------------------- an image file
def file_input(args: argparse.Namespace, written: list[Path]) -> DialogInput:
    """The image (and mask) through the backend's reader, at their stored depth."""
    from backend.image_io import ImageInputError, read_image, read_mask, write_image

    source = Path(args.image)
    try:
        pixels = read_image(source)
        mask = read_mask(args.mask, pixels.shape[:2]) if args.mask else None
    except (ImageInputError, OSError) as exc:
        raise InputError(str(exc)) from exc
    output = Path(args.output) if args.output else None

    def deliver(request: Request, info: JobInfo, result: RawImage) -> None:
        array = as_array(result)
        target = output or free_name(source, request, array.dtype.kind == "f")
        write_image(target, array)
        written.append(target)

    return DialogInput(
        task=args.task,
        image=to_raw(pixels),
        mask=to_raw(mask) if mask is not None else None,
        server=args.server,
        models=args.models,
        title=source.name,
        host_options=False,
        task_fixed=False,
        deliver=deliver,
    )


def free_name(source: Path, request: Request, floating: bool) -> Path:
    """``photo-upscaled-2x.png`` beside the input, never over an existing file."""
    params = request.params
    what = f"upscaled-{round(params['scale'])}x" if params["task"] == "upscale" else "colorized"
    suffix = source.suffix.lower() if source.suffix.lower() in KEEP_SUFFIXES else ".png"
    if floating and suffix in (".png", ".webp"):
        suffix = ".tif"  # float results keep their precision only in TIFF and .npy
    candidate = source.with_name(f"{source.stem}-{what}{suffix}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = source.with_name(f"{source.stem}-{what}-{n}{suffix}")
    return candidate
