"""PASD's pixel-aware cross attention, built on diffusers' Transformer2DModel and BasicTransformerBlock.

Two official variants exist:

* full PASD: after every layer of every up block, an extra Transformer2DModel
  (``up_blocks.i.pixel_attentions.j``) whose cross-attention keys/values are the ControlNet residual
  consumed at that layer, flattened to h·w tokens;
* PASD-light: the text transformers of the cross-attention up blocks grow ``proj_in_plus`` and, in
  each transformer block, ``norm2_plus`` + ``attn2_plus``: a second cross attention over the
  (projected) residual, placed between the text cross attention and the feed-forward.

The light modules are attached to diffusers' own modules so that the state-dict keys are exactly
the official ones; the forward passes that use them live here.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock, _chunked_feed_forward
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn


def flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, H·W, C], the token layout attention expects."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def make_pixel_transformer(
    template: dict[str, Any], in_channels: int, num_heads: int, residual_channels: int
) -> Transformer2DModel:
    """A full-PASD pixel attention block: a Transformer2DModel over the residual's h·w tokens."""
    return Transformer2DModel(
        num_attention_heads=num_heads,
        attention_head_dim=in_channels // num_heads,
        in_channels=in_channels,
        num_layers=template["num_layers"],
        cross_attention_dim=residual_channels,
        norm_num_groups=template["norm_num_groups"],
        use_linear_projection=template["use_linear_projection"],
        only_cross_attention=template["only_cross_attention"],
        upcast_attention=template["upcast_attention"],
    )


def add_light_pixel_attention(transformer: Transformer2DModel, residual_channels: int) -> None:
    """Grow a text transformer the PASD-light modules, in place (official key names)."""
    cfg = transformer.config
    if not transformer.is_input_continuous or cfg.norm_type != "layer_norm":
        raise ValueError("PASD-light pixel attention needs a continuous-input, layer_norm Transformer2DModel")
    if transformer.use_linear_projection:
        transformer.proj_in_plus = nn.Linear(residual_channels, residual_channels)
    else:
        transformer.proj_in_plus = nn.Conv2d(residual_channels, residual_channels, kernel_size=1)
    for block in transformer.transformer_blocks:
        dim = block.norm1.normalized_shape[0]
        block.norm2_plus = nn.LayerNorm(dim, elementwise_affine=cfg.norm_elementwise_affine, eps=cfg.norm_eps)
        block.attn2_plus = Attention(
            query_dim=dim,
            cross_attention_dim=residual_channels,
            heads=cfg.num_attention_heads,
            dim_head=cfg.attention_head_dim,
            dropout=cfg.dropout,
            bias=cfg.attention_bias,
            upcast_attention=cfg.upcast_attention,
        )


def _light_block_forward(
    block: BasicTransformerBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    pixel_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    encoder_attention_mask: torch.Tensor | None,
    cross_attention_kwargs: dict[str, Any] | None,
) -> torch.Tensor:
    """BasicTransformerBlock (layer_norm) with PASD-light's pixel cross attention after the text one."""
    kwargs = dict(cross_attention_kwargs or {})
    kwargs.pop("gligen", None)
    norm = block.norm1(hidden_states)
    hidden_states = hidden_states + block.attn1(
        norm,
        encoder_hidden_states=encoder_hidden_states if block.only_cross_attention else None,
        attention_mask=attention_mask,
        **kwargs,
    )
    if block.attn2 is not None:
        hidden_states = hidden_states + block.attn2(
            block.norm2(hidden_states),
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=encoder_attention_mask,
            **kwargs,
        )
    hidden_states = hidden_states + block.attn2_plus(
        block.norm2_plus(hidden_states), encoder_hidden_states=pixel_states, **kwargs
    )
    norm = block.norm3(hidden_states)
    if block._chunk_size is not None:
        ff = _chunked_feed_forward(block.ff, norm, block._chunk_dim, block._chunk_size)
    else:
        ff = block.ff(norm)
    return hidden_states + ff


def light_transformer_forward(
    transformer: Transformer2DModel,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    residual: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Transformer2DModel.forward (continuous input) with the PASD-light pixel branch.

    ``residual`` is the ControlNet residual [B, C, h, w] consumed at this layer; it is projected by
    ``proj_in_plus`` and flattened to h·w tokens, like the hidden states.
    """
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = ((1 - attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(
            1
        )

    batch, _, height, width = hidden_states.shape
    skip = hidden_states
    hidden_states, inner_dim = transformer._operate_on_continuous_inputs(hidden_states)
    if transformer.use_linear_projection:
        pixel_states = transformer.proj_in_plus(flatten_tokens(residual))
    else:
        pixel_states = flatten_tokens(transformer.proj_in_plus(residual))

    for block in transformer.transformer_blocks:
        hidden_states = _light_block_forward(
            block,
            hidden_states,
            encoder_hidden_states,
            pixel_states,
            attention_mask,
            encoder_attention_mask,
            cross_attention_kwargs,
        )
    return transformer._get_output_for_continuous_inputs(hidden_states, skip, batch, height, width, inner_dim)
