"""The plug-in's logic that does not need GIMP: arguments, regions, formats, names, settings.

Standard library only (GIMP on Windows and macOS bundles a Python without pip), and importable
without ``gi``, so the normal test suite checks it. ``diffusion_upscale.py`` is the thin GIMP side.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # the installer copies backend/client.py beside the plug-in under this name
    import gdu_client as client
except ImportError:  # running from a checkout: gimp_plugin/diffusion_upscale/ → the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from backend import client  # type: ignore[no-redef]

PROC_UPSCALE = "plug-in-diffusion-upscale"
PROC_COLORIZE = "plug-in-diffusion-colorize"
TASK_OF = {PROC_UPSCALE: "upscale", PROC_COLORIZE: "colorize"}
CONFIG_NAME = "diffusion_upscale.json"
PARASITE_NAME = "diffusion-upscale-run"
DEFAULT_URL = "http://127.0.0.1:7861"
URL_VARIABLE = "DIFFUSION_UPSCALE_URL"
TOKEN_VARIABLE = "DIFFUSION_UPSCALE_TOKEN"
CA_VARIABLE = "DIFFUSION_UPSCALE_CA"  # the certificate file of an https backend (client.py reads it)


class PluginError(Exception):
    """A problem to show the user in plain words (then the procedure returns an execution error)."""


class EnvironmentBroken(PluginError):
    """The backend environment itself cannot run: GIMP's own dialog could not work either."""


# --------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class Argument:
    """One procedure argument; the GIMP side registers these, so names and ranges live here only."""

    name: str
    kind: str  # int | double | string | boolean | choice
    nick: str
    blurb: str
    default: Any
    low: float = 0
    high: float = 0
    choices: tuple[tuple[str, str], ...] = ()  # (id, label)
    tasks: tuple[str, ...] = ("upscale", "colorize")


ARGUMENTS: tuple[Argument, ...] = (
    Argument("scale", "int", "_Scale", "Upscaling factor (1 restores without resizing)", 2, 1, 4,
             tasks=("upscale",)),
    Argument("prompt", "string", "_Prompt", "What the picture shows, in a few words", ""),
    Argument("fidelity-fg", "double", "Selection _fidelity",
             "How closely the selection follows the original (0 free … 2 faithful); -1: the model's own",
             -1.0, -1.0, 2.0),
    Argument("fidelity-bg", "double", "_Background fidelity",
             "How closely the rest follows the original (0 free … 2 faithful); -1: the model's own",
             -1.0, -1.0, 2.0),
    Argument("steps", "int", "S_teps", "Diffusion steps (more: slower, finer); 0: the model's own",
             0, 0, 200),
    Argument("seed", "int", "S_eed", "Random seed; -1 picks one (stored on the layer)", -1, -1, 2**31 - 1),
    Argument("output", "choice", "_Output", "Where the result goes", "layer",
             choices=(("layer", "New layer (canvas scaled)"), ("image", "New image"))),
    Argument("color-mode", "choice", "Colour _mode", "Layer mode of the colorized layer", "lch-color",
             choices=(("lch-color", "LCh colour (original luminance shows through)"), ("normal", "Normal")),
             tasks=("colorize",)),
    Argument("guidance", "double", "_Guidance",
             "How strongly the prompt steers (classifier-free guidance); -1: the model's own",
             -1.0, -1.0, 30.0),
    Argument("model", "string", "_Model", "Installed model id; empty: the task's default", ""),
    Argument("auto-prompt", "boolean", "_Describe automatically",
             "Add words from the captioning model to the prompt", False),
    Argument("negative-prompt", "string", "_Negative prompt", "What to avoid; empty: the model's default",
             ""),
    Argument("context-margin", "int", "Context _margin",
             "Pixels of context around the selection; -1: automatic", -1, -1, 4096),
    Argument("process-size", "int", "Process si_ze",
             "Short side the model works at (larger: more detail, slower), 256 to 2048; 0: the model's own",
             0, 0, 2048),
    Argument("tile", "int", "_Tile size", "Diffusion tile in pixels; 0: from free memory", 0, 0, 8192),
    Argument("noise-level", "int", "_Noise level", "PASD's added noise level; -1: the model's own",
             -1, -1, 999),
    Argument("color-fix", "boolean", "_Colour fix", "Keep the original's colours (wavelet colour fix)", True,
             tasks=("upscale",)),
    Argument("foreground", "choice", "_Foreground", "What gets the selection fidelity", "auto",
             choices=(("auto", "The selection, or faces found automatically without one"),
                      ("selection", "The selection only"),
                      ("faces", "Faces found automatically (and the selection)"))),
    Argument("faces-channel", "boolean", "Faces as a c_hannel",
             "Add the foreground used as a channel when faces were part of it, to refine it", True),
    Argument("style", "string", "St_yle",
             "Installed style (personalized SD1.5 base) for the PASD SD1.5 models; empty: none", ""),
    Argument("style-strength", "double", "Style _strength",
             "Blending alpha of a checkpoint or a LoRA's multiplier, 0 to 2; -1: the style's own",
             -1.0, -1.0, 2.0),
    Argument("fast", "boolean", "F_ast mode",
             "LCM-LoRA: 4 steps at guidance 1.5 unless steps/guidance are set (PASD SD1.5 models)", False),
    Argument("prompt-words", "choice", "Prompt _words", "Where automatic prompt words come from", "caption",
             choices=(("caption", "A caption (BLIP)"), ("classify", "The ImageNet class (as ModelScope)"))),
)  # fmt: skip

