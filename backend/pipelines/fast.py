"""The fast mode: PASD SD1.5 with the LCM-LoRA fused into its UNet, sampled in a few LCM steps.

As the reference does it (PASD's ``test_pasd.py --use_lcm_lora``): the LoRA
``latent-consistency/lcm-lora-sdv1-5`` is loaded and fused, and the solver becomes ``LCMScheduler``
made from the pipeline's (UniPC) scheduler config. Here the LoRA goes into the UNet alone, through
diffusers' own LoRA support (peft), and the peft layers are removed again after fusing: the UNet ends
with plain weights, so PASD's own forward runs unchanged, and PASD's pixel-aware modules, which no
LoRA layer names, are not touched. The ControlNet gets no LoRA (the reference fuses none into it).

The pipeline side (the switch to LCM and its seeded noise) is :meth:`PasdPipeline.enable_fast
<backend.pipelines.pasd.PasdPipeline.enable_fast>`; :func:`enable_fast_mode` is what the engine calls.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import LCMScheduler

from ..models.store import _models_dir
from . import params

LCM_MODEL_ID = "lcm-lora-sdv1-5"
LCM_FILE = "pytorch_lora_weights.safetensors"
DOWNLOAD_COMMAND = f"python -m backend download {LCM_MODEL_ID}"
# The mode's own steps and guidance live with the parameters (the dialog reads them without torch):
# 4 steps, the LoRA's sweet spot; guidance 1.5 (LCM distils guidance in; the authors advise 1-2, the
# reference keeps 9.0, which burns colours at 4 steps; above 1 PASD's negative words still act).
FAST_STEPS, FAST_GUIDANCE = params.FAST_STEPS, params.FAST_GUIDANCE
ADAPTER = "lcm"

# Families whose pipelines refuse the fast mode, by pipeline class, for the message.
_FAMILY_NAMES = {"PasdSdxlPipeline": "PASD-SDXL", "SupirPipeline": "SUPIR"}


class FastModeError(ValueError):
    """The fast mode cannot run; the message says why and what to do."""


def find_lcm_lora(models_dir: str | Path | None = None) -> Path:
    """The installed LCM-LoRA file, ``<models dir>/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors``."""
    path = _models_dir(models_dir) / LCM_MODEL_ID / LCM_FILE
    if not path.is_file() or path.stat().st_size == 0:
        raise FastModeError(
            f"The fast mode needs the LCM-LoRA, which is not installed ({path} is missing). "
            f"Install it with: {DOWNLOAD_COMMAND}"
        )
    return path


def lcm_scheduler(config: Mapping[str, Any]) -> LCMScheduler:
    """``LCMScheduler`` from the pipeline scheduler's config, as the reference makes it: the same betas
    and prediction type; LCM's own options (50 original steps, no clipping) at their defaults."""
    with _quiet("diffusers.configuration_utils"):  # UniPC's options, which LCM has no use for
        return LCMScheduler.from_config(config)


def unsupported(pipeline: object) -> FastModeError:
    """The refusal for a family without a fast mode."""
    name = type(pipeline).__name__
    family = _FAMILY_NAMES.get(name, name)
    return FastModeError(
        f"The fast mode (LCM-LoRA, {FAST_STEPS} steps) is for the SD1.5 PASD models (pasd, pasd-light) "
        f"only; {family} has no LCM-LoRA. Turn the fast mode off, or choose an SD1.5 PASD model."
    )


def enable_fast_mode(
    pipeline: object, models_dir: str | Path | None = None, lora_file: str | Path | None = None
) -> int:
    """Put a loaded pipeline in the fast mode for good (what the engine calls once after loading).

    Fuses the installed LCM-LoRA (or ``lora_file``) into the pipeline's UNet and switches its solver to
    LCM; returns the number of UNet layers changed (0 when it was fast already). Raises
    FastModeError for a family without a fast mode (before looking for the file), for a model the
    LoRA does not fit, and when the LoRA is missing or damaged.
    """
    enable = getattr(pipeline, "enable_fast", None)
    if not getattr(pipeline, "supports_fast", False) or enable is None:
        raise unsupported(pipeline)
    return enable(lora_file, models_dir=models_dir)


