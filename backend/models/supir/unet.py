"""SUPIR's denoiser network on diffusers blocks: the SDXL UNet with its decoder fed by the control
model, and the control model itself (the SDXL encoder half plus a hint convolution on the LQ latent).

The SDXL UNet's encoder half runs unchanged. Control enters after the middle block and at each of
the nine skip merges (ZeroSFT replaces ``cat([h, skip])``), plus two cross attentions just before
the two upsamplers (ZeroCrossAttn). The official ``project_modules`` order is kept:

====================  ==========================================  ===============
``project_modules.k``  where                                       control feature
====================  ==========================================  ===============
11                     after the middle block                      9
10, 9, 8               skips of ``up_blocks[0]`` (resnets 0–2)     8, 7, 6
7                      ``up_blocks[0]`` before its upsampler        6
6, 5, 4                skips of ``up_blocks[1]``                   5, 4, 3
3                      ``up_blocks[1]`` before its upsampler        3
2, 1, 0                skips of ``up_blocks[2]``                   2, 1, 0
====================  ==========================================  ===============
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from ...image_ops import area_resize
from .connectors import Scale, ZeroCrossAttn, ZeroSFT


def connector_widths(block_out_channels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Control-feature widths and the concatenated skip widths of the ten ZeroSFT connectors."""
    a, b, c = block_out_channels
    return [a] * 4 + [b] * 3 + [c] * 3, [a] * 2 + [b] * 3 + [c] * 4 + [0]


def scale_at(scale: Scale, size: torch.Size | tuple[int, int]) -> Scale:
    """A control-scale map area-resized to a feature's resolution (numbers pass through)."""
    if not torch.is_tensor(scale) or scale.ndim == 0:
        return scale
    return area_resize(scale, (int(size[0]), int(size[1])))


def _embeddings(
    model: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    added: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Time embedding plus the added conditions: ``vector`` (the official conditioner's output,
    see :func:`conditioning_vector`) or diffusers' ``text_embeds`` and ``time_ids``."""
    emb = model.time_embedding(model.get_time_embed(sample=sample, timestep=timestep), None)
    if "vector" in added:
        return emb + model.add_embedding(added["vector"].to(emb.dtype))
    return emb + model.get_aug_embed(emb=emb, encoder_hidden_states=text, added_cond_kwargs=added)


def conditioning_vector(
    model: UNet2DConditionModel, pooled: torch.Tensor, time_ids: torch.Tensor
) -> torch.Tensor:
    """The official conditioner's ``vector``: pooled text, then each size id's sinusoidal
    embedding (what diffusers computes inside the UNet on every call; computed once here)."""
    sizes = model.add_time_proj(time_ids.flatten()).reshape(pooled.shape[0], -1)
    return torch.cat([pooled, sizes.to(pooled.dtype)], dim=-1)


def _down(
    model: UNet2DConditionModel, h: torch.Tensor, emb: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    skips = [h]
    for block in model.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=text)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips.extend(res)
    return model.mid_block(h, emb, encoder_hidden_states=text), skips


class SupirUNet(UNet2DConditionModel):
    """SDXL UNet with SUPIR's twelve connectors (``project_modules``) in its decoder."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        cond, concat = connector_widths(self.config.block_out_channels)
        modules: list[nn.Module] = [ZeroSFT(cond[i], cond[i], concat[i]) for i in range(len(cond))]
        for i in (6, 3):
            modules.insert(i, ZeroCrossAttn(cond[i], concat[i]))
        self.project_modules = nn.ModuleList(modules)

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
        control: Sequence[torch.Tensor],
        control_scale: Scale = 1.0,
    ) -> torch.Tensor:
        """ε for ``sample``; ``control`` is the control model's ten features, ``control_scale`` λ."""
        text = encoder_hidden_states
        emb = _embeddings(self, sample, timestep, text, added_cond_kwargs)
        h, skips = _down(self, self.conv_in(sample), emb, text)
        k, j = len(self.project_modules) - 1, len(control) - 1
        h = self.project_modules[k](control[j], h, scale=scale_at(control_scale, h.shape[-2:]))
        k, j = k - 1, j - 1
        for block in self.up_blocks:
            attentions = getattr(block, "attentions", None)
            last = len(block.resnets) - 1
            for n, resnet in enumerate(block.resnets):
                skip = skips.pop()
                h = self.project_modules[k](control[j], skip, h, scale=scale_at(control_scale, h.shape[-2:]))
                k -= 1
                h = resnet(h, emb)
                if attentions is not None:
                    h = attentions[n](h, encoder_hidden_states=text, return_dict=False)[0]
                if n == last and block.upsamplers is not None:
                    h = self.project_modules[k](control[j], h, scale=scale_at(control_scale, h.shape[-2:]))
                    k -= 1
                    h = block.upsamplers[0](h)
                j -= 1
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class SupirControl(UNet2DConditionModel):
    """SUPIR's control model (official ``GLVControl``): the SDXL encoder half, whose first feature
    also gets ``hint_conv`` of the low-quality latent; returns the ten features the UNet reads."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        for name in ("up_blocks", "conv_norm_out", "conv_act", "conv_out"):
            delattr(self, name)
        self.hint_conv = nn.Conv2d(self.config.in_channels, self.config.block_out_channels[0], 3, padding=1)

    def forward(  # type: ignore[override]
        self,
        hint: torch.Tensor,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
    ) -> list[torch.Tensor]:
        text = encoder_hidden_states
        emb = _embeddings(self, sample, timestep, text, added_cond_kwargs)
        h, skips = _down(self, self.conv_in(sample) + self.hint_conv(hint), emb, text)
        return [*skips, h]
