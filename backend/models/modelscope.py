"""ModelScope's PASD snapshots as local models, used as they come.

ModelScope publishes PASD as ``damo/PASD_image_super_resolutions`` (v1) and
``damo/PASD_v2_image_super_resolutions`` (v2): one folder with ``configuration.json``, the diffusers
component folders side by side (``unet/``, ``controlnet/``, ``scheduler/``, ``vae/``,
``text_encoder/``, ``tokenizer/``), RetinaFace's weights and a personalized SD1.5 checkpoint
(``model_cfg.dreambooth_lora_ckpt``) that ModelScope loads over the UNet and the VAE. Such a folder
has no ``pasd_model.json``; :func:`modelscope_manifest` reads the same facts from its
``configuration.json``. ``pipeline.version == "pasd"`` is v1, whose model classes are PASD-light's;
anything else (v2, or the key missing, as ModelScope decides) is full PASD.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .loading import ModelLoadError
from .manifest import ModelManifest

CONFIG_NAME = "configuration.json"
MODELSCOPE_LICENCE = "Apache-2.0 (ModelScope PASD; the personalized checkpoint it holds has its own terms)"
# ModelScope's inference defaults (its pipeline's forward): 20 steps, guidance 7.5, and its words.
MODELSCOPE_QUALITY = "clean, high-resolution, 8k, best quality, masterpiece, extremely detailed"
MODELSCOPE_NEGATIVE = (
    "dotted, noise, blur, lowres, smooth, longbody, bad anatomy, bad hands, missing fingers, extra digit, "
    "fewer digits, cropped, worst quality, low quality"
)  # its literal carries a run of indentation spaces after "extra digit,"; the words are the same
_COMPONENTS = ("unet", "controlnet", "scheduler", "vae", "text_encoder", "tokenizer")


def is_modelscope_folder(root: Path) -> bool:
    return (root / CONFIG_NAME).is_file() and (root / "unet").is_dir() and (root / "controlnet").is_dir()


def modelscope_manifest(root: Path) -> ModelManifest:
    """The manifest of a ModelScope PASD snapshot; ModelLoadError names what is wrong with it."""
    path = root / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} is not a ModelScope configuration (not a JSON object)")
    missing = [name for name in _COMPONENTS if not (root / name).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{root} looks like a ModelScope PASD snapshot but lacks {', '.join(f'{m}/' for m in missing)}; "
            "download the whole snapshot again."
        )
    pipeline = config.get("pipeline") if isinstance(config.get("pipeline"), dict) else {}
    model_cfg: dict[str, Any] = config.get("model_cfg") if isinstance(config.get("model_cfg"), dict) else {}
    version = pipeline.get("version", "pasd_v2")
    variant = "light" if version == "pasd" else "full"
    overrides: dict[str, Any] = {
        "steps": 20,
        "guidance": 7.5,
        "quality_prompt": MODELSCOPE_QUALITY,
        "negative_prompt": MODELSCOPE_NEGATIVE,
    }
    size = model_cfg.get("process_size")
    if isinstance(size, int) and not isinstance(size, bool) and 256 <= size <= 2048:
        overrides["process_size"] = size // 8 * 8
    extra: dict[str, str] = {}
    checkpoint = model_cfg.get("dreambooth_lora_ckpt")
    if checkpoint:
        if not isinstance(checkpoint, str) or Path(checkpoint).name != checkpoint:
            raise ModelLoadError(
                f"{path}: model_cfg.dreambooth_lora_ckpt must be a file name, not {checkpoint!r}"
            )
        if not (root / checkpoint).is_file():
            raise ModelLoadError(
                f"{root}: its personalized checkpoint {checkpoint} (dreambooth_lora_ckpt) is missing"
            )
        extra["style"] = checkpoint
    name = "v1 (PASD-light classes)" if variant == "light" else "v2 (full PASD classes)"
    return ModelManifest(
        id=root.name,
        variant=variant,
        tasks=("upscale",),
        family="pasd",
        description=f"ModelScope PASD snapshot, {name}"
        + (f", with {checkpoint} over its UNet and VAE" if checkpoint else ""),
        licence=MODELSCOPE_LICENCE,
        extra=extra,
        overrides=overrides,
    )
