"""SUPIR's connectors between its control model and the SDXL decoder: ZeroSFT and ZeroCrossAttn.

Parameter names follow the official checkpoints (``project_modules.N.…``), so the tensors load 1:1.
Both blend with the control scale λ: ``λ·modulated + (1 − λ)·plain``, so λ = 0 is the plain SDXL
UNet exactly. λ may be a number or a map [B or 1, 1, h, w] already at the feature's resolution,
which is how the selection (or found faces) gets its own fidelity.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

# The official hidden width of ZeroSFT's shared MLP, fixed in its code for every model size.
SFT_HIDDEN = 128
ATTENTION_HEAD_DIM = 64

Scale = torch.Tensor | float


class ZeroSFT(nn.Module):
    """Spatial feature transform of the decoder state and its skip by a control feature.

    ``forward(c, skip, h)`` replaces the decoder's ``cat([h, skip])``; for the middle block (no
    concatenation) it is ``forward(c, h)``. Despite its official name, ``param_free_norm`` is an
    affine GroupNorm with learned weights.
    """

    def __init__(self, label_nc: int, norm_nc: int, concat_channels: int = 0) -> None:
        super().__init__()
        self.param_free_norm = nn.GroupNorm(32, norm_nc + concat_channels)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, SFT_HIDDEN, 3, padding=1), nn.SiLU())
        self.zero_mul = nn.Conv2d(SFT_HIDDEN, norm_nc + concat_channels, 3, padding=1)
        self.zero_add = nn.Conv2d(SFT_HIDDEN, norm_nc + concat_channels, 3, padding=1)
        self.zero_conv = nn.Conv2d(label_nc, norm_nc, 1)
        self.pre_concat = concat_channels != 0

    def forward(
        self, c: torch.Tensor, h: torch.Tensor, h_ori: torch.Tensor | None = None, scale: Scale = 1.0
    ) -> torch.Tensor:
        concat = h_ori is not None and self.pre_concat
        raw = torch.cat([h_ori, h], dim=1) if concat else h
        h = h + self.zero_conv(c)
        if concat:
            h = torch.cat([h_ori, h], dim=1)
        actv = self.mlp_shared(c)
        h = self.param_free_norm(h) * (self.zero_mul(actv) + 1) + self.zero_add(actv)
        if h_ori is not None and not self.pre_concat:
            h = torch.cat([h_ori, h], dim=1)
        return h * scale + raw * (1 - scale)


class ZeroCrossAttn(nn.Module):
    """Global cross attention from a decoder feature to the control feature of the same resolution."""

    def __init__(self, context_dim: int, query_dim: int) -> None:
        super().__init__()
        self.attn = Attention(
            query_dim=query_dim,
            cross_attention_dim=context_dim,
            heads=query_dim // ATTENTION_HEAD_DIM,
            dim_head=ATTENTION_HEAD_DIM,
            bias=False,
        )
        self.norm1 = nn.GroupNorm(32, query_dim)
        self.norm2 = nn.GroupNorm(32, context_dim)

    def forward(self, context: torch.Tensor, x: torch.Tensor, scale: Scale = 1.0) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm1(x).flatten(2).transpose(1, 2)
        kv = self.norm2(context).flatten(2).transpose(1, 2)
        out = self.attn(q, encoder_hidden_states=kv)
        return x + out.transpose(1, 2).reshape(b, c, h, w) * scale
