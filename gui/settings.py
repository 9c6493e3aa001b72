"""The dialog's values as one dataclass, saved per user, and the presets.

The file is ``dialog.json`` in :func:`backend.paths.config_dir` (``GDU_CONFIG_DIR`` redirects it),
one section per task: an upscale prompt or negative words make no sense for colorizing. A bad or
hand-edited file never stops the dialog: unknown keys and values of the wrong type fall back to
the defaults.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from backend import paths
from backend.models.registry import FAMILIES, ModelDefaults
from backend.pipelines.params import FACES, FAST_GUIDANCE, FAST_STEPS, LORA_SCALINGS, WORD_SOURCES

SETTINGS_VERSION = 1
SEED_MAX = 2**31 - 1  # what a spin box (and GIMP's seed argument) holds
SCALES = (1, 2, 4)  # offered in the dialog; 3 (the plug-in allows it) is kept when it comes in
OUTPUTS = ("layer", "image")
COLOR_MODES = ("lch-color", "normal")


def random_seed() -> int:
    return random.SystemRandom().randint(0, SEED_MAX)


@dataclass
class DialogSettings:
    """Every control of the dialog; the request to the backend is built from this value."""

    scale: int = 2
    model: str | None = None  # None: the server's default for the task
    prompt: str = ""
    auto_prompt: bool = False
    quality_prompt: str | None = None  # None: the model's default words
    negative_prompt: str | None = None  # None: the model's default words
    steps: int = 20
    guidance: float = 7.5
    seed: int = field(default_factory=random_seed)
    new_seed_per_preview: bool = False  # off: the seed stays until changed, so Apply repeats the preview
    fidelity_fg: float = 1.0
    fidelity_bg: float = 1.0
    process_size: int = 768
    added_noise_level: int = 900
    tile: int | None = None  # None: chosen by the backend from free memory
    # SUPIR's sampler (only sent to models that have it; see DialogSettings.defaults)
    guidance_start: float = 1.0
    fidelity_start: float | None = None  # None: constant
    restoration: float = 0.0  # τ; 0: off
    restoration_fg: float = 1.0
    restoration_bg: float = 1.0
    churn: float = 5.0
    churn_noise: float = 1.01
    color_fix: bool = True
    color_mode: str = "lch-color"
    output: str = "layer"
    # What gets the foreground fidelity: "off" the selection only, "on" the chosen faces too, "auto"
    # the selection, or the faces when there is none and the two fidelities differ.
    faces: str = "auto"
    auto_prompt_source: str = "caption"  # "caption" (BLIP) or "classify" (ImageNet class words)
    style: str | None = None  # an installed style's name (PASD SD1.5 models only)
    style_strength: float | None = None  # None: the style's own default strength
    style_lora_scaling: str = "alpha"
    fast: bool = False  # LCM-LoRA fast mode (PASD SD1.5 upscale models, once installed)

    @classmethod
    def defaults(cls, task: str, model: ModelDefaults | None = None) -> DialogSettings:
        """A fresh dialog's values: the model's own settings (PASD's before the backend lists models)."""
        d = model or fallback_defaults(task)
        return cls(
            scale=1 if task == "colorize" else 2,
            steps=d.steps,
            guidance=d.guidance,
            fidelity_fg=d.fidelity,
            fidelity_bg=d.fidelity,
            process_size=d.process_size,
            added_noise_level=900 if d.added_noise_level is None else d.added_noise_level,
            **sampler_knobs(d),
        )

    def with_model(self, old: ModelDefaults, new: ModelDefaults, fast_ok: bool = True) -> DialogSettings:
        """These values for another model: a preset stays that preset, anything else becomes the new
        model's own settings (in fast mode, the fast mode's); its process size, noise level and (unless
        edited) words follow it. ``fast_ok``: the new model has the fast mode (else it is turned off)."""
        preset = matching_preset(self, old) or _PRESETS[("Fast" if self.fast else "Balanced")]
        if preset.fast and not fast_ok:
            preset = _PRESETS["Balanced"]
        return replace(
            preset.apply(self, new),
            process_size=new.process_size,
            added_noise_level=900 if new.added_noise_level is None else new.added_noise_level,
            **(sampler_knobs(new) if new.guidance_start is not None else {}),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, base: DialogSettings) -> DialogSettings:
        """Take the values that have the right type; keep ``base``'s for the rest."""
        if not isinstance(data, dict):
            return base
        changes = {}
        for f in fields(cls):
            if f.name in data and _fits(data[f.name], str(f.type)):
                changes[f.name] = _clean(f.name, data[f.name])
        return replace(base, **{k: v for k, v in changes.items() if v is not _INVALID})


def sampler_knobs(d: ModelDefaults) -> dict[str, Any]:
    """SUPIR's sampler knobs as a model sets them (the dialog's own defaults for other models)."""
    base = DialogSettings.__dataclass_fields__
    return {
        "guidance_start": d.guidance_start
        if d.guidance_start is not None
        else base["guidance_start"].default,
        "fidelity_start": d.fidelity_start,
        "restoration": max(0.0, d.restoration) if d.restoration is not None else 0.0,
        "churn": d.churn if d.churn is not None else base["churn"].default,
        "churn_noise": d.churn_noise if d.churn_noise is not None else base["churn_noise"].default,
    }


# SUPIR's README presets (its "empirical" settings), set over the model's own in Advanced.
SUPIR_PRESETS: dict[str, dict[str, float]] = {
    "Quality": {"guidance": 6.0, "guidance_start": 3.0, "churn_noise": 1.02, "fidelity": 0.93},
    "Fidelity": {"guidance": 4.0, "guidance_start": 1.0, "churn_noise": 1.01, "fidelity": 1.0},
}


def apply_supir_preset(settings: DialogSettings, name: str) -> DialogSettings:
    knobs = dict(SUPIR_PRESETS[name])
    fidelity = knobs.pop("fidelity")
    return replace(settings, **knobs, fidelity_fg=fidelity, fidelity_bg=fidelity)  # type: ignore[arg-type]


def fallback_defaults(task: str) -> ModelDefaults:
    """PASD-SD1.5's defaults for ``task``: what the dialog shows before it knows the model's."""
    return FAMILIES["pasd"].defaults[task]


_INVALID = object()


def _fits(value: Any, annotation: str) -> bool:
    kind, _, optional = str(annotation).partition(" | ")
    if value is None:
        return optional == "None"
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, str)


