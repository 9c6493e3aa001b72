"""Personalized SD1.5 base models ("styles") blended into PASD's UNet, VAE and text encoder.

PASD's ``test_pasd.py`` lets a personalized Stable Diffusion 1.5 model stand in for the base weights
under its pixel-aware modules (``pasd/myutils/misc.py::load_dreambooth_lora``). Three kinds of style:

- ``checkpoint``: a single-file SD1.5 model (``.safetensors``, or a ``.ckpt`` whose ``state_dict`` holds
  the weights) in the LDM key layout. Its UNet is converted to diffusers keys and blended into the PASD
  UNet, ``w = α·w_style + (1-α)·w_current`` for every converted key the UNet has (the pixel-aware
  weights are never touched); the VAE and the text encoder are replaced by the checkpoint's.
- ``lora``: a kohya/A1111 LoRA (``lora_unet_*`` / ``lora_te_*``), merged as ``W += m·s·up@down``. The
  reference ignores ``.alpha`` (``s = 1``); kohya's trainers and every UI scale by ``s = alpha/rank``,
  which is our default (``lora_scaling="alpha"``; ``"reference"`` reproduces the reference).
- ``unet``: a diffusers UNet folder (``unet_disney/``). The reference builds a new plain UNet from it,
  leaving the pixel-aware weights random; here its weights are blended into the PASD UNet like a
  checkpoint's, so the pixel-aware weights stay PASD's.

The key conversions are diffusers' own single-file converters; a LoRA layer's module is found by its
exact kohya name (the module path with ``.`` → ``_``, as kohya's trainers name them), in the diffusers
or the LDM naming of the UNet. Everything is checked before the first weight is written, so a refused
style leaves the modules bit-identical. Weights are read without pickle code (safetensors, or
``torch.load(weights_only=True)``), and a large checkpoint is read tensor by tensor: at most one extra
copy of the UNet is held.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors import safe_open
from torch import nn
from transformers import CLIPTextModel

from ..loading import CONFIG_FILE
from ..registry import REGISTRY
from ..sgm_keys import unet_map, with_text_model
from ..store import _models_dir, missing_files

log = logging.getLogger(__name__)

StyleKind = Literal["checkpoint", "unet", "lora"]
LoraScaling = Literal["alpha", "reference"]
LORA_SCALINGS: tuple[LoraScaling, ...] = ("alpha", "reference")

STYLES_DIR = "styles"  # <models_dir>/styles/ holds the user's style files and folders
STYLE_TASK = "style"  # registry entries with this task are styles
STYLE_SUFFIXES = (".safetensors", ".ckpt")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# The reference's defaults (test_pasd.py): blending_alpha for checkpoints, multiplier for LoRAs.
DEFAULT_BLEND = 1.0
DEFAULT_MULTIPLIER = 0.6

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# Real SD1.5 files carry the text encoder's position ids, a buffer transformers makes itself (and
# some merges hold broken float copies of); it is never read.
_POSITION_IDS = "embeddings.position_ids"
UNET_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
_LORA_SUFFIXES = ("lora_up.weight", "lora_down.weight", "alpha")
_LISTED = 5
_WHAT_FITS = (
    "PASD's SD1.5 models take Stable Diffusion 1.5 styles only: a single-file SD1.5 checkpoint "
    "(.safetensors or .ckpt), a kohya/A1111 SD1.5 LoRA (.safetensors), or a diffusers SD1.5 UNet folder."
)


class StyleError(ValueError):
    """A style that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Style:
    """A personalized model the user can blend in: a file or folder, and what kind it is."""

    name: str  # display/id name (file stem, folder name or registry id)
    path: Path
    kind: StyleKind
    licence: str = ""  # from a registry entry when known, else ""

    @property
    def default_strength(self) -> float:
        """The reference's default: blending_alpha 1.0 for checkpoints and UNets, multiplier 0.6 for LoRAs."""
        return DEFAULT_MULTIPLIER if self.kind == "lora" else DEFAULT_BLEND


@dataclass(frozen=True)
class StyleReport:
    """What :func:`apply_style` changed, for notes and logs."""

    style: str
    kind: StyleKind
    strength: float
    unet_keys: int  # UNet tensors written (blended, or patched by a LoRA)
    vae_replaced: bool
    text_encoder_replaced: bool
    lora_layers: int  # LoRA layers merged (UNet and text encoder)
    skipped: tuple[str, ...]  # what the style holds that was not used, in words


