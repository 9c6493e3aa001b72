"""The backend request built from the dialog's values: one pure function, so it can be tested alone.

Previews and the final run use the same request, so a preview shows what Apply will make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.models.registry import ModelDefaults
from backend.pipelines.params import MIN_TILE, RestoreParams

from .settings import DialogSettings, fallback_defaults


@dataclass(frozen=True)
class Request:
    """What is sent for a run: the pipeline's parameters and the host-side choices."""

    params: dict[str, Any]  # every RestoreParams field, by its name
    options: dict[str, Any]  # output ("layer" | "image"), color_mode, model (None: server default)

    @property
    def model(self) -> str | None:
        return self.options["model"]


def build_request(task: str, settings: DialogSettings, model: ModelDefaults | None = None) -> Request:
    """Parameters for ``task`` from the dialog's values; ParamsError (plain words) when one is off.

    Words boxes send exactly what they show (the ``model``'s defaults unless edited), so the answer
    records the words that ran. Colorize always keeps the size (scale 1).
    """
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
    params = params.with_(
        added_noise_level=settings.added_noise_level if d.added_noise_level is not None else None,
        quality_prompt=_words(settings.quality_prompt, d.quality_prompt),
        negative_prompt=_words(settings.negative_prompt, d.negative_prompt),
    ).validate()
    options = {"output": settings.output, "color_mode": settings.color_mode, "model": settings.model}
    return Request(params.to_dict(), options)


def _words(value: str | None, default: str) -> str:
    return default if value is None else value.strip()


def multiple_of_8(value: int, low: int) -> int:
    """Sizes the pipeline takes are multiples of 8; round down, but never below ``low``."""
    return max(low, int(value) // 8 * 8)


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The result's size, rounded the way the backend rounds it."""
    return round(width * scale), round(height * scale)
