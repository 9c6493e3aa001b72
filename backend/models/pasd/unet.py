"""PASD's UNet: Stable Diffusion 1.5's UNet plus pixel-aware cross attention in the decoder.

The official ``unet/config.json`` is a plain SD1.5 config, so which PASD variant a checkpoint holds
(full or light) is read off its state-dict keys by :meth:`PasdUNet2DConditionModel.from_pretrained`.
The variant is an attribute, not a config entry, so ``save_pretrained`` writes the official layout.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.models.unets.unet_2d_blocks import CrossAttnUpBlock2D
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from torch import nn

from ..loading import ModelLoadError, build_on_meta, load_component
from .pixel_attention import (
    add_light_pixel_attention,
    flatten_tokens,
    light_transformer_forward,
    make_pixel_transformer,
)

PasdVariant = Literal["full", "light"]
PASD_VARIANTS: tuple[PasdVariant, ...] = ("full", "light")

_UNET_INIT_KEYS = frozenset(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}


def detect_unet_variant(keys: Sequence[str] | Mapping[str, Any]) -> PasdVariant:
    """Tell full PASD from PASD-light by the keys its pixel-aware modules leave in the state dict."""
    full = any(".pixel_attentions." in k for k in keys)
    light = any(("attn2_plus." in k or "proj_in_plus." in k or "norm2_plus." in k) for k in keys)
    if full and light:
        raise ModelLoadError(
            "UNet weights hold both full-PASD (pixel_attentions) and PASD-light (*_plus) keys"
        )
    if full:
        return "full"
    if light:
        return "light"
    raise ModelLoadError(
        "These UNet weights have no PASD pixel-aware keys (up_blocks.*.pixel_attentions.* or "
        "*.attn2_plus.*): this is a plain Stable Diffusion UNet, not a PASD checkpoint."
    )


class PasdUNet2DConditionModel(UNet2DConditionModel):
    """SD UNet whose up blocks also read the ControlNet residuals through pixel-aware attention."""

    def __init__(self, *, pasd_variant: PasdVariant = "full", **config: Any) -> None:
        super().__init__(**config)
        if pasd_variant not in PASD_VARIANTS:
            raise ValueError(f"pasd_variant must be one of {PASD_VARIANTS}, not {pasd_variant!r}")
        self.pasd_variant: PasdVariant = pasd_variant
        heads = self.config.num_attention_heads or self.config.attention_head_dim
        n_blocks = len(self.config.down_block_types)
        heads = [heads] * n_blocks if isinstance(heads, int) else list(heads)
        for i, block in enumerate(self.up_blocks):
            channels = _residual_channels(self.config, i)
            if pasd_variant == "full":
                template = _transformer_template(self, i)
                out_channels = block.resnets[0].out_channels
                block.pixel_attentions = nn.ModuleList(
                    make_pixel_transformer(template, out_channels, heads[n_blocks - 1 - i], c)
                    for c in channels
                )
            elif isinstance(block, CrossAttnUpBlock2D):
                for attn, c in zip(block.attentions, channels, strict=True):
                    add_light_pixel_attention(attn, c)

    # ------------------------------------------------------------------ construction / loading
    @classmethod
    def from_config(cls, config: Mapping[str, Any], pasd_variant: PasdVariant = "full", **_: Any):
        """Build from an SD1.5 UNet config (extra keys such as ``_class_name`` are ignored)."""
        return cls(pasd_variant=pasd_variant, **{k: v for k, v in config.items() if k in _UNET_INIT_KEYS})

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> PasdUNet2DConditionModel:
        """Load an official PASD ``unet/`` folder (config.json + safetensors or .bin), strictly."""

        def build(config: dict[str, Any], keys: Sequence[str]) -> PasdUNet2DConditionModel:
            variant = detect_unet_variant(keys)
            return build_on_meta(lambda: cls.from_config(config, pasd_variant=variant))

        return load_component(folder, subfolder, build, torch_dtype=torch_dtype, device=device)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict noise; the ControlNet residuals feed both the skips and the pixel-aware attention.

        Without residuals it behaves as the plain SD UNet (pixel-aware attention is skipped).
        """
        has_control = down_block_additional_residuals is not None
        if has_control != (mid_block_additional_residual is not None):
            raise ValueError(
                "Pass both down_block_additional_residuals and mid_block_additional_residual, or neither"
            )
        controls = tuple(down_block_additional_residuals) if has_control else ()

        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        upsample_size = None

        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time (and optional class / additional) embedding
        emb = self.time_embedding(self.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = self.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = (
                torch.cat([emb, class_emb], dim=-1)
                if self.config.class_embeddings_concat
                else emb + class_emb
            )
        aug_emb = self.get_aug_embed(
            emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        if self.config.addition_embed_type == "image_hint":
            raise NotImplementedError("image_hint addition embeddings are not supported by PASD")
        if aug_emb is not None:
            emb = emb + aug_emb
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        encoder_hidden_states = self.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )

        # 2. encoder
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if has_control:
            if len(controls) != len(skips):
                raise ValueError(f"Expected {len(skips)} down residuals, got {len(controls)}")
            skips = tuple(s + c for s, c in zip(skips, controls, strict=True))

        # 3. middle
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(
                    sample,
                    emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample = self.mid_block(sample, emb)
        if has_control:
            sample = sample + mid_block_additional_residual

        # 4. decoder: each layer pops one skip and, with control, the ControlNet residual of that skip
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            block_controls: tuple[torch.Tensor, ...] = ()
            if has_control:
                block_controls, controls = controls[-n:], controls[:-n]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            sample = self._up_block_forward(
                block,
                sample,
                emb,
                block_skips,
                block_controls,
                encoder_hidden_states,
                upsample_size,
                attention_mask,
                encoder_attention_mask,
                cross_attention_kwargs,
            )

        # 5. out
        if self.conv_norm_out:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)

    def _up_block_forward(
        self,
        block: nn.Module,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        controls: tuple[torch.Tensor, ...],
        encoder_hidden_states: torch.Tensor,
        upsample_size: torch.Size | None,
        attention_mask: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        cross_attention_kwargs: dict[str, Any] | None,
    ) -> torch.Tensor:
        """One decoder block, layer by layer, so the pixel-aware attention can sit after each layer."""
        if getattr(block, "s1", None):
            raise NotImplementedError("FreeU is not supported with PASD's pixel-aware attention")
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            control = controls[-1 - j] if controls else None
            hidden_states = torch.cat([hidden_states, skips[-1 - j]], dim=1)
            hidden_states = resnet(hidden_states, temb)
            if attentions is not None:
                attn = attentions[j]
                if control is not None and self.pasd_variant == "light":
                    hidden_states = light_transformer_forward(
                        attn,
                        hidden_states,
                        encoder_hidden_states,
                        control,
                        attention_mask=attention_mask,
                        encoder_attention_mask=encoder_attention_mask,
                        cross_attention_kwargs=cross_attention_kwargs,
                    )
                else:
                    hidden_states = attn(
                        hidden_states,
                        encoder_hidden_states=encoder_hidden_states,
                        cross_attention_kwargs=cross_attention_kwargs,
                        attention_mask=attention_mask,
                        encoder_attention_mask=encoder_attention_mask,
                        return_dict=False,
                    )[0]
            if control is not None and self.pasd_variant == "full":
                hidden_states = block.pixel_attentions[j](
                    hidden_states,
                    encoder_hidden_states=flatten_tokens(control),
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


def _residual_channels(cfg: Any, up_index: int) -> list[int]:
    """Channels of the skip (and ControlNet residual) each layer of up block ``up_index`` consumes."""
    if cfg.up_block_types[up_index] not in ("CrossAttnUpBlock2D", "UpBlock2D"):
        raise ModelLoadError(
            f"PASD supports CrossAttnUpBlock2D / UpBlock2D decoders, not {cfg.up_block_types[up_index]}"
        )
    channels = list(reversed(cfg.block_out_channels))
    layers = cfg.layers_per_block
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    n_layers = list(reversed(layers))[up_index] + 1
    out_ch, in_ch = channels[up_index], channels[min(up_index + 1, len(channels) - 1)]
    return [in_ch if j == n_layers - 1 else out_ch for j in range(n_layers)]


def _transformer_template(unet: UNet2DConditionModel, up_index: int) -> dict[str, Any]:
    """Settings the pixel transformers of one up block share with the UNet's own transformers."""
    cfg = unet.config
    layers = cfg.transformer_layers_per_block
    n_blocks = len(cfg.down_block_types)
    layers = [layers] * n_blocks if isinstance(layers, int) else list(layers)
    only_cross = cfg.only_cross_attention
    only_cross = [only_cross] * n_blocks if isinstance(only_cross, bool) else list(only_cross)
    rev = n_blocks - 1 - up_index
    return {
        "num_layers": layers[rev],
        "norm_num_groups": cfg.norm_num_groups,
        "use_linear_projection": cfg.use_linear_projection,
        "only_cross_attention": only_cross[rev],
        "upcast_attention": cfg.upcast_attention,
    }
