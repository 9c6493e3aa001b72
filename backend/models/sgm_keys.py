"""Key maps between Stability's single-file ("sgm"/LDM) checkpoints and our diffusers-built modules.

SDXL's official ``sd_xl_base_1.0*.safetensors``, the SDXL fine-tunes users download and SUPIR's
``.ckpt`` files name their tensors the way the ``sgm`` code builds its modules
(``model.diffusion_model.input_blocks.4.1.…``, ``first_stage_model.encoder.down.0.block.1.…``,
``conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight``). Our models are
built from diffusers blocks, so each of our keys is mapped to the official tensor it comes from,
with the small reshapes the two layouts differ by (1×1 convolutions vs linear layers in the VAE's
attention, OpenCLIP's fused q/k/v projection, its transposed text projection).

The map runs in both directions from one table: loading takes every one of our keys from the file
and names what is missing, unexpected or mis-shaped (diffusers' own single-file converters skip
silently what they do not know); :func:`to_official` writes our tensors back in the official
layout, which is how the tiny test models are written. The table is derived from the model's
config, so the full-width key inventory can be checked on the meta device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from .loading import StateDictMismatch

Transform = Literal["same", "conv1x1", "transpose", "chunk"]


@dataclass(frozen=True)
class Source:
    """Where one of our tensors comes from: an official key and how it is reshaped.

    ``chunk`` takes part ``part`` of ``parts`` equal slices along the first dimension (OpenCLIP's
    ``in_proj_weight`` holds q, k and v one after the other)."""

    key: str
    transform: Transform = "same"
    part: int = 0
    parts: int = 1

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """Our tensor from the official one (contiguous, as a model saved in our layout would load)."""
        if self.transform == "conv1x1":
            return tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.ndim == 4 else tensor
        if self.transform == "transpose":
            return tensor.t().contiguous()
        if self.transform == "chunk":
            return tensor.chunk(self.parts, dim=0)[self.part].contiguous()
        return tensor


KeyMap = dict[str, Source]

_RESNET_UNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_RESNET_VAE = (("conv_shortcut.", "nin_shortcut."),)
_ATTENTION_VAE = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename(rest: str, table: Iterable[tuple[str, str]]) -> str:
    for ours, official in table:
        if rest.startswith(ours):
            return official + rest[len(ours) :]
    return rest


def _unet_blocks(config: Mapping[str, object]) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(our prefix, official prefix, inner renames) for every block of an SDXL-style UNet or its
    encoder half (the SUPIR control model), from the diffusers config."""
    levels = len(config["block_out_channels"])  # type: ignore[arg-type]
    per = int(config["layers_per_block"])  # type: ignore[arg-type]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]  # type: ignore[union-attr]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]  # type: ignore[union-attr]
    none: tuple[tuple[str, str], ...] = ()
    blocks = [
        ("time_embedding.linear_1.", "time_embed.0.", none),
        ("time_embedding.linear_2.", "time_embed.2.", none),
        ("add_embedding.linear_1.", "label_emb.0.0.", none),
        ("add_embedding.linear_2.", "label_emb.0.2.", none),
        ("conv_in.", "input_blocks.0.0.", none),
        ("mid_block.resnets.0.", "middle_block.0.", _RESNET_UNET),
        ("mid_block.attentions.0.", "middle_block.1.", none),
        ("mid_block.resnets.1.", "middle_block.2.", _RESNET_UNET),
        ("conv_norm_out.", "out.0.", none),
        ("conv_out.", "out.2.", none),
        ("hint_conv.", "input_hint_block.0.", none),
        ("project_modules.", "project_modules.", none),
    ]
    for i in range(levels):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            blocks.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", _RESNET_UNET))
            if down_attn[i]:
                blocks.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.", none))
        if i < levels - 1:
            n = (i + 1) * (per + 1)
            blocks.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{n}.0.op.", none))
        for j in range(per + 1):
            n = i * (per + 1) + j
            blocks.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", _RESNET_UNET))
            if up_attn[i]:
                blocks.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.", none))
        if i < levels - 1:
            n = i * (per + 1) + per
            at = 2 if up_attn[i] else 1
            blocks.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{n}.{at}.conv.", none))
    return blocks


def unet_map(our_keys: Iterable[str], config: Mapping[str, object], prefix: str) -> KeyMap:
    """Our UNet (or control model) keys → ``prefix`` + sgm ``UNetModel`` keys."""
    blocks = sorted(_unet_blocks(config), key=lambda b: -len(b[0]))
    out: KeyMap = {}
    for key in our_keys:
        for ours, official, inner in blocks:
            if key.startswith(ours):
                out[key] = Source(prefix + official + _rename(key[len(ours) :], inner))
                break
        else:
            raise KeyError(f"{key} has no place in the official UNet layout")
    return out


def _vae_blocks(levels: int, per: int) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    none: tuple[tuple[str, str], ...] = ()
    blocks = [
        ("encoder.conv_in.", "encoder.conv_in.", none),
        ("encoder.conv_out.", "encoder.conv_out.", none),
        ("encoder.conv_norm_out.", "encoder.norm_out.", none),
        ("decoder.conv_in.", "decoder.conv_in.", none),
        ("decoder.conv_out.", "decoder.conv_out.", none),
        ("decoder.conv_norm_out.", "decoder.norm_out.", none),
        ("quant_conv.", "quant_conv.", none),
        ("post_quant_conv.", "post_quant_conv.", none),
    ]
    for part in ("encoder", "decoder"):
        blocks += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _RESNET_VAE),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _RESNET_VAE),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _ATTENTION_VAE),
        ]
    for i in range(levels):
        for j in range(per):
            blocks.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _RESNET_VAE)
            )
        blocks.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", none)
        )
        up = levels - 1 - i  # the decoder's official levels count from the smallest image up
        for j in range(per + 1):
            blocks.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.", _RESNET_VAE))
        blocks.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv.", none))
    return blocks