# ---------------------------------------------------------------------------------------- reading
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or of a ``.ckpt``/``.pt`` read with ``weights_only`` (the
    ``state_dict`` entry when there is one): a pickle that would run code is refused, not loaded."""
    with _open_weights(Path(path)) as state:
        return {k: state[k] for k in state}


@contextlib.contextmanager
def _open_weights(path: Path) -> Iterator[Mapping[str, torch.Tensor]]:
    """The file's tensors by key; a safetensors file is read tensor by tensor as they are asked for."""
    if not path.is_file():
        raise StyleError(f"{path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:
            raise StyleError(
                f"Could not read {path}: {exc}. The file is damaged or not a safetensors file "
                "(an incomplete download?); download it again."
            ) from exc
        with handle:
            yield _LazySafetensors(handle, path)
        return
    if path.suffix not in TORCH_SUFFIXES:
        raise StyleError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors or .ckpt")
    yield _torch_state(path)


class _LazySafetensors(Mapping[str, torch.Tensor]):
    """A safetensors file as a read-only mapping that reads each tensor when it is asked for."""

    def __init__(self, handle: Any, path: Path) -> None:
        self._handle = handle
        self._path = path
        self._keys = list(handle.keys())
        self._key_set = frozenset(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:
            raise StyleError(f"Could not read {key} from {self._path}: {exc} (a damaged file?)") from exc

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise StyleError(
            f"{path} holds pickled Python objects besides tensors, which weights-only loading refuses "
            f"(unpickling them could run code). Use a .safetensors version of this model instead. ({exc})"
        ) from exc
    except Exception as exc:
        raise StyleError(
            f"Could not read {path}: {exc}. The file is damaged or not a PyTorch checkpoint."
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise StyleError(f"{path} does not hold a state dict (found {type(state).__name__})")
    tensors = {str(k): v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise StyleError(f"{path} holds no tensors")
    return tensors


def _file_keys(path: Path) -> list[str]:
    """The tensor names of a weights file (a safetensors header only)."""
    with _open_weights(path) as state:
        return list(state)


@functools.lru_cache(maxsize=256)
def _kind_of_file(path: str, _mtime_ns: int, _size: int) -> StyleKind:
    keys = _file_keys(Path(path))
    if not keys:
        raise StyleError(f"{path} holds no tensors")
    return "lora" if all("lora" in k for k in keys) else "checkpoint"


def _unet_folder(path: Path) -> Path | None:
    """The diffusers UNet folder at ``path`` (or its ``unet/``), if it is one."""
    for folder in (path, path / "unet"):
        if (folder / CONFIG_FILE).is_file() and any((folder / n).is_file() for n in UNET_WEIGHT_FILES):
            try:
                config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(config, dict) and (
                config.get("_class_name") == "UNet2DConditionModel"
                or {"block_out_channels", "cross_attention_dim", "down_block_types"} <= config.keys()
            ):
                return folder
    return None


def detect_kind(path: Path) -> StyleKind:
    """What a style file or folder is, from its content (a file whose every key names ``lora`` is a
    LoRA; safetensors headers are read, not the tensors)."""
    path = Path(path)
    if path.is_dir():
        if _unet_folder(path) is None:
            raise StyleError(
                f"{path} is not a diffusers UNet folder (config.json of a UNet2DConditionModel and "
                f"{UNET_WEIGHT_FILES[0]}). {_WHAT_FITS}"
            )
        return "unet"
    if path.suffix not in (*STYLE_SUFFIXES, *TORCH_SUFFIXES):
        raise StyleError(f"{path}: not a style file. {_WHAT_FITS}")
    if not path.is_file():
        raise StyleError(f"{path} does not exist")
    stat = path.stat()
    return _kind_of_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


# ---------------------------------------------------------------------------------------- finding
def _style_at(path: Path, name: str | None = None, licence: str = "") -> Style:
    return Style(name or (path.name if path.is_dir() else path.stem), path, detect_kind(path), licence)


def _registry_styles(root: Path) -> Iterator[tuple[str, Path, str, bool]]:
    """(id, file, licence, installed) of every registry entry that is a style."""
    for spec in REGISTRY.values():
        if STYLE_TASK in spec.tasks and spec.files:
            target = root / spec.id
            installed = target.is_dir() and not missing_files(spec, target)
            yield spec.id, target / spec.files[0], spec.licence, installed


def find_styles(models_dir: str | Path | None = None) -> list[Style]:
    """Every style file and UNet folder in ``<models_dir>/styles/``, then the installed registry styles.

    What cannot be read is left out with a warning in the log (pass its path to
    :func:`resolve_style` for the reason)."""
    root = _models_dir(models_dir)
    found: list[Style] = []
    folder = root / STYLES_DIR
    entries = sorted(folder.iterdir(), key=lambda p: p.name.lower()) if folder.is_dir() else []
    for entry in entries:
        if entry.name.startswith(".") or not (entry.is_dir() or entry.suffix in STYLE_SUFFIXES):
            continue
        try:
            found.append(_style_at(entry))
        except StyleError as exc:  # a folder may hold anything (previews, notes): only files are news
            (log.debug if entry.is_dir() else log.warning)("Style %s left out: %s", entry, exc)
    for model_id, path, licence, installed in _registry_styles(root):
        if installed:
            try:
                found.append(_style_at(path, model_id, licence))
            except StyleError as exc:
                log.warning("Style %s left out: %s", model_id, exc)
    return found


def resolve_style(name_or_path: str | Path, models_dir: str | Path | None = None) -> Style:
    """A style by name (see :func:`find_styles`) or by the path of its file or folder."""
    root = _models_dir(models_dir)
    text = str(name_or_path)
    path = Path(text).expanduser()
    path_like = isinstance(name_or_path, Path) or "/" in text or "\\" in text or path.suffix in STYLE_SUFFIXES
    if path_like:
        for candidate in (path, root / STYLES_DIR / text):
            if candidate.exists():
                return _style_at(candidate)
        raise StyleError(f"Style file not found: {path}")
    styles = find_styles(root)
    for match in (lambda s: s.name == text, lambda s: s.name.casefold() == text.casefold()):
        hits = [s for s in styles if match(s)]
        if hits:
            return hits[0]
    if path.exists():
        return _style_at(path)
    for model_id, _file, _licence, installed in _registry_styles(root):
        if model_id == text and not installed:
            raise StyleError(
                f"The style {text!r} is not installed. Install it with `python -m backend download {text}`."
            )
    known = ", ".join(s.name for s in styles) or "none"
    raise StyleError(
        f"No style named {text!r} (installed styles: {known}). Put a Stable Diffusion 1.5 checkpoint "
        f"(.safetensors/.ckpt), an SD1.5 LoRA (.safetensors) or a diffusers UNet folder into "
        f"{root / STYLES_DIR}, or pass its path."
    )


# ---------------------------------------------------------------------------------------- applying
@dataclass
class _Plan:
    """Everything a style will write, checked: nothing is written until the whole plan is made."""

    unet: list[tuple[str, torch.Tensor]]  # UNet key → the style's tensor, blended with strength
    vae: dict[str, torch.Tensor] | None
    text_encoder: dict[str, torch.Tensor] | None
    lora: list[tuple[nn.Module, torch.Tensor, torch.Tensor, float]]  # module, up, down, scale
    lora_unet_modules: int
    skipped: list[str]


def apply_style(
    style: Style,
    unet: nn.Module,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    strength: float | None = None,
    lora_scaling: LoraScaling = "alpha",
    keep_text_encoder: bool = False,
) -> StyleReport:
    """Blend ``style`` into the three modules in place (their parameters are written, no module is
    replaced). ``strength`` is the blending α of a checkpoint or UNet folder (0–1) or a LoRA's
    multiplier; ``None`` takes the reference's default. ``keep_text_encoder`` loads a checkpoint's UNet
    and VAE only, as ModelScope's PASD loads its own. Raises StyleError, leaving the modules as they
    were, for anything that does not fit."""
    value = style.default_strength if strength is None else float(strength)
    if not math.isfinite(value):
        raise StyleError(f"Style strength must be a finite number, not {strength!r}")
    if style.kind != "lora" and not 0.0 <= value <= 1.0:
        raise StyleError(f"A {style.kind} style blends with a strength from 0 to 1, not {value:g}")
    if lora_scaling not in LORA_SCALINGS:
        raise StyleError(f"lora_scaling must be one of {LORA_SCALINGS}, not {lora_scaling!r}")
    found = detect_kind(style.path)
    if found != style.kind:
        raise StyleError(f"{style.path} holds a {found}, not a {style.kind} as the style {style.name!r} says")

    if style.kind == "unet":
        folder = _unet_folder(style.path)
        assert folder is not None  # detect_kind checked it
        weights = next(folder / n for n in UNET_WEIGHT_FILES if (folder / n).is_file())
        with _open_weights(weights) as state:
            plan = _plan_unet_folder(state, unet, weights)
            _write(plan, unet, vae, text_encoder, value)
    else:
        with _open_weights(style.path) as state:
            if style.kind == "checkpoint":
                plan = _plan_checkpoint(state, unet, vae, text_encoder, style.path)
                if keep_text_encoder and plan.text_encoder is not None:  # ModelScope: UNet and VAE only
                    plan.text_encoder = None
                    plan.skipped.append("text encoder: kept (as ModelScope loads its checkpoint)")
            else:
                plan = _plan_lora(state, unet, text_encoder, style.path, value, lora_scaling)
            _write(plan, unet, vae, text_encoder, value)
    report = StyleReport(
        style=style.name,
        kind=style.kind,
        strength=value,
        unet_keys=len(plan.unet) + plan.lora_unet_modules,
        vae_replaced=plan.vae is not None,
        text_encoder_replaced=plan.text_encoder is not None,
        lora_layers=len(plan.lora),
        skipped=tuple(plan.skipped),
    )
    log.info("Style applied: %s", report)
    return report


def _write(plan: _Plan, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, strength: float) -> None:
    """Write a checked plan: blends in float32, each result cast back to its parameter's dtype."""
    with torch.no_grad():
        if plan.unet:
            current = unet.state_dict()
            for key, source in plan.unet:
                target = current[key]
                new = source.to(device=target.device, dtype=torch.float32)
                target.copy_(new * strength + target.float() * (1.0 - strength))
        if plan.vae is not None:
            vae.load_state_dict(plan.vae, strict=True)
        if plan.text_encoder is not None:
            text_encoder.load_state_dict(plan.text_encoder, strict=True)
        for module, up, down, scale in plan.lora:
            weight = module.weight
            up32 = up.to(device=weight.device, dtype=torch.float32).flatten(1)
            down32 = down.to(device=weight.device, dtype=torch.float32).flatten(1)
            delta = torch.mm(up32, down32).reshape(weight.shape)
            weight.copy_(weight.float() + scale * delta)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


@functools.lru_cache(maxsize=8)
def _plain_unet_keys(config_json: str) -> frozenset[str]:
    """The keys of a plain SD UNet of this config (built on the meta device): the keys a style gives."""
    config = json.loads(config_json)
    with torch.device("meta"):
        plain = UNet2DConditionModel.from_config(config)
    return frozenset(plain.state_dict())


def _base_keys(unet: nn.Module) -> frozenset[str]:
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return _plain_unet_keys(json.dumps(config, sort_keys=True, default=list))


def _check_unet(
    given: Mapping[str, torch.Tensor], unet: nn.Module, source: str
) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """The style's UNet tensors to blend, checked against the model: every base key present and of the
    model's shape. Also returns the keys given that the model has no place for (skipped)."""
    current = unet.state_dict()
    base = _base_keys(unet)
    missing = sorted(k for k in base if k in current and k not in given)
    if missing:
        raise StyleError(
            f"{source} lacks {len(missing)} of the SD1.5 UNet's tensors ({_listed(missing)}): it is not a "
            f"complete Stable Diffusion 1.5 UNet. {_WHAT_FITS}"
        )
    updates: list[tuple[str, torch.Tensor]] = []
    mismatched: list[str] = []
    skipped: list[str] = []
    for key in given:
        if key not in current or key not in base:
            skipped.append(key)
            continue
        tensor = given[key]
        if tuple(tensor.shape) != tuple(current[key].shape):
            mismatched.append(f"{key} {tuple(tensor.shape)} (the model's: {tuple(current[key].shape)})")
            continue
        if not tensor.is_floating_point():
            mismatched.append(f"{key} holds {tensor.dtype}, not floating-point weights")
            continue
        updates.append((key, tensor))
    if mismatched:
        hint = ""
        if any(m.startswith("conv_in.weight") for m in mismatched):
            hint = " (conv_in takes other channels: an inpainting or other special-purpose model?)"
        raise StyleError(
            f"{source} has a UNet of another shape than this model's{hint}: {_listed(mismatched)}. "
            + _WHAT_FITS
        )
    return updates, skipped


def _refuse_other_families(keys: list[str], source: str) -> None:
    """Name what a single file is when it is no SD1.5 checkpoint, before anything else is read."""
    if any(k.startswith(("conditioner.embedders.", UNET_PREFIX + "label_emb.")) for k in keys):
        raise StyleError(
            f"{source} is a Stable Diffusion XL checkpoint (it has conditioner.embedders.* / label_emb "
            f"keys). {_WHAT_FITS}"
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise StyleError(
            f"{source} is a Stable Diffusion 2.x checkpoint (its text encoder is OpenCLIP, "
            f"cond_stage_model.model.*). {_WHAT_FITS}"
        )
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        found = _listed(sorted({k.split(".")[0] + ".*" for k in keys}))
        raise StyleError(
            f"{source} is not a single-file Stable Diffusion checkpoint: it has no {UNET_PREFIX}* keys "
            f"(e.g. {UNET_PREFIX}input_blocks.0.0.weight); it holds {found}. {_WHAT_FITS}"
        )


def _check_strict(
    given: Mapping[str, torch.Tensor], module: nn.Module, source: str, part: str
) -> dict[str, torch.Tensor]:
    """``given`` as a strict state dict of ``module``: every key present, none extra, shapes equal."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in given)
    unexpected = sorted(k for k in given if k not in expected)
    mismatched = [
        f"{k} {tuple(given[k].shape)} (the model's: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{title} {_listed(items)}"
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("of another shape", mismatched),
        )
        if items
    ]
    if problems:
        raise StyleError(
            f"The {part} of {source} does not fit this model's ({'; '.join(problems)}). {_WHAT_FITS}"
        )
    return dict(given)


def _convert(converter: Any, source: str, part: str, *args: Any) -> dict[str, torch.Tensor]:
    """diffusers' converter, its failures on a malformed file as StyleError."""
    try:
        converted = converter(*args)
    except StyleError:
        raise
    except Exception as exc:
        raise StyleError(f"The {part} of {source} could not be converted ({exc!r}). {_WHAT_FITS}") from exc
    return {k: v for k, v in converted.items() if v is not None}


def _plan_checkpoint(
    state: Mapping[str, torch.Tensor], unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, path: Path
) -> _Plan:
    keys = list(state)
    source = path.name
    if keys and all("lora" in k for k in keys):
        raise StyleError(f"{source} is a LoRA, not a checkpoint")
    _refuse_other_families(keys, source)
    converted = _convert(convert_ldm_unet_checkpoint, source, "UNet", state, unet.config)
    updates, skipped = _check_unet(converted, unet, f"{source} (UNet)")
    notes = [f"UNet {k} (the model has no such tensor)" for k in skipped]

    vae_state = None
    if any(k.startswith(VAE_PREFIX) for k in keys):
        vae_given = _convert(convert_ldm_vae_checkpoint, source, "VAE", state, vae.config)
        vae_state = _check_strict(vae_given, vae, source, "VAE")
    else:
        notes.append(f"VAE: the file has none ({VAE_PREFIX}*); the model's VAE is kept")

    te_state = None
    if any(k.startswith(CLIP_PREFIX) for k in keys):
        clip = _convert(convert_ldm_clip_checkpoint, source, "text encoder", state)
        # Files name the weights with or without the ``text_model.`` level (old merges leave it out), and
        # so do transformers' versions; the position ids are a buffer the model makes itself.
        ours = {k.removeprefix("text_model."): k for k in text_encoder.state_dict()}
        te_given = {
            ours.get(k.removeprefix("text_model."), k): v
            for k, v in clip.items()
            if k.removeprefix("text_model.") != _POSITION_IDS
        }
        te_state = _check_strict(te_given, text_encoder, source, "text encoder (CLIP ViT-L)")
    else:
        notes.append(f"text encoder: the file has none ({CLIP_PREFIX}*); the model's is kept")

    used = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)
    rest = sorted(k for k in keys if not k.startswith(used))
    if rest:
        groups = sorted({k.split(".")[0] for k in rest})
        notes.append(f"{len(rest)} tensors beside the UNet, VAE and text encoder ({_listed(groups)})")
    return _Plan(updates, vae_state, te_state, [], 0, notes)


def _plan_unet_folder(state: Mapping[str, torch.Tensor], unet: nn.Module, path: Path) -> _Plan:
    updates, skipped = _check_unet(state, unet, str(path))
    current = unet.state_dict()
    kept = [k for k in skipped if k in current]  # a PASD UNet's own pixel-aware weights
    other = [k for k in skipped if k not in current]
    notes = []
    if kept:
        notes.append(f"{len(kept)} pixel-aware tensors of the folder (the model keeps its own)")
    notes += [f"UNet {k} (the model has no such tensor)" for k in other]
    return _Plan(updates, None, None, [], 0, notes)


def _lora_modules(unet: nn.Module, text_encoder: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """kohya name → (module, is a UNet module) for every Linear/Conv2d of both models: the UNet's in
    its diffusers and its LDM naming, the text encoder's with the ``text_model`` level files have."""
    table: dict[str, tuple[nn.Module, bool]] = {}
    ambiguous: set[str] = set()

    def add(name: str, module: nn.Module, is_unet: bool) -> None:
        if name in table and table[name][0] is not module:
            ambiguous.add(name)
        table[name] = (module, is_unet)

    unet_modules = {n: m for n, m in unet.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    for name, module in unet_modules.items():
        add("lora_unet_" + name.replace(".", "_"), module, True)
    for key, source in _unet_ldm_names(unet, unet_modules).items():
        add("lora_unet_" + source.replace(".", "_"), unet_modules[key], True)
    for name, module in text_encoder.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            add("lora_te_" + with_text_model(name).replace(".", "_"), module, False)
    for name in ambiguous:
        del table[name]
    return table


def _unet_ldm_names(unet: nn.Module, modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """Our UNet module name → its LDM name (``input_blocks.1.1.proj_in``), where it has one."""
    out: dict[str, str] = {}
    for name in modules:
        try:
            source = unet_map([name + ".weight"], unet.config, "")[name + ".weight"]
        except (KeyError, TypeError, ValueError):  # pixel-aware modules have no place in the LDM layout
            continue
        out[name] = source.key.removesuffix(".weight")
    return out


def _plan_lora(
    state: Mapping[str, torch.Tensor],
    unet: nn.Module,
    text_encoder: nn.Module,
    path: Path,
    multiplier: float,
    scaling: LoraScaling,
) -> _Plan:
    source = path.name
    groups: dict[str, dict[str, str]] = {}
    odd: list[str] = []
    for key in state:
        name, _, suffix = key.partition(".")
        if suffix not in _LORA_SUFFIXES:
            odd.append(key)
        groups.setdefault(name, {})[suffix] = key
    if odd:
        raise StyleError(
            f"{source} is a LoRA of a kind that is not supported (LoHa, LoKr, DoRA or another trainer's "
            f"format): {_listed(odd)}. Use a kohya/A1111 LoRA (lora_up / lora_down / alpha keys)."
        )
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in groups):
        raise StyleError(f"{source} is a Stable Diffusion XL LoRA (lora_te1_/lora_te2_ keys). {_WHAT_FITS}")
    table = _lora_modules(unet, text_encoder)
    unknown = sorted(n for n in groups if n not in table)
    if unknown:
        raise StyleError(
            f"{source} names {len(unknown)} layers this model does not have ({_listed(unknown)}): it is "
            f"not an SD1.5 LoRA. {_WHAT_FITS}"
        )
    merges: list[tuple[nn.Module, torch.Tensor, torch.Tensor, float]] = []
    problems: list[str] = []
    unet_modules: set[int] = set()
    for name, parts in groups.items():
        if "lora_up.weight" not in parts or "lora_down.weight" not in parts:
            problems.append(f"{name} lacks its lora_up or lora_down weight")
            continue
        module, is_unet = table[name]
        up, down = state[parts["lora_up.weight"]], state[parts["lora_down.weight"]]
        weight = module.weight
        rank = down.shape[0] if down.ndim else 0
        fits = (
            up.ndim in (2, 4)
            and down.ndim in (2, 4)
            and up.flatten(1).shape == (weight.shape[0], rank)
            and down.flatten(1).shape[1] == weight[0].numel()
            and rank > 0
        )
        if not fits:
            problems.append(
                f"{name}: up {tuple(up.shape)} @ down {tuple(down.shape)} does not fit the weight "
                f"{tuple(weight.shape)}"
            )
            continue
        scale = multiplier
        if scaling == "alpha" and "alpha" in parts:
            alpha = state[parts["alpha"]]
            if alpha.numel() != 1:
                problems.append(f"{name}: its alpha is not one number")
                continue
            scale = multiplier * (float(alpha) / rank)
        merges.append((module, up, down, scale))
        if is_unet:
            unet_modules.add(id(module))
    if problems:
        raise StyleError(f"{source} has LoRA layers that do not fit this model: {_listed(problems)}")
    if not merges:
        raise StyleError(f"{source} holds no LoRA layers")
    return _Plan([], None, None, merges, len(unet_modules), [])
