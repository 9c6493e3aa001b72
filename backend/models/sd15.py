"""Stable Diffusion 1.5's UNet and ControlNet configurations (the official ``config.json`` values).

Used to build full-width models on the meta device: the key and shape inventory of a real PASD
checkpoint can be checked without a byte of real weights.
"""

from __future__ import annotations

from typing import Any

SD15_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


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
