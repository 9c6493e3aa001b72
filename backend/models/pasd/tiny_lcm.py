"""A tiny LCM-LoRA in exactly the layout of the official ``latent-consistency/lcm-lora-sdv1-5`` file.

The official ``pytorch_lora_weights.safetensors`` is a kohya-style LoRA over SD1.5's diffusers UNet:
for every adapted layer ``<path>`` (its diffusers module path with ``.`` written ``_``) it holds

- ``lora_unet_<path>.lora_down.weight``: [rank, in] for a Linear, [rank, in, k, k] for a k×k Conv2d;
- ``lora_unet_<path>.lora_up.weight``: [out, rank] for a Linear, [out, rank, 1, 1] for a Conv2d;
- ``lora_unet_<path>.alpha``: a scalar (the layer's update is ``alpha / rank · up @ down``);

all float16, rank 64, with ``{"format": "pt"}`` metadata and no text-encoder keys. The adapted layers
are those named by the LCM distillation's LoRA targets (:data:`LCM_LORA_TARGETS`): 278 layers in
SD1.5. That layout gives a file of exactly 134,621,556 bytes, the size of the published file
(``tests/test_fast.py`` checks it), so the names, shapes and dtypes are the real ones.

PASD's pixel-aware modules (``pixel_attentions``, ``*_plus``) are not SD modules, so no LoRA layer
names them: the layout is built on a plain ``UNet2DConditionModel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from ..tiny import tiny_unet_config

LCM_LORA_FILE = "pytorch_lora_weights.safetensors"
LCM_LORA_RANK = 64
# The LoRA targets of the LCM distillation (module-name suffixes, matched as peft matches them).
LCM_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
KOHYA_PREFIX = "lora_unet_"


def lcm_lora_modules(unet_config: Mapping[str, Any]) -> dict[str, torch.nn.Module]:
    """The SD UNet layers an LCM-LoRA adapts, by diffusers module path (built on the meta device)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
    return {
        name: module
        for name, module in unet.named_modules()
        if any(name == t or name.endswith(f".{t}") for t in LCM_LORA_TARGETS)
    }


def kohya_name(module_path: str) -> str:
    """``down_blocks.0.attentions.0.proj_in`` → ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
    return KOHYA_PREFIX + module_path.replace(".", "_")


def lcm_lora_layout(unet_config: Mapping[str, Any], rank: int = LCM_LORA_RANK) -> dict[str, tuple[int, ...]]:
    """Key → shape of an LCM-LoRA for a UNet of ``unet_config``, in the official file's layout."""
    layout: dict[str, tuple[int, ...]] = {}
    for path, module in lcm_lora_modules(unet_config).items():
        name = kohya_name(path)
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        elif isinstance(module, torch.nn.Conv2d):
            down = (rank, module.in_channels, *module.kernel_size)
            up = (module.out_channels, rank, 1, 1)
        else:  # pragma: no cover - every target is a Linear or a Conv2d in SD UNets
            raise TypeError(f"{path} is a {type(module).__name__}, not a Linear or Conv2d")
        layout[f"{name}.lora_down.weight"] = down
        layout[f"{name}.lora_up.weight"] = up
        layout[f"{name}.alpha"] = ()
    return layout


def write_tiny_lcm_lora(
    folder: str | Path,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 2.0,
    unet_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<folder>/pytorch_lora_weights.safetensors``: a seeded random LCM-LoRA for the tiny UNet
    (``backend/models/tiny.py``), official layout at tiny widths; returns the file.

    ``folder`` is where the registry entry ``lcm-lora-sdv1-5`` lives in a models folder. ``alpha`` is
    not the rank, so the alpha/rank scaling is exercised."""
    gen = torch.Generator().manual_seed(seed)
    layout = lcm_lora_layout(unet_config or tiny_unet_config(), rank)
    state: dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))
        else:
            fan_in = torch.Size(shape[1:]).numel()
            value = torch.randn(shape, generator=gen) / fan_in**0.5
        state[key] = value.to(torch.float16).contiguous()
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LCM_LORA_FILE
    save_file(state, str(path), metadata={"format": "pt"})
    return path
