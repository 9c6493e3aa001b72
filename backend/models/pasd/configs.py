"""PASD's UNet and ControlNet configurations on each base (SD1.5, SDXL), as the released checkpoints
carry them.

PASD trains its UNet and ControlNet from the base's UNet (``from_pretrained_orig`` /
``ControlNetModel.from_unet`` in github.com/yangxy/PASD), so their configs are the base's plus PASD's
ControlNet settings. The released PASD-SDXL configs also carry ``use_sd3_vae: false``, an option of
unreleased training code that the loaders ignore. Used to build full-width models on the meta device
for inventory checks, and by the tiny models.
"""

from __future__ import annotations

from typing import Any

from ..sd15 import SD15_UNET_CONFIG
from ..sdxl.config import SDXL_UNET_CONFIG


def sd15_controlnet_config(use_rrdb: bool = False) -> dict[str, Any]:
    """The ControlNet PASD trains from SD1.5's UNet (``ControlNetModel.from_unet`` settings)."""
    cfg = {
        k: v
        for k, v in SD15_UNET_CONFIG.items()
        if k not in ("out_channels", "up_block_types", "center_input_sample", "sample_size")
    }
    cfg.update(
        _class_name="ControlNetModel",
        conditioning_channels=3,
        conditioning_embedding_out_channels=[16, 32, 96, 256],
        controlnet_conditioning_channel_order="rgb",
        global_pool_conditions=False,
        return_rgbs=True,
        use_rrdb=use_rrdb,
    )
    return cfg


# What ControlNetModel.from_unet takes over from the UNet (diffusers and the PASD reference alike).
_CONTROLNET_FROM_UNET = (
    "act_fn", "addition_embed_type", "addition_time_embed_dim", "attention_head_dim", "block_out_channels",
    "class_embed_type", "cross_attention_dim", "down_block_types", "downsample_padding", "encoder_hid_dim",
    "encoder_hid_dim_type", "flip_sin_to_cos", "freq_shift", "in_channels", "layers_per_block",
    "mid_block_scale_factor", "norm_eps", "norm_num_groups", "num_attention_heads", "num_class_embeds",
    "only_cross_attention", "projection_class_embeddings_input_dim", "resnet_time_scale_shift",
    "transformer_layers_per_block", "upcast_attention", "use_linear_projection",
)  # fmt: skip


def pasd_sdxl_unet_config() -> dict[str, Any]:
    """PASD-SDXL's ``unet/config.json``: SDXL's, plus the key its released configs carry."""
    return {**SDXL_UNET_CONFIG, "use_sd3_vae": False}


def pasd_sdxl_controlnet_config(use_rrdb: bool = False) -> dict[str, Any]:
    """PASD-SDXL's ControlNet: SDXL's UNet settings as ``from_unet`` copies them, plus PASD's embedding."""
    cfg = {k: SDXL_UNET_CONFIG[k] for k in _CONTROLNET_FROM_UNET}
    cfg.update(
        _class_name="ControlNetModel",
        conditioning_channels=3,
        conditioning_embedding_out_channels=[16, 32, 96, 256],
        controlnet_conditioning_channel_order="rgb",
        global_pool_conditions=False,
        return_rgbs=True,
        use_rrdb=use_rrdb,
        use_sd3_vae=False,
    )
    return cfg
