"""PASD's ControlNet: diffusers' ControlNet with PASD's degradation-removal conditioning embedding.

The embedding keeps diffusers' ``conv_in`` / ``blocks`` / ``conv_out`` and adds, as the official
checkpoints do, the training-only heads ``to_rgbs.{0,1,2}`` (they predict clean RGB at 1/2, 1/4 and
1/8 scale during training and are never used for inference) and, with ``use_rrdb``, two ESRGAN RRDB
blocks (``preprocesser``) after ``conv_in``.

``conditioning_scale`` may be a per-pixel map [B, 1, H, W] at image resolution: it is area-resized to
every residual's resolution and multiplies all down residuals and the mid residual. This is what
lets the foreground (the GIMP selection) and the background have different fidelity.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.controlnets.controlnet import (
    ControlNetConditioningEmbedding,
    ControlNetModel,
    ControlNetOutput,
)
from torch import nn

from ...image_ops import area_resize
from ..loading import build_on_meta, load_component
from .rrdb import RRDB

# Keys of the training-only RGB heads: loading tolerates their absence (and their presence when the
# config says return_rgbs is false).
TRAINING_ONLY_KEYS = ("controlnet_cond_embedding.to_rgbs.*",)
NUM_RRDB_BLOCKS = 2

_CONTROLNET_INIT_KEYS = frozenset(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}


class PasdConditioningEmbedding(ControlNetConditioningEmbedding):
    """diffusers' conditioning embedding plus PASD's RGB heads and optional RRDB pre-processing."""

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
        return_rgbs: bool = True,
        use_rrdb: bool = False,
    ) -> None:
        super().__init__(conditioning_embedding_channels, conditioning_channels, tuple(block_out_channels))
        self.use_rrdb = use_rrdb
        if use_rrdb:
            c = block_out_channels[0]
            self.preprocesser = nn.Sequential(*(RRDB(c, c) for _ in range(NUM_RRDB_BLOCKS)))
        self.to_rgbs = nn.ModuleList(
            nn.Conv2d(c, 3, kernel_size=3, padding=1) for c in block_out_channels[1:] if return_rgbs
        )

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        if self.use_rrdb:
            embedding = self.preprocesser(embedding)
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)


class PasdControlNetModel(ControlNetModel):
    """ControlNet whose output residuals condition PASD's UNet (skips and pixel-aware attention)."""

    def __init__(self, *, return_rgbs: bool = True, use_rrdb: bool = False, **config: Any) -> None:
        super().__init__(**config)
        # Recorded in the config so that save_pretrained writes them, as the official configs have them.
        self.register_to_config(return_rgbs=return_rgbs, use_rrdb=use_rrdb)
        self.controlnet_cond_embedding = PasdConditioningEmbedding(
            conditioning_embedding_channels=self.config.block_out_channels[0],
            conditioning_channels=self.config.conditioning_channels,
            block_out_channels=self.config.conditioning_embedding_out_channels,
            return_rgbs=return_rgbs,
            use_rrdb=use_rrdb,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **_: Any) -> PasdControlNetModel:
        """Build from an official ControlNet config (unknown keys such as ``_class_name`` are ignored)."""
        kwargs = {k: v for k, v in config.items() if k in _CONTROLNET_INIT_KEYS}
        return cls(
            return_rgbs=bool(config.get("return_rgbs", True)),
            use_rrdb=bool(config.get("use_rrdb", False)),
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> PasdControlNetModel:
        """Load an official PASD ``controlnet/`` folder strictly (the ``to_rgbs`` heads are optional)."""

        def build(config: dict[str, Any], keys: Sequence[str]) -> PasdControlNetModel:
            config = dict(config)
            if "use_rrdb" not in config:  # older configs: the RRDB branch shows in the keys
                config["use_rrdb"] = any(
                    k.startswith("controlnet_cond_embedding.preprocesser.") for k in keys
                )
            return build_on_meta(lambda: cls.from_config(config))

        return load_component(
            folder, subfolder, build, torch_dtype=torch_dtype, device=device, optional=TRAINING_ONLY_KEYS
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for the UNet; ``controlnet_cond`` is RGB in [0, 1] at image resolution."""
        scale_map = None
        if torch.is_tensor(conditioning_scale) and conditioning_scale.ndim > 0:
            scale_map = _check_scale_map(conditioning_scale, controlnet_cond)
            conditioning_scale = 1.0
        elif torch.is_tensor(conditioning_scale):
            conditioning_scale = float(conditioning_scale)
        down, mid = super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            controlnet_cond,
            conditioning_scale=conditioning_scale,
            class_labels=class_labels,
            timestep_cond=timestep_cond,
            attention_mask=attention_mask,
            added_cond_kwargs=added_cond_kwargs,
            cross_attention_kwargs=cross_attention_kwargs,
            guess_mode=guess_mode,
            return_dict=False,
        )
        if scale_map is not None:
            down = [r * _scale_for(scale_map, r) for r in down]
            mid = mid * _scale_for(scale_map, mid)
        if not return_dict:
            return (down, mid)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


def _check_scale_map(scale: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    if scale.ndim != 4 or scale.shape[1] != 1 or scale.shape[0] not in (1, cond.shape[0]):
        raise ValueError(f"conditioning_scale map must be shaped [B, 1, H, W], got {list(scale.shape)}")
    if scale.shape[-2:] != cond.shape[-2:]:
        got, want = list(scale.shape[-2:]), list(cond.shape[-2:])
        raise ValueError(f"conditioning_scale map is {got} but controlnet_cond is {want}")
    if not torch.isfinite(scale).all():
        raise ValueError("conditioning_scale map holds NaN or infinite values")
    return scale


def _scale_for(scale_map: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return area_resize(scale_map.to(device=residual.device, dtype=residual.dtype), tuple(residual.shape[-2:]))