def fuse_lcm_lora(unet: torch.nn.Module, lora_file: str | Path, scale: float = 1.0) -> int:
    """Fuse an LCM-LoRA file into ``unet``'s weights in place: ``W += scale · alpha/rank · up @ down``.

    Returns the number of layers changed. The LoRA is read with diffusers' converters (kohya-style
    ``lora_unet_*`` files as published, and diffusers/peft ones), loaded with peft, fused and unloaded
    again, so the UNet keeps its classes, its forward and its state-dict keys. Every LoRA layer must
    find its UNet layer with the same shape, else nothing is changed and FastModeError says so.
    """
    path = Path(lora_file)
    try:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as exc:
        raise FastModeError(f"The fast mode needs the peft package ({exc}): pip install peft") from exc

    state = _read(path)
    state, layers = _fold_alphas(state)
    if not layers:
        raise FastModeError(f"{path} holds no LoRA layers (lora_down/lora_up or lora_A/lora_B weights)")
    try:
        with _quiet("diffusers.loaders.lora_pipeline"):
            converted, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(state, unet_config=unet.config)
    except (ValueError, KeyError) as exc:
        raise FastModeError(f"{path} is not a LoRA of a Stable Diffusion UNet: {exc}") from exc
    unet_keys = [k for k in converted if k.startswith("unet.")]
    if not unet_keys:
        raise FastModeError(f"{path} holds no UNet layers (is it a text-encoder LoRA?)")
    if any(k.startswith("unet.") for k in alphas or {}):
        # Alphas were folded into the up weights above; any left would be scaled twice.
        raise FastModeError(f"{path}: unexpected alpha entries after conversion")
    if getattr(unet, "peft_config", None):
        raise FastModeError("The UNet already holds a LoRA adapter; load the model again first")
    try:
        with _quiet("diffusers.loaders.peft", "diffusers.utils.peft_utils", "peft"):
            unet.load_lora_adapter(converted, prefix="unet", adapter_name=ADAPTER)
        wrapped = sum(isinstance(m, BaseTunerLayer) for m in unet.modules())
        if wrapped != layers:
            raise FastModeError(
                f"{path}: only {wrapped} of its {layers} layers are in this UNet; is it the SD1.5 "
                f"LCM-LoRA ({LCM_MODEL_ID})? Download it again with: {DOWNLOAD_COMMAND}"
            )
        unet.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER])
    except FastModeError:
        _unload(unet)
        raise
    except (RuntimeError, ValueError) as exc:  # shapes that do not fit, keys peft cannot place
        _unload(unet)
        raise FastModeError(
            f"{path} does not fit this UNet ({_first_line(exc)}); the fast mode needs the SD1.5 "
            f"LCM-LoRA ({LCM_MODEL_ID}): {DOWNLOAD_COMMAND}"
        ) from exc
    _unload(unet)
    return wrapped


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FastModeError(f"The LCM-LoRA {path} is missing. Install it with: {DOWNLOAD_COMMAND}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise FastModeError(
            f"The LCM-LoRA {path} cannot be read ({_first_line(exc)}); it is damaged or not a "
            f"safetensors file. Download it again with: {DOWNLOAD_COMMAND}"
        ) from exc


def _fold_alphas(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Kohya-style ``<layer>.alpha`` folded into ``<layer>.lora_up.weight`` (× alpha/rank, in float32);
    returns the state without alpha keys and the number of LoRA layers.

    diffusers would turn per-layer alphas into a peft ``alpha_pattern`` whose attention-layer names do
    not match peft's; folded, every layer's scaling is exactly its own, whatever its alpha and rank.
    """
    out = dict(state)
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    for down in downs:
        layer = down.removesuffix(".lora_down.weight")
        alpha = out.pop(f"{layer}.alpha", None)
        up = f"{layer}.lora_up.weight"
        if alpha is not None and up in out:
            rank = state[down].shape[0]
            out[up] = out[up].float() * (float(alpha) / rank)
    layers = sum(k.endswith(("lora_down.weight", "lora.down.weight", "lora_A.weight")) for k in state)
    return out, layers


def _unload(unet: torch.nn.Module) -> None:
    """Remove every peft layer (keeping the base layers' weights as they are) and peft's config."""
    if getattr(unet, "peft_config", None) is not None or getattr(unet, "_hf_peft_config_loaded", False):
        unet.unload_lora()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence these loggers: their warnings and errors are about what the caller checks and reports."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
