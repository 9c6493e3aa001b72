"""What a restoration run is asked to do: one frozen value, checked once, shared by CLI and service."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Task = Literal["upscale", "colorize"]
TASKS: tuple[Task, ...] = ("upscale", "colorize")

# The reference inference's defaults (PASD test_pasd.py), kept editable. For colorization the
# reference adds no quality words and uses only "b&w, color bleeding" as the negative prompt (and turns
# "black and white" in captions into "color": prompt.colorize_words): what the colour model was run with.
UPSCALE_QUALITY_PROMPT = "clean, high-resolution, 8k"
UPSCALE_NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"
COLORIZE_QUALITY_PROMPT = ""
COLORIZE_NEGATIVE_PROMPT = "b&w, color bleeding"

MIN_TILE = 64  # pixels; below this the UNet's coarsest feature map is a single value
MAX_SEED = 2**63 - 1


class ParamsError(ValueError):
    """A parameter is out of range; the message names it and the allowed range."""


@dataclass(frozen=True)
class RestoreParams:
    """Every knob of a run. ``None`` means "the task's default" or "choose automatically"."""

    task: Task = "upscale"
    scale: float = 2.0
    prompt: str = ""
    auto_prompt: bool = False
    quality_prompt: str | None = None
    negative_prompt: str | None = None
    steps: int = 20
    guidance: float = 7.5
    seed: int | None = None
    fidelity_fg: float = 1.0
    fidelity_bg: float = 1.0
    process_size: int = 768
    added_noise_level: int = 900
    color_fix: bool = True
    tile: int | None = None  # diffusion tile, output pixels (multiple of 8); None = from free memory
    tile_overlap: float = 0.25  # fraction of the tile shared with its neighbour
    vae_tile: int | None = None  # VAE tile, output pixels; None = from free memory
    prescaler: str | None = None  # None/"bicubic" or a path to GAN upscaler weights (spandrel)
    # A preview's crop: [x, y, whole width, whole height] of the image it is cut from (input pixels).
    # The crop is then processed at the whole image's scale and with its noise there (see NoiseAnchor).
    frame: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.frame, list):  # from JSON
            object.__setattr__(self, "frame", tuple(self.frame))

    def effective_quality_prompt(self) -> str:
        if self.quality_prompt is not None:
            return self.quality_prompt
        return UPSCALE_QUALITY_PROMPT if self.task == "upscale" else COLORIZE_QUALITY_PROMPT

    def effective_negative_prompt(self) -> str:
        if self.negative_prompt is not None:
            return self.negative_prompt
        return UPSCALE_NEGATIVE_PROMPT if self.task == "upscale" else COLORIZE_NEGATIVE_PROMPT

    def validate(self) -> RestoreParams:
        """Raise ParamsError for the first bad value; returns self so calls can chain."""
        if self.task not in TASKS:
            raise ParamsError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        _number("scale", self.scale, 1.0, 4.0)
        if self.task == "colorize" and self.scale != 1.0:
            raise ParamsError("colorize keeps the image size: scale must be 1")
        _integer("steps", self.steps, 1, 200)
        _number("guidance", self.guidance, 0.0, 30.0)
        _number("fidelity_fg", self.fidelity_fg, 0.0, 2.0)
        _number("fidelity_bg", self.fidelity_bg, 0.0, 2.0)
        _integer("process_size", self.process_size, 256, 2048)
        if self.process_size % 8:
            raise ParamsError(f"process_size must be a multiple of 8, not {self.process_size}")
        _integer("added_noise_level", self.added_noise_level, 0, 999)
        _number("tile_overlap", self.tile_overlap, 0.0, 0.5)
        for name in ("tile", "vae_tile"):
            value = getattr(self, name)
            if value is not None:
                _integer(name, value, MIN_TILE, 8192)
                if value % 8:
                    raise ParamsError(f"{name} must be a multiple of 8 pixels, not {value}")
        if self.seed is not None:
            _integer("seed", self.seed, 0, MAX_SEED)
        if self.frame is not None:
            if not isinstance(self.frame, tuple) or len(self.frame) != 4:
                raise ParamsError("frame must be [x, y, whole width, whole height]")
            for name, value in zip(("frame x", "frame y"), self.frame[:2], strict=True):
                _integer(name, value, 0, 1 << 20)
            for name, value in zip(("frame width", "frame height"), self.frame[2:], strict=True):
                _integer(name, value, 1, 1 << 20)
        for name in ("prompt", "quality_prompt", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ParamsError(f"{name} must be text")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RestoreParams:
        """Build from JSON-like data; unknown keys are an error, so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamsError(f"unknown parameter(s): {', '.join(unknown)}")
        return cls(**data).validate()

    def with_(self, **changes: Any) -> RestoreParams:
        return replace(self, **changes)


def _number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamsError(f"{name} must be a finite number, not {value!r}")
    if not low <= value <= high:
        raise ParamsError(f"{name} must be between {low:g} and {high:g}, not {value:g}")


def _integer(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{name} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ParamsError(f"{name} must be between {low} and {high}, not {value}")
