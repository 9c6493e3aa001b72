"""What a restoration run is asked to do: one frozen value, checked once, shared by CLI and service."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..models.registry import ModelDefaults

Task = Literal["upscale", "colorize"]
TASKS: tuple[Task, ...] = ("upscale", "colorize")

# RestoreParams field → the ModelDefaults field it takes when left unset
_FROM_DEFAULTS = {
    "steps": "steps",
    "guidance": "guidance",
    "fidelity_fg": "fidelity",
    "fidelity_bg": "fidelity",
    "process_size": "process_size",
    "added_noise_level": "added_noise_level",
    "quality_prompt": "quality_prompt",
    "negative_prompt": "negative_prompt",
    "guidance_start": "guidance_start",
    "fidelity_start": "fidelity_start",
    "restoration": "restoration",
    "churn": "churn",
    "churn_noise": "churn_noise",
}
FACES = ("auto", "on", "off")
WORD_SOURCES = ("caption", "classify")
LORA_SCALINGS = ("alpha", "reference")
# The fast mode's own defaults (LCM-LoRA): few steps, and guidance near 1 (LCM distils guidance in;
# the reference keeps 9.0, which a user may still set).
FAST_STEPS = 4
FAST_GUIDANCE = 1.5
MAX_FACES = 64
MIN_TILE = 64  # pixels; below this the UNet's coarsest feature map is a single value
MAX_SEED = 2**63 - 1


class ParamsError(ValueError):
    """A parameter is out of range; the message names it and the allowed range."""


@dataclass(frozen=True)
class RestoreParams:
    """Every knob of a run. ``None`` means "the model's default" (its ``ModelDefaults``, see
    :meth:`resolved`) or "choose automatically" (tiles, seed)."""

    task: Task = "upscale"
    scale: float = 2.0
    prompt: str = ""
    auto_prompt: bool = False
    auto_prompt_source: str = "caption"  # "caption" (BLIP) or "classify" (ImageNet class, as ModelScope)
    quality_prompt: str | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    fidelity_fg: float | None = None  # ControlNet scale inside the mask
    fidelity_bg: float | None = None  # ... and outside it (everywhere without a mask)
    process_size: int | None = None
    added_noise_level: int | None = None  # PASD-SD1.5's noised start; families starting from noise ignore it
    color_fix: bool = True
    color_fix_method: str = "wavelet"  # "wavelet" (local) or "adain" (per channel, SUPIR's other fix)
    # SUPIR's sampler (families without it ignore these): guidance at the first step (linear in the
    # noise level to ``guidance``); the control scale at the first step (linear to the fidelities;
    # unset keeps it constant); restoration guidance strength τ (≤ 0 off) and its weight inside and
    # outside the mask (0 turns it off there); the churn noise per step and its scale.
    guidance_start: float | None = None
    fidelity_start: float | None = None
    restoration: float | None = None
    restoration_fg: float = 1.0
    restoration_bg: float = 1.0
    churn: float | None = None
    churn_noise: float | None = None
    tile: int | None = None  # diffusion tile, output pixels (multiple of 8); None = from free memory
    tile_overlap: float = 0.25  # fraction of the tile shared with its neighbour
    vae_tile: int | None = None  # VAE tile, output pixels; None = from free memory
    prescaler: str | None = None  # None/"bicubic" or a path to GAN upscaler weights (spandrel)
    # A preview's crop: [x, y, whole width, whole height] of the image it is cut from (input pixels).
    # The crop is then processed at the whole image's scale and with its noise there (see NoiseAnchor).
    frame: tuple[int, int, int, int] | None = None
    # The foreground that gets fidelity_fg: "auto" uses the mask, or faces found automatically when
    # there is no mask and the two fidelities differ; "on" adds the faces to the mask; "off" never
    # looks for faces. ``face_boxes`` ([x, y, w, h], in the whole image's pixels like ``frame``) are
    # faces the user chose (the dialog's overlay): they are used instead of detecting.
    faces: str = "auto"
    face_boxes: tuple[tuple[int, int, int, int], ...] | None = None
    # A personalized SD1.5 base ("style"): an installed style's name or a file/folder path, its strength
    # (blending alpha for a checkpoint, multiplier for a LoRA; None: its own default) and how a LoRA's
    # alpha is used ("alpha": scaled by alpha/rank; "reference": ignored, as PASD's code does).
    style: str | None = None
    style_strength: float | None = None
    style_lora_scaling: str = "alpha"
    fast: bool = False  # LCM-LoRA fused into the UNet: FAST_STEPS steps at FAST_GUIDANCE unless set

    def __post_init__(self) -> None:
        if isinstance(self.frame, list):  # from JSON
            object.__setattr__(self, "frame", tuple(self.frame))
        if isinstance(self.face_boxes, list):
            boxes = tuple(tuple(b) if isinstance(b, list) else b for b in self.face_boxes)
            object.__setattr__(self, "face_boxes", boxes)

    def resolved(self, defaults: ModelDefaults) -> RestoreParams:
        """Every unset model parameter filled in from the model's defaults (the values a run uses);
        the fast mode has its own steps and guidance."""
        unset = {
            name: getattr(defaults, source)
            for name, source in _FROM_DEFAULTS.items()
            if getattr(self, name) is None
        }
        if self.fast:
            unset.update(
                {
                    k: v
                    for k, v in (("steps", FAST_STEPS), ("guidance", FAST_GUIDANCE))
                    if getattr(self, k) is None
                }
            )
        return replace(self, **unset)

    def validate(self) -> RestoreParams:
        """Raise ParamsError for the first bad value; returns self so calls can chain."""
        if self.task not in TASKS:
            raise ParamsError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        _number("scale", self.scale, 1.0, 4.0)
        if self.task == "colorize" and self.scale != 1.0:
            raise ParamsError("colorize keeps the image size: scale must be 1")
        if self.steps is not None:
            _integer("steps", self.steps, 1, 200)
        if self.guidance is not None:
            _number("guidance", self.guidance, 0.0, 30.0)
        for name in ("fidelity_fg", "fidelity_bg"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 0.0, 2.0)
        for name, low, high in (
            ("guidance_start", 0.0, 30.0),
            ("fidelity_start", 0.0, 2.0),
            ("restoration", -1.0, 10.0),
            ("restoration_fg", 0.0, 1.0),
            ("restoration_bg", 0.0, 1.0),
            ("churn", 0.0, 40.0),
            ("churn_noise", 0.5, 1.5),
        ):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), low, high)
        if self.process_size is not None:
            _integer("process_size", self.process_size, 256, 2048)
            if self.process_size % 8:
                raise ParamsError(f"process_size must be a multiple of 8, not {self.process_size}")
        if self.added_noise_level is not None:
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
        for name, allowed in (
            ("faces", FACES),
            ("auto_prompt_source", WORD_SOURCES),
            ("style_lora_scaling", LORA_SCALINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ParamsError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.face_boxes is not None:
            if not isinstance(self.face_boxes, tuple) or len(self.face_boxes) > MAX_FACES:
                raise ParamsError(
                    f"face_boxes must be a list of at most {MAX_FACES} [x, y, width, height] boxes"
                )
            for box in self.face_boxes:
                if not isinstance(box, tuple) or len(box) != 4:
                    raise ParamsError("each face box must be [x, y, width, height]")
                for name, value in zip(("face x", "face y"), box[:2], strict=True):
                    _integer(name, value, -(1 << 20), 1 << 20)
                for name, value in zip(("face width", "face height"), box[2:], strict=True):
                    _integer(name, value, 1, 1 << 20)
        if self.style is not None and (not isinstance(self.style, str) or not self.style.strip()):
            raise ParamsError("style must be the name of an installed style or a path to one")
        if self.style_strength is not None:
            _number("style_strength", self.style_strength, 0.0, 2.0)
        if not isinstance(self.fast, bool):
            raise ParamsError(f"fast must be true or false, not {self.fast!r}")
        if self.color_fix_method not in ("wavelet", "adain"):
            raise ParamsError(f"color_fix_method must be wavelet or adain, not {self.color_fix_method!r}")
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