def _clean(name: str, value: Any) -> Any:
    """Reject the values no control can show (the controls clamp numbers themselves)."""
    if name == "scale" and value not in (1, 2, 3, 4):
        return _INVALID
    if name == "output" and value not in OUTPUTS:
        return _INVALID
    if name == "color_mode" and value not in COLOR_MODES:
        return _INVALID
    for choice, allowed in (
        ("faces", FACES),
        ("auto_prompt_source", WORD_SOURCES),
        ("style_lora_scaling", LORA_SCALINGS),
    ):
        if name == choice and value not in allowed:
            return _INVALID
    if name == "style" and value is not None:
        return value.strip() or None
    if name == "style_strength" and value is not None:
        return None if value < 0 else min(2.0, float(value))  # the plug-in's -1: the style's own
    if name in (
        "guidance",
        "fidelity_fg",
        "fidelity_bg",
        "guidance_start",
        "restoration",
        "restoration_fg",
        "restoration_bg",
        "churn",
        "churn_noise",
    ):
        return float(value)
    if name == "fidelity_start" and value is not None:
        return float(value)
    if name == "seed":
        return value % (SEED_MAX + 1)
    return value


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named starting point for the knobs that trade faithfulness against invention, relative to
    the model's own settings (Balanced is exactly them), so it means the same on every model.

    Two follow advice of their own: Stylize (PASD's for personalized styles: the light model,
    conditioning 0.7, no enlargement) and Fast (the LCM-LoRA's 4 steps at guidance 1.5).
    """

    name: str
    description: str
    steps: float = 1.0  # × the model's steps
    guidance: float = 1.0  # × the model's guidance
    fidelity_fg: float = 1.0  # × the model's fidelity
    fidelity_bg: float = 1.0
    fidelity: float | None = None  # both fidelities exactly this, whatever the model's
    scale: int | None = None  # the output scale it sets; None leaves the user's
    fast: bool = False  # the fast mode, with its own steps and guidance
    light_model: bool = False  # switch to an installed PASD light model (see light_model)

    def knobs(self, d: ModelDefaults) -> tuple[int, float, float, float]:
        """(steps, guidance, fidelity_fg, fidelity_bg) for a model, rounded as the controls show them."""

        def fidelity(factor: float) -> float:
            if self.fidelity is not None:
                return self.fidelity
            return min(2.0, round(d.fidelity * factor * 20) / 20)  # the slider's 0.05 steps

        if self.fast:
            return FAST_STEPS, FAST_GUIDANCE, fidelity(self.fidelity_fg), fidelity(self.fidelity_bg)
        steps = max(1, min(200, round(d.steps * self.steps)))
        return (
            steps,
            round(d.guidance * self.guidance, 1),
            fidelity(self.fidelity_fg),
            fidelity(self.fidelity_bg),
        )

    def apply(self, settings: DialogSettings, d: ModelDefaults) -> DialogSettings:
        steps, guidance, fg, bg = self.knobs(d)
        return replace(
            settings,
            steps=steps,
            guidance=guidance,
            fidelity_fg=fg,
            fidelity_bg=bg,
            fast=self.fast,
            scale=settings.scale if self.scale is None else self.scale,
        )

    def matches(self, settings: DialogSettings, d: ModelDefaults) -> bool:
        steps, guidance, fg, bg = self.knobs(d)
        return (
            settings.steps == steps
            and abs(settings.guidance - guidance) < 1e-6
            and abs(settings.fidelity_fg - fg) < 1e-6
            and abs(settings.fidelity_bg - bg) < 1e-6
            and settings.fast == self.fast
            and (self.scale is None or settings.scale == self.scale)
        )


PRESETS: tuple[Preset, ...] = (
    Preset(
        "Faithful",
        "Stays close to the original: strong fidelity, gentle prompt guidance. For documents, "
        "faces you know, archival scans.",
        steps=0.75,
        guidance=4.0 / 7.5,
        fidelity_fg=1.6,
        fidelity_bg=1.4,
    ),
    Preset(
        "Balanced",
        "The model's reference settings.",
    ),
    Preset(
        "Creative",
        "Lets the model invent texture and detail: weak fidelity, strong prompt guidance. Details "
        "may differ from the original.",
        steps=1.5,
        guidance=1.2,
        fidelity_fg=0.6,
        fidelity_bg=0.4,
    ),
    Preset(
        "Stylize",
        "For a Style: as PASD advises for personalized models, the light model (when one is "
        "installed), fidelity 0.7 and no enlargement (1×), so the style can repaint the picture.",
        fidelity=0.7,
        scale=1,
        light_model=True,
    ),
    Preset(
        "Fast",
        f"The fast mode (LCM-LoRA): {FAST_STEPS} steps at guidance {FAST_GUIDANCE:g}, several times "
        "quicker; raise the guidance (up to 9, as PASD's code does) for a stronger prompt. PASD SD1.5 "
        "upscale models, once the LCM-LoRA is installed.",
        fast=True,
    ),
)


_PRESETS = {p.name: p for p in PRESETS}


def preset_named(name: str) -> Preset | None:
    return _PRESETS.get(name)


def matching_preset(settings: DialogSettings, d: ModelDefaults) -> Preset | None:
    return next((p for p in PRESETS if p.matches(settings, d)), None)


def light_model(installed: list[dict[str, Any]], task: str, current: str | None) -> str | None:
    """The installed PASD SD1.5 light model for ``task`` that Stylize switches to: the current one when
    it is light already, else the first listed; None when there is none (the model stays)."""
    light = [
        m["id"]
        for m in installed
        if task in m.get("tasks", []) and m.get("family", "pasd") == "pasd" and m.get("variant") == "light"
    ]
    if current in light:
        return current
    return light[0] if light else None


# --------------------------------------------------------------------------- the host's values
_HOST_ALIASES = {
    "noise_level": "added_noise_level",
    "colour_mode": "color_mode",
    "prompt_words": "auto_prompt_source",
    "foreground": "faces",
}
_FOREGROUND = {"selection": "off", "faces": "on", "auto": "auto"}  # the plug-in's argument → faces


_MODEL_KNOBS = (
    "steps",
    "guidance",
    "fidelity_fg",
    "fidelity_bg",
    "added_noise_level",
    "process_size",
    "guidance_start",
    "restoration",
    "churn",
    "churn_noise",
)


def _unset_knob(name: str, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value < 0 or (value == 0 and name in ("steps", "process_size"))


def merge_host(settings: DialogSettings, host: dict[str, Any] | None) -> DialogSettings:
    """The host's last values (a job file's ``settings``) over the stored ones, where given.

    Accepts the backend's parameter names, also nested under ``"params"`` (they win), and the
    plug-in's hyphenated argument names. Empty words, negative seeds or tiles and the model knobs'
    0 / -1 mean "not set": the plug-in sends them for "the default".
    """
    if not host:
        return settings
    flat: dict[str, Any] = {}
    for source in (host, host.get("params") if isinstance(host.get("params"), dict) else {}):
        for key, value in source.items():
            name = key.replace("-", "_")
            if name == "foreground" and isinstance(value, str):
                value = _FOREGROUND.get(value, value)
            flat[_HOST_ALIASES.get(name, name)] = value
    given: dict[str, Any] = {}
    for name, value in flat.items():
        if name == "seed":
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                given["seed"] = value  # the value only: the lock stays the user's choice
        elif name == "tile":
            given["tile"] = value if isinstance(value, int) and value > 0 else None
        elif name == "scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
            given["scale"] = round(value)
        elif name in ("model", "quality_prompt", "negative_prompt", "style") and value in ("", None):
            given[name] = None
        elif name in _MODEL_KNOBS and _unset_knob(name, value):
            continue  # the plug-in's 0 / -1: "the model's own", which the dialog shows already
        else:
            given[name] = value
    if given.get("fast") is True:  # the fast mode's own steps and guidance, unless the host set them
        given.setdefault("steps", FAST_STEPS)
        given.setdefault("guidance", FAST_GUIDANCE)
    return DialogSettings.from_json(given, settings)


# --------------------------------------------------------------------------- the file
def settings_path() -> Path:
    return paths.config_dir() / "dialog.json"


@dataclass
class SettingsStore:
    """``dialog.json``: one section per task, plus the window's own state (geometry, folds)."""

    path: Path = field(default_factory=settings_path)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | None = None) -> SettingsStore:
        store = cls(path or settings_path())
        try:
            data = json.loads(store.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and data.get("version") == SETTINGS_VERSION:
            store.data = data
        return store

    def load(self, task: str) -> DialogSettings:
        return DialogSettings.from_json(self.data.get(task), DialogSettings.defaults(task))

    def put(self, task: str, settings: DialogSettings) -> None:
        self.data[task] = settings.to_json()

    @property
    def window(self) -> dict[str, Any]:
        window = self.data.get("window")
        return window if isinstance(window, dict) else {}

    def put_window(self, **values: Any) -> None:
        self.data["window"] = {**self.window, **values}

    def save(self) -> None:
        """Atomically, so a crash while saving never leaves a broken file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        tmp.write_text(json.dumps({**self.data, "version": SETTINGS_VERSION}, indent=2), encoding="utf-8")
        os.replace(tmp, self.path)
