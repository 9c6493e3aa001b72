"""The backend request built from the dialog's values: one pure function, so it can be tested alone.

Previews and the final run use the same request, so a preview shows what Apply will make.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from backend.models.registry import ModelDefaults
from backend.pipelines.params import MIN_TILE, RestoreParams

from .settings import DialogSettings, fallback_defaults

# Parameters newer than the first backends, left out of a request while at their defaults so that a
# backend from before them still takes a run that does not use them (it refuses unknown names).
_NEWER = (
    "faces",
    "face_boxes",
    "style",
    "style_strength",
    "style_lora_scaling",
    "fast",
    "auto_prompt_source",
)
_DEFAULTS = {f.name: f.default for f in fields(RestoreParams)}


@dataclass(frozen=True)
class Context:
    """What a request needs besides the controls' values: the input and the chosen model's abilities."""

    has_mask: bool = False
    # The faces switched on, [x, y, w, h] in the whole input's pixels; None: not looked for (the
    # backend then looks itself, when the Foreground choice asks for faces).
    faces: tuple[tuple[int, int, int, int], ...] | None = None
    sd15: bool = True  # a PASD SD1.5 model: styles apply
    fast: bool = True  # the fast mode can run (its LoRA is installed, the model takes it)


@dataclass(frozen=True)
class Request:
    """What is sent for a run: the pipeline's parameters and the host-side choices."""

    params: dict[str, Any]  # the RestoreParams fields by name (the newer ones only when set)
    options: dict[str, Any]  # output ("layer" | "image"), color_mode, model (None: server default)

    @property
    def model(self) -> str | None:
        return self.options["model"]

    @property
    def recorded(self) -> dict[str, Any]:
        """Every parameter as the run used it, the newer ones left unsent at the backend's defaults:
        what the dialog's answer records, so the host's last values follow the dialog (fast off too)."""
        return {**self.params, **{k: _DEFAULTS[k] for k in _NEWER if k not in self.params}}


def build_request(
    task: str, settings: DialogSettings, model: ModelDefaults | None = None, context: Context | None = None
) -> Request:
    """Parameters for ``task`` from the dialog's values; ParamsError (plain words) when one is off.

    Words boxes send exactly what they show (the ``model``'s defaults unless edited), so the answer
    records the words that ran. Colorize always keeps the size (scale 1). A style and the fast mode
    are sent only to models that take them (``context``).
    """
    context = context or Context()
    params = RestoreParams(
        task=task,  # type: ignore[arg-type]
        scale=float(settings.scale) if task == "upscale" else 1.0,
        prompt=settings.prompt.strip(),
        auto_prompt=settings.auto_prompt,
        steps=settings.steps,
        guidance=float(settings.guidance),
        seed=settings.seed,
        fidelity_fg=float(settings.fidelity_fg),
        fidelity_bg=float(settings.fidelity_bg),
        process_size=multiple_of_8(settings.process_size, 256),
        added_noise_level=settings.added_noise_level,
        color_fix=settings.color_fix,
        tile=None if settings.tile is None else multiple_of_8(settings.tile, MIN_TILE),
    )
    d = model or fallback_defaults(task)
    # Restoration guidance works on every model (off: the model's default, which is off).
    params = params.with_(
        restoration=float(settings.restoration) if settings.restoration > 0 else None,
        restoration_fg=float(settings.restoration_fg),
        restoration_bg=float(settings.restoration_bg),
    )
    if d.guidance_start is not None:  # a model with SUPIR's sampler
        params = params.with_(
            guidance_start=float(settings.guidance_start),
            fidelity_start=settings.fidelity_start,
            churn=float(settings.churn),
            churn_noise=float(settings.churn_noise),
        )
    style = settings.style if context.sd15 else None
    params = params.with_(
        added_noise_level=settings.added_noise_level if d.added_noise_level is not None else None,
        quality_prompt=_words(settings.quality_prompt, d.quality_prompt),
        negative_prompt=_words(settings.negative_prompt, d.negative_prompt),
        auto_prompt_source=settings.auto_prompt_source,
        faces=settings.faces,
        face_boxes=face_boxes(settings, context),
        style=style,
        style_strength=None if style is None or settings.style_strength is None else settings.style_strength,
        style_lora_scaling=settings.style_lora_scaling if style is not None else "alpha",
        fast=settings.fast and context.fast,
    ).validate()
    data = params.to_dict()
    if params.face_boxes is not None:
        data["face_boxes"] = [list(box) for box in params.face_boxes]  # as JSON has them
    for name in _NEWER:
        if data[name] == _DEFAULTS[name]:
            del data[name]
    options = {"output": settings.output, "color_mode": settings.color_mode, "model": settings.model}
    return Request(data, options)


def face_boxes(settings: DialogSettings, context: Context) -> tuple[tuple[int, int, int, int], ...] | None:
    """The chosen faces when the Foreground choice uses them, so every run (a framed preview too) gets
    the same faces; None leaves it to the backend ("off": none, or faces it has not been shown).

    "auto" uses faces only where the backend's auto would: no selection, and fidelities that differ.
    """
    if context.faces is None or settings.faces == "off":
        return None
    if settings.faces == "auto" and (context.has_mask or settings.fidelity_fg == settings.fidelity_bg):
        return None
    return context.faces


def _words(value: str | None, default: str) -> str:
    return default if value is None else value.strip()


def multiple_of_8(value: int, low: int) -> int:
    """Sizes the pipeline takes are multiples of 8; round down, but never below ``low``."""
    return max(low, int(value) // 8 * 8)


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The result's size, rounded the way the backend rounds it."""
    return round(width * scale), round(height * scale)