def vae_map(our_keys: Iterable[str], config: Mapping[str, object], prefix: str) -> KeyMap:
    """Our ``AutoencoderKL`` keys (or an ``Encoder``'s, given as ``encoder.…``) → ``prefix`` + sgm keys."""
    levels = len(config["block_out_channels"])  # type: ignore[arg-type]
    blocks = sorted(_vae_blocks(levels, int(config["layers_per_block"])), key=lambda b: -len(b[0]))  # type: ignore[arg-type]
    out: KeyMap = {}
    for key in our_keys:
        for ours, official, inner in blocks:
            if key.startswith(ours):
                rest = _rename(key[len(ours) :], inner)
                conv = inner is _ATTENTION_VAE and rest.endswith(".weight") and not rest.startswith("norm.")
                out[key] = Source(prefix + official + rest, "conv1x1" if conv else "same")
                break
        else:
            raise KeyError(f"{key} has no place in the official VAE layout")
    return out


def clip_map(our_keys: Iterable[str], prefix: str) -> KeyMap:
    """transformers' ``CLIPTextModel`` keys are the official ones under ``prefix`` (SDXL's first
    encoder); transformers 5 leaves out the ``text_model.`` level that the files have."""
    return {key: Source(prefix + with_text_model(key)) for key in our_keys}


def with_text_model(key: str) -> str:
    """A CLIP text-model key as saved files name it (``text_model.…``)."""
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


_OPEN_CLIP_LAYER = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("self_attn.out_proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def open_clip_map(our_keys: Iterable[str], prefix: str) -> KeyMap:
    """transformers' ``CLIPTextModelWithProjection`` keys → OpenCLIP text-tower keys under ``prefix``."""
    fixed = {
        "text_model.embeddings.token_embedding.weight": Source(prefix + "token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": Source(prefix + "positional_embedding"),
        "text_model.final_layer_norm.weight": Source(prefix + "ln_final.weight"),
        "text_model.final_layer_norm.bias": Source(prefix + "ln_final.bias"),
        "text_projection.weight": Source(prefix + "text_projection", "transpose"),
    }
    layer = "text_model.encoder.layers."
    out: KeyMap = {}
    for key in our_keys:
        if key in fixed:
            out[key] = fixed[key]
            continue
        if not key.startswith(layer):
            raise KeyError(f"{key} has no place in the OpenCLIP layout")
        n, _, rest = key[len(layer) :].partition(".")
        block = f"{prefix}transformer.resblocks.{n}."
        for i, name in enumerate(("q_proj.", "k_proj.", "v_proj.")):
            if rest.startswith("self_attn." + name):
                kind = rest[len("self_attn." + name) :]  # weight | bias
                out[key] = Source(f"{block}attn.in_proj_{kind}", "chunk", i, 3)
                break
        else:
            out[key] = Source(block + _rename(rest, _OPEN_CLIP_LAYER))
    return out


def from_official(
    keymap: KeyMap,
    official: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    optional: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], StateDictMismatch]:
    """Our state dict taken from ``official`` through ``keymap``, and what did not fit.

    ``expected`` gives our keys' shapes; ``optional`` names our keys that may be absent (they are
    left out, e.g. CLIP's ``position_ids``). Official keys the map never reads are not judged here:
    a file holds several parts, see :func:`unused_keys`."""
    optional = set(optional)
    out: dict[str, torch.Tensor] = {}
    mismatch = StateDictMismatch()
    for key, want in expected.items():
        source = keymap.get(key)
        if source is None or source.key not in official:
            if key not in optional:
                mismatch.missing.append(source.key if source else key)
            continue
        tensor = source.take(official[source.key])
        if tuple(tensor.shape) != tuple(want):
            mismatch.mismatched.append((source.key, tuple(official[source.key].shape), tuple(want)))
            continue
        out[key] = tensor
    return out, mismatch


def unused_keys(official: Iterable[str], keymaps: Iterable[KeyMap], ignored: Iterable[str] = ()) -> list[str]:
    """Official keys no map reads (unexpected in the file), except those starting with ``ignored``."""
    used = {s.key for m in keymaps for s in m.values()}
    ignored = tuple(ignored)
    return sorted(k for k in official if k not in used and not (ignored and k.startswith(ignored)))


def to_official(keymap: KeyMap, ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors in the official layout (the inverse of :func:`from_official`)."""
    out: dict[str, torch.Tensor] = {}
    chunks: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, tensor in ours.items():
        source = keymap[key]
        if source.transform == "chunk":
            chunks.setdefault(source.key, []).append((source.part, tensor))
        elif source.transform == "conv1x1":
            out[source.key] = tensor.reshape(*tensor.shape, 1, 1) if tensor.ndim == 2 else tensor
        elif source.transform == "transpose":
            out[source.key] = tensor.t().contiguous()
        else:
            out[source.key] = tensor
    for key, parts in chunks.items():
        out[key] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])], dim=0)
    return out
