"""Tiny personalized-model files ("styles") in the layouts users download, for tests and fixtures.

Shaped like a tiny model folder's ``unet/``, ``vae/`` and ``text_encoder/`` (see ``backend/models/tiny.py``)
with seeded random weights of their own: a single-file SD1.5 checkpoint under the official LDM keys
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``) as
``.safetensors`` and as a ``.ckpt`` of ``{"state_dict": …}``; kohya/A1111 LoRAs (ranks 2–4, with and
without ``.alpha``) on the attention linears, the 1×1 ``proj_in``/``proj_out`` convolutions and the text
encoder's layers; and a diffusers UNet folder. The LDM keys come from the same key table the SDXL and
SUPIR loaders read official files with (``backend/models/sgm_keys.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from ..sgm_keys import clip_map, to_official, unet_map, vae_map, with_text_model
from ..tiny import _randomize
from .styles import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

TINY_STYLE_SEED = 7
LORA_RANKS = (2, 3, 4)
LORA_ALPHAS = (1.0, 4.0, 3.0, 8.0)  # per layer in turn, so alpha/rank differs from layer to layer
# kohya's default targets in an SD1.5 UNet's transformers and the CLIP text encoder's layers
_UNET_LORA_LEAVES = (
    "proj_in",
    "proj_out",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)
_TEXT_LORA_LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
_TEXT_LORA_LEAVES += ("mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class StyleFiles:
    """The files :func:`write_style_files` wrote."""

    checkpoint: Path  # single-file SD1.5 .safetensors
    checkpoint_ckpt: Path  # the same tensors as a .ckpt ({"state_dict": ...})
    lora: Path  # kohya LoRA with .alpha keys
    lora_no_alpha: Path  # the same LoRA without them
    unet_folder: Path  # diffusers UNet folder (config.json + weights)


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def tiny_style_components(
    model_folder: str | Path, seed: int = TINY_STYLE_SEED
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Plain SD1.5 UNet, VAE and text encoder shaped like ``model_folder``'s, seeded random weights."""
    root = Path(model_folder)
    gen = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_config(root / "unet"))
    vae = AutoencoderKL.from_config(_config(root / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder")))
    for module in (unet, vae, text_encoder):
        _randomize(module, gen)
        module.eval()
    return unet, vae, text_encoder


def ldm_checkpoint(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
) -> dict[str, torch.Tensor]:
    """The three components under the SD1.5 single-file keys, as real SD1.5 files hold them (the VAE's
    attention as 1×1 convolutions, the text encoder's position ids beside its weights)."""
    unet_sd = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    vae_sd = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    te_sd = {k: v.detach().contiguous() for k, v in text_encoder.state_dict().items()}
    out = to_official(unet_map(unet_sd, unet.config, UNET_PREFIX), unet_sd)
    out.update(to_official(vae_map(vae_sd, vae.config, VAE_PREFIX), vae_sd))
    out.update(to_official(clip_map(te_sd, CLIP_PREFIX), te_sd))
    positions = text_encoder.config.max_position_embeddings
    out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return {k: v.contiguous() for k, v in out.items()}


def write_checkpoint(path: Path, state: Mapping[str, torch.Tensor]) -> Path:
    """``.safetensors``, or a Lightning-style ``.ckpt`` (the weights under ``state_dict``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(dict(state), str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": dict(state), "global_step": 0, "epoch": 0}, path)
    return path


def lora_targets(unet: nn.Module, text_encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """(kohya name, module) of the layers a kohya SD1.5 LoRA trains, in module order."""
    out = []
    for name, module in unet.named_modules():
        if ".pixel_attentions." not in name and name.endswith(_UNET_LORA_LEAVES) and ".attentions." in name:
            out.append(("lora_unet_" + name.replace(".", "_"), module))
    for name, module in text_encoder.named_modules():
        if name.endswith(_TEXT_LORA_LEAVES):
            out.append(("lora_te_" + with_text_model(name).replace(".", "_"), module))
    return out


def kohya_lora(
    unet: nn.Module, text_encoder: nn.Module, seed: int = TINY_STYLE_SEED, with_alpha: bool = True
) -> dict[str, torch.Tensor]:
    """A kohya LoRA on :func:`lora_targets`: ranks 2–4 in turn, 1×1-conv factors for convolutions."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i, (name, module) in enumerate(lora_targets(unet, text_encoder)):
        weight = module.weight
        rank = LORA_RANKS[i % len(LORA_RANKS)]
        conv = weight.ndim == 4
        down_shape = (rank, weight.shape[1], 1, 1) if conv else (rank, weight.shape[1])
        up_shape = (weight.shape[0], rank, 1, 1) if conv else (weight.shape[0], rank)
        out[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=gen) / weight.shape[1] ** 0.5
        out[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=gen) / rank**0.5
        if with_alpha:
            out[f"{name}.alpha"] = torch.tensor(LORA_ALPHAS[i % len(LORA_ALPHAS)])
    return out


def write_unet_folder(folder: Path, unet: UNet2DConditionModel) -> Path:
    """A diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors)."""
    unet.save_pretrained(str(folder))
    return folder


def write_style_files(
    folder: str | Path, model_folder: str | Path, seed: int = TINY_STYLE_SEED
) -> StyleFiles:
    """Every kind of style for the tiny model at ``model_folder``, written into ``folder``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    unet, vae, text_encoder = tiny_style_components(model_folder, seed)
    state = ldm_checkpoint(unet, vae, text_encoder)
    lora = kohya_lora(unet, text_encoder, seed + 1)
    files = StyleFiles(
        checkpoint=write_checkpoint(root / "tiny-style.safetensors", state),
        checkpoint_ckpt=write_checkpoint(root / "tiny-style-ckpt.ckpt", state),
        lora=root / "tiny-lora.safetensors",
        lora_no_alpha=root / "tiny-lora-no-alpha.safetensors",
        unet_folder=write_unet_folder(root / "tiny-unet", unet),
    )
    save_file(lora, str(files.lora), metadata={"format": "pt"})
    no_alpha = {k: v for k, v in lora.items() if not k.endswith(".alpha")}
    save_file(no_alpha, str(files.lora_no_alpha), metadata={"format": "pt"})
    return files


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over sorted keys, dtypes, shapes and bytes: the same weights, wherever they were written."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