FOREGROUND_FACES = {"auto": "auto", "selection": "off", "faces": "on"}  # argument → RestoreParams.faces
FACES_CHANNEL_NAME = "Diffusion foreground (faces)"


# Arguments whose 0 / -1 means "the chosen model's own value" → the backend's parameter names
MODEL_KNOBS = {
    "steps": "steps",
    "guidance": "guidance",
    "fidelity-fg": "fidelity_fg",
    "fidelity-bg": "fidelity_bg",
    "noise-level": "added_noise_level",
    "process-size": "process_size",
}


def arguments_for(task: str) -> list[Argument]:
    return [a for a in ARGUMENTS if task in a.tasks]


@dataclass(frozen=True)
class RunSettings:
    """The procedure's arguments, checked, as one value."""

    task: str
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_values(cls, task: str, values: dict[str, Any]) -> RunSettings:
        checked: dict[str, Any] = {}
        for arg in arguments_for(task):
            value = values.get(arg.name, arg.default)
            if arg.kind in ("int", "double"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                    raise PluginError(f"{arg.name} must be a number, not {value!r}")
                if not arg.low <= value <= arg.high:
                    raise PluginError(
                        f"{arg.name} must be between {arg.low:g} and {arg.high:g}, not {value:g}"
                    )
                value = int(value) if arg.kind == "int" else float(value)
            elif arg.kind == "choice" and value not in {c for c, _ in arg.choices}:
                raise PluginError(
                    f"{arg.name} must be one of {', '.join(c for c, _ in arg.choices)}, not {value!r}"
                )
            elif arg.kind == "string":
                value = str(value or "")
            elif arg.kind == "boolean":
                value = bool(value)
            checked[arg.name] = value
        return cls(task, checked)

    def get(self, name: str) -> Any:
        return self.values.get(name, next(a.default for a in ARGUMENTS if a.name == name))

    @property
    def scale(self) -> int:
        return int(self.get("scale")) if self.task == "upscale" else 1

    def backend_params(self) -> dict[str, Any]:
        """The pipeline parameters the backend takes (``RestoreParams``'s names)."""
        params: dict[str, Any] = {
            "task": self.task,
            "scale": float(self.scale),
            "prompt": self.get("prompt"),
            "auto_prompt": self.get("auto-prompt"),
            "seed": None if self.get("seed") < 0 else self.get("seed"),
        }
        # Left at their "model's own" values (0 or -1), the backend uses the chosen model's settings.
        for arg, name in MODEL_KNOBS.items():
            value = self.get(arg)
            if value > 0 or (value == 0 and arg not in ("steps", "process-size")):
                params[name] = value
        if "process_size" in params:
            if params["process_size"] < 256:
                raise PluginError("process-size must be 0 (the model's own) or 256 to 2048")
            params["process_size"] = params["process_size"] // 8 * 8
        if self.get("negative-prompt"):
            params["negative_prompt"] = self.get("negative-prompt")
        if self.get("tile"):
            params["tile"] = max(64, self.get("tile") // 8 * 8)
        if self.task == "upscale":
            params["color_fix"] = self.get("color-fix")
        params["faces"] = FOREGROUND_FACES[self.get("foreground")]
        if self.get("style").strip():
            params["style"] = self.get("style").strip()
            if self.get("style-strength") >= 0:
                params["style_strength"] = self.get("style-strength")
        if self.get("fast"):
            params["fast"] = True
        params["auto_prompt_source"] = self.get("prompt-words")
        return params

    @property
    def model(self) -> str | None:
        return self.get("model") or None


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def intersect(self, other: Rect) -> Rect:
        x, y = max(self.x, other.x), max(self.y, other.y)
        return Rect(
            x, y, max(0, min(self.right, other.right) - x), max(0, min(self.bottom, other.bottom) - y)
        )

    def grow(self, margin: int) -> Rect:
        return Rect(self.x - margin, self.y - margin, self.width + 2 * margin, self.height + 2 * margin)

    def scaled(self, factor: int) -> Rect:
        return Rect(self.x * factor, self.y * factor, self.width * factor, self.height * factor)

    def relative_to(self, origin: Rect) -> Rect:
        return Rect(self.x - origin.x, self.y - origin.y, self.width, self.height)


def auto_margin(selection: Rect) -> int:
    """Context around a selection: an eighth of its long side, at least 32 px, so the model sees
    what surrounds a face or a patch without the crop growing much."""
    return max(32, round(max(selection.width, selection.height) / 8))


def plan_region(layer: Rect, selection: Rect | None, margin: int = -1) -> Rect:
    """The part of the layer to process, in image coordinates: the whole layer, or the selection's
    bounds grown by the context margin and clamped to the layer."""
    if layer.empty:
        raise PluginError("The layer is empty (0 pixels).")
    if selection is None:
        return layer
    inside = selection.intersect(layer)
    if inside.empty:
        raise PluginError(
            "The selection does not overlap the active layer. Select part of the layer, or select "
            "nothing to process the whole layer."
        )
    grown = inside.grow(auto_margin(inside) if margin < 0 else margin)
    return grown.intersect(layer)


# --------------------------------------------------------------------------- pixels
@dataclass(frozen=True)
class PixelFormat:
    babl: str  # the format GEGL converts to and from
    channels: int
    dtype: str  # client.RawImage dtype
    bits: int


def pixel_format(grey: bool, alpha: bool, high_bit_depth: bool) -> PixelFormat:
    """8-bit images stay 8-bit; anything deeper travels as 16-bit (GEGL converts and clamps), in the
    perceptual (gamma) encoding the models were trained on."""
    base = "Y'" if grey else "R'G'B'"
    if alpha:
        base += "A"
    bits = 16 if high_bit_depth else 8
    channels = (1 if grey else 3) + int(alpha)
    return PixelFormat(f"{base} u{bits}", channels, f"uint{bits}", bits)


def result_format(channels: int, dtype: str) -> PixelFormat:
    grey = channels <= 2
    return pixel_format(grey, channels in (2, 4), dtype == "uint16")


def mask_format(high_bit_depth: bool) -> PixelFormat:
    return PixelFormat(f"Y u{16 if high_bit_depth else 8}", 1, f"uint{16 if high_bit_depth else 8}",
                       16 if high_bit_depth else 8)  # fmt: skip


# --------------------------------------------------------------------------- naming and records
def layer_name(task: str, scale: int, seed: int | None) -> str:
    what = f"Diffusion upscale ×{scale}" if task == "upscale" else "Diffusion colorize"
    return f"{what} (seed {seed})" if seed is not None else what


@dataclass(frozen=True)
class Outcome:
    """A finished run, however it was made (directly, or through the dialog)."""

    job_id: str | None
    params: dict[str, Any]
    result: dict[str, Any]  # seed, model, prompt, negative_prompt, ...

    @classmethod
    def from_job(cls, job: client.JobInfo) -> Outcome:
        return cls(job.id, dict(job.params), dict(job.result or {}))

    @classmethod
    def from_answer(cls, answer: client.DialogAnswer) -> Outcome:
        return cls(answer.job.get("id"), dict(answer.params), dict(answer.job))

    @property
    def seed(self) -> int | None:
        return self.result.get("seed")


def run_record(settings: RunSettings, outcome: Outcome, region: Rect) -> bytes:
    """What is stored on the new layer as a parasite, so a result can be reproduced."""
    record = {
        "task": settings.task,
        "arguments": settings.values,
        "params": outcome.params,
        "seed": outcome.seed,
        "model": outcome.result.get("model"),
        "prompt": outcome.result.get("prompt"),
        "negative_prompt": outcome.result.get("negative_prompt"),
        "region": [region.x, region.y, region.width, region.height],
        "job": outcome.job_id,
    }
    return json.dumps(record, sort_keys=True).encode()


def settings_from_answer(task: str, answer: client.DialogAnswer, start: RunSettings) -> RunSettings:
    """The procedure's arguments as the dialog left them (so GIMP's last values follow the dialog)."""
    p, o = answer.params, answer.options
    values = dict(start.values)
    mapping = {
        "scale": round(float(p.get("scale", 1))),
        "prompt": p.get("prompt"),
        "steps": p.get("steps"),
        "guidance": p.get("guidance"),
        "seed": answer.job.get("seed", p.get("seed")),
        "fidelity-fg": p.get("fidelity_fg"),
        "fidelity-bg": p.get("fidelity_bg"),
        "auto-prompt": p.get("auto_prompt"),
        "noise-level": p.get("added_noise_level"),
        "process-size": p.get("process_size"),
        "output": o.get("output"),
        "color-mode": o.get("color_mode"),
        "model": o.get("model") or "",
        "foreground": {v: k for k, v in FOREGROUND_FACES.items()}.get(p.get("faces", "auto")),
        "style": p.get("style") or "",
        "style-strength": -1.0 if p.get("style_strength") is None else p.get("style_strength"),
        "fast": p.get("fast"),
        "prompt-words": p.get("auto_prompt_source"),
    }
    for name, value in mapping.items():
        if value is not None and any(a.name == name for a in arguments_for(task)):
            values[name] = value
    return RunSettings.from_values(task, values)


def dialog_job(task: str, folder: Path, backend: BackendSettings, settings: RunSettings, title: str,
               has_mask: bool, about: str = "", window: dict[str, Any] | None = None, key: str = "",
               undelivered: Path | None = None) -> client.DialogJob:  # fmt: skip
    """The job file for the PySide6 dialog; the pixels go to ``folder`` beside it."""
    return client.DialogJob(
        task=task,
        image=str(folder / "image.npy"),
        mask=str(folder / "mask.npy") if has_mask else None,
        result=str(folder / "result.npy"),
        answer=str(folder / "answer.json"),
        server=backend.url,
        token=backend.token,
        python=backend.python,
        models=backend.models,
        title=title,
        settings={**settings.values, "params": settings.backend_params()},
        host_pid=os.getpid(),
        about=about,
        window=window,
        stop=str(folder / "stop"),
        key=key,
        undelivered=str(undelivered) if undelivered else None,
    )


def describe_input(title: str, layer: str, region: Rect, selection: Rect | None) -> str:
    """What the dialog works on, in words: which image, which layer, which part."""
    where = f"“{title}”, layer “{layer}”"
    if selection is None:
        return f"{where}: the whole layer, {region.width} × {region.height} px"
    return (
        f"{where}: the selection ({selection.width} × {selection.height} px) with its context, "
        f"{region.width} × {region.height} px at {region.x}, {region.y}"
    )


def window_ref(handle: bytes | None, platform: str = sys.platform) -> dict[str, Any] | None:
    """GIMP's window handle (``Gimp.progress_get_window_handle``) as the dialog can use it.

    GIMP sends the native window id's bytes on X11 and Windows, and a NUL-terminated string
    exported by xdg-foreign on Wayland; macOS gives none.
    """
    if not handle:
        return None
    if handle.endswith(b"\0") and len(handle) > 1 and all(32 <= c < 127 for c in handle[:-1]):
        return {"system": "wayland", "id": handle[:-1].decode("ascii")}
    if len(handle) not in (4, 8):
        return None
    number = int.from_bytes(handle, sys.byteorder)
    return {"system": "windows" if platform == "win32" else "x11", "id": number} if number else None


def check_environment(backend: BackendSettings) -> None:
    """The backend environment's Python must exist before anything is started with it."""
    if backend.python and not Path(backend.python).is_file():
        where = f" (set in {backend.config_file})" if backend.config_file else ""
        raise EnvironmentBroken(
            f"The backend environment's Python {backend.python}{where} does not exist. "
            f"{client.repair_advice(None)}"
        )


KEPT_MESSAGE = (
    "The finished result could not be added, so it is kept: run Diffusion {task} again on the same image "
    "(open the file again if it was closed) and the dialog offers to add it."
)


class DialogStopped(PluginError):
    """The host stopped the dialog (its image was closed); nothing was changed."""


def run_dialog(
    backend: BackendSettings,
    job: client.DialogJob,
    job_file: Path,
    extra_args: tuple[str, ...] = (),
    watch: Callable[[], str | None] | None = None,
    interval: float = 0.5,
) -> client.DialogAnswer | None:
    """Run ``python -m gui --job FILE`` with the backend environment's Python and wait for it.

    Returns the answer on Apply, None on Cancel; PluginError when the dialog cannot run (the
    caller then falls back to GIMP's own dialog). ``watch`` is asked every ``interval`` seconds
    while the dialog is open; a reason from it (the image was closed) is written to the job's stop
    file, the dialog stops its backend job and closes, and DialogStopped carries the reason.
    """
    import subprocess

    if not backend.python:
        raise PluginError("The dialog needs the backend environment (run the installer).")
    check_environment(backend)
    job.write(job_file)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    log = job_file.with_name("dialog.log")  # a file, not a pipe: a chatty dialog never blocks
    stopped: str | None = None
    with open(log, "w+", encoding="utf-8", errors="replace") as output:
        try:
            process = subprocess.Popen(
                [backend.python, "-m", "gui", "--job", str(job_file), *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=env,
            )
        except OSError as exc:
            raise PluginError(f"Could not start the dialog with {backend.python}: {exc}") from exc
        deadline = None
        while True:
            try:
                code = process.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                pass
            if stopped is None and watch is not None:
                stopped = watch()
                if stopped is not None and job.stop:
                    Path(job.stop).write_text(stopped, encoding="utf-8")
                    deadline = time.monotonic() + 30  # time to cancel its backend job and close
            if deadline is not None and time.monotonic() > deadline:
                process.kill()
        output.seek(0)
        lines = output.read().strip().splitlines()
    if stopped is not None:
        raise DialogStopped(stopped)
    if code == client.DIALOG_EXIT_CANCELED:
        return None
    if code != client.DIALOG_EXIT_APPLIED:
        missing = [line for line in lines if "No module named" in line]
        if missing:
            raise EnvironmentBroken(
                f"The Python {backend.python} has no GIMP Diffusion Upscale backend ({missing[-1].strip()}). "
                f"{client.repair_advice(backend.python)}"
            )
        tail = "\n".join(lines[-6:])
        raise PluginError(f"The dialog stopped with exit code {code}:\n{tail}")
    return client.DialogAnswer.read(job.answer)


def progress_text(task: str, job: client.JobInfo) -> str:
    return client.progress_text(job, "Diffusion upscale" if task == "upscale" else "Diffusion colorize")


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BackendSettings:
    url: str = DEFAULT_URL
    python: str | None = None  # the backend environment's interpreter, to start a local server
    models: str | None = None
    token: str | None = None
    config_file: Path | None = None
    ca_file: str | None = None  # certificate to trust for an https backend with its own


def load_backend_settings(plugin_dir: Path, environ: dict[str, str] | None = None) -> BackendSettings:
    """The JSON the installer writes beside the plug-in; ``DIFFUSION_UPSCALE_URL`` overrides the URL."""
    environ = dict(os.environ if environ is None else environ)
    path = plugin_dir / CONFIG_NAME
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PluginError(
                f"The plug-in's settings file {path} cannot be read ({exc}). Run the installer again "
                "to rewrite it."
            ) from exc
        if not isinstance(data, dict):
            raise PluginError(
                f"The plug-in's settings file {path} is not a JSON object; run the installer again."
            )
    url = environ.get(URL_VARIABLE) or data.get("url") or DEFAULT_URL
    return BackendSettings(
        url=str(url),
        python=data.get("python") or None,
        models=data.get("models") or None,
        token=environ.get(TOKEN_VARIABLE) or data.get("token") or None,
        config_file=path if path.is_file() else None,
        ca_file=environ.get(CA_VARIABLE) or data.get("ca_file") or None,
    )


def connect(settings: BackendSettings, on_wait: Any = None) -> client.Client:
    """A client for a backend that answers, starting a local one when the installer said how."""
    if settings.ca_file:  # the client reads it from there, and so does the dialog the plug-in starts
        os.environ[CA_VARIABLE] = settings.ca_file
    try:
        if settings.python:
            return client.ensure_server(
                settings.url, settings.python, settings.models, token=settings.token, on_wait=on_wait
            )
        connection = client.Client(settings.url, token=settings.token)
        connection.health()
        return connection
    except client.ServerStartError as exc:
        check_environment(settings)  # a Python that is gone says so, not "[Errno 2]"
        raise PluginError(f"{exc}\n{client.repair_advice(settings.python)}") from exc
    except client.ServerUnreachable as exc:
        hint = (
            ""
            if settings.python
            else (
                " Start it with `python -m backend serve`, or run the installer so the plug-in can start it."
            )
        )
        raise PluginError(f"{exc}{hint}") from exc
    except client.ClientError as exc:
        raise PluginError(str(exc)) from exc
