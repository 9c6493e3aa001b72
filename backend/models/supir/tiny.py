"""Tiny SUPIR model folders in the official file layouts, for tests, the doctor and benchmarks.

The files are what SUPIR users download, shrunk: a pickled ``SUPIR-v0Q.ckpt``-style state dict
(control model, connectors, denoise encoder under their official keys) and the SDXL base either as
one official single file (sgm keys) or as diffusers folders. Their tensors come from
:func:`~backend.models.supir.random_weights.random_state` over the official key inventory, exactly as
the reference harness fills the official classes, so a folder written here with the harness's seed
holds the very weights of the recorded parity fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTokenizer

from ..manifest import write_manifest
from ..sgm_keys import to_official
from ..store import supir_manifest
from ..tiny import _save_text_encoder, write_tokenizer
from .configs import SupirConfigs, tiny_configs
from .loading import CLIP_G_PREFIX, SUPIR_PARTS, build, part_maps
from .random_weights import random_state

SUPIR_FILE = "SUPIR-tiny.ckpt"
BASE_FILE = "sd_xl_base_tiny.safetensors"
# Official parameters that no part of ours reads but that the official model has (and fills).
UNUSED_PARAMETERS = {CLIP_G_PREFIX + "logit_scale": ()}

Base = Literal["file", "folders"]


def tiny_supir_configs(tokenizer_folder: Path) -> SupirConfigs:
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder))
    return tiny_configs(len(tokenizer), int(tokenizer.eos_token_id))


def official_inventory(configs: SupirConfigs) -> dict[str, dict[str, tuple[int, ...]]]:
    """Official key → shape of the two files (``supir`` and ``sdxl``) for ``configs``, derived from
    our modules through the key maps (built on the meta device: nothing is allocated)."""
    model = build(configs)
    files: dict[str, dict[str, tuple[int, ...]]] = {"supir": {}, "sdxl": {}}
    for part, (module, keymap) in part_maps(model, configs).items():
        state = {k: v for k, v in module.state_dict().items() if k in keymap}
        official = to_official(keymap, state)
        files["supir" if part in SUPIR_PARTS else "sdxl"].update(
            {k: tuple(v.shape) for k, v in official.items()}
        )
    files["sdxl"].update(UNUSED_PARAMETERS)
    return files


def official_weights(configs: SupirConfigs, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The two official files' tensors: every key filled from one generator in sorted order."""
    inventory = official_inventory(configs)
    weights = random_state({k: s for file in inventory.values() for k, s in file.items()}, seed)
    return {name: {k: weights[k] for k in keys} for name, keys in inventory.items()}


def write_tiny_supir(folder: str | Path, seed: int = 0, base: Base = "file") -> Path:
    """A complete tiny SUPIR folder (its manifest says where each file is)."""
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    write_tokenizer(root / "tokenizer")
    write_tokenizer(root / "tokenizer_2", pad_token="!")
    configs = tiny_supir_configs(root / "tokenizer")
    files = official_weights(configs, seed)
    torch.save(files["supir"], root / SUPIR_FILE)  # the official .ckpt is a pickled plain state dict
    if base == "file":
        save_file(files["sdxl"], str(root / BASE_FILE), metadata={"format": "pt"})
    else:
        _write_base_folders(root, configs, files["sdxl"])
    manifest = supir_manifest(
        root.name,
        "Tiny random-weight SUPIR for tests; draws noise, not pictures.",
        "generated locally (SUPIR's architecture is under its non-commercial licence)",
        SUPIR_FILE,
        ".",
        ".",
        BASE_FILE if base == "file" else None,
        tiny=True,
    )
    write_manifest(root, manifest)
    return root


def _write_base_folders(root: Path, configs: SupirConfigs, official: dict[str, torch.Tensor]) -> None:
    """The SDXL base as diffusers folders holding the same tensors as the single file would."""
    from .loading import SDXL_PARTS, finish, load_parts

    model = build(configs)
    load_parts(model, configs, official, SDXL_PARTS, "tiny SDXL base")
    # The connectors and SUPIR's parts are not part of the base; give them placeholders to finish.
    for name in ("control", "denoise_encoder"):
        module = getattr(model, name)
        module.to_empty(device="cpu")
    for name, param in list(model.unet.named_parameters()):
        if param.is_meta:
            owner, _, attr = name.rpartition(".")
            setattr(model.unet.get_submodule(owner), attr, torch.nn.Parameter(torch.zeros(param.shape)))
    finish(model)
    unet = UNet2DConditionModel(**configs.unet)
    unet.load_state_dict(
        {k: v for k, v in model.unet.state_dict().items() if not k.startswith("project_modules.")}
    )
    unet.save_pretrained(str(root / "unet"))
    vae = AutoencoderKL(**configs.vae)
    vae.load_state_dict(model.vae.state_dict())
    vae.save_pretrained(str(root / "vae"))
    _save_text_encoder(root / "text_encoder", model.text_encoder)
    _save_text_encoder(root / "text_encoder_2", model.text_encoder_2)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
