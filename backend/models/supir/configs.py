"""Configurations of SUPIR's parts in diffusers/transformers terms, full width and tiny.

The official checkpoints carry no configs (single files in the sgm layout), so the full-width
values are SDXL base's own (``options/SUPIR_v0.yaml`` keeps SDXL's UNet and VAE unchanged), and the
tiny ones mirror the reference harness's shrunk yaml (``tools/make_supir_fixtures.py``): SDXL's
structure with small widths, so key names and every code path stay those of the real model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..sdxl.config import SDXL_UNET_CONFIG

SCALE_FACTOR = 0.13025  # SDXL's latent scale (official ``scale_factor``)

SDXL_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": SCALE_FACTOR,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# OpenAI CLIP ViT-L/14's text tower (SDXL's first encoder) and OpenCLIP ViT-bigG/14's (the second),
# in transformers' CLIPTextConfig terms. eos_token_id 2 selects transformers' arg-max pooling, which
# is OpenCLIP's (the end token has the largest id).
CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
CLIP_G_CONFIG: dict[str, Any] = {
    **CLIP_L_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}


@dataclass(frozen=True)
class SupirConfigs:
    """The four configs SUPIR's parts are built from (the control model shares the UNet's)."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    clip_l: dict[str, Any]
    clip_g: dict[str, Any]


def full_configs() -> SupirConfigs:
    return SupirConfigs(
        unet=copy.deepcopy(SDXL_UNET_CONFIG),
        vae=copy.deepcopy(SDXL_VAE_CONFIG),
        clip_l=dict(CLIP_L_CONFIG),
        clip_g=dict(CLIP_G_CONFIG),
    )


def tiny_configs(vocab_size: int, eos_token_id: int) -> SupirConfigs:
    """The reference harness's tiny model: widths 32/64/128, context 32 + 32, size embeddings of 16,
    two-layer text encoders over the tiny tokenizer's vocabulary."""
    unet = copy.deepcopy(SDXL_UNET_CONFIG)
    unet.update(
        block_out_channels=[32, 64, 128],
        attention_head_dim=[1, 2, 4],  # heads per level (diffusers' SDXL naming): 32 channels each
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=64,
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=32 + 6 * 16,
        sample_size=8,
    )
    vae = copy.deepcopy(SDXL_VAE_CONFIG)
    vae.update(block_out_channels=[32, 64, 128, 128], layers_per_block=1, sample_size=64)
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
        "eos_token_id": eos_token_id,
        "bos_token_id": eos_token_id - 1,
        "pad_token_id": eos_token_id,
    }
    clip_l = {**CLIP_L_CONFIG, **text, "intermediate_size": 64}
    clip_g = {**CLIP_G_CONFIG, **text, "intermediate_size": 128}
    return SupirConfigs(unet=unet, vae=vae, clip_l=clip_l, clip_g=clip_g)
