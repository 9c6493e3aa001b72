"""Full-width (SD1.5) models built on the meta device: keys and shapes equal the official ones."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from backend.models import PasdControlNetModel, PasdUNet2DConditionModel
from backend.models.pasd.configs import sd15_controlnet_config
from backend.models.registry import REGISTRY
from backend.models.sd15 import SD15_UNET_CONFIG

from .conftest import FIXTURES

REFERENCE_INVENTORY = json.loads((FIXTURES / "reference" / "sd15_inventory.json").read_text())


def inventory(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def extra(model: torch.nn.Module, base: torch.nn.Module) -> dict[str, list[int]]:
    base_inv = inventory(base)
    inv = inventory(model)
    assert all(inv[k] == shape for k, shape in base_inv.items()), "a base tensor changed shape"
    return {k: v for k, v in inv.items() if k not in base_inv}


@pytest.fixture(scope="module")
def meta_models():
    with torch.device("meta"):
        base = UNet2DConditionModel(**{k: v for k, v in SD15_UNET_CONFIG.items() if not k.startswith("_")})
        return {
            "base": base,
            "full": PasdUNet2DConditionModel.from_config(SD15_UNET_CONFIG, pasd_variant="full"),
            "light": PasdUNet2DConditionModel.from_config(SD15_UNET_CONFIG, pasd_variant="light"),
            "controlnet_base": ControlNetModel.from_unet(base, load_weights_from_unet=False),
            "controlnet": PasdControlNetModel.from_config(sd15_controlnet_config()),
            "controlnet_rrdb": PasdControlNetModel.from_config(sd15_controlnet_config(use_rrdb=True)),
        }


@pytest.mark.parametrize(("variant", "tensors", "million"), [("full", 312, 248.23), ("light", 81, 28.70)])
def test_unet_extra_tensors(meta_models, variant: str, tensors: int, million: float) -> None:
    added = extra(meta_models[variant], meta_models["base"])
    assert len(added) == tensors
    assert round(sum(torch.Size(s).numel() for s in added.values()) / 1e6, 2) == million
    if variant == "full":
        assert all(".pixel_attentions." in k for k in added)
        assert {k.split(".")[1] for k in added} == {"0", "1", "2", "3"}
    else:
        assert all(("_plus" in k) for k in added)
        assert {k.split(".")[1] for k in added} == {"1", "2", "3"}


def test_controlnet_adds_the_rgb_heads(meta_models) -> None:
    added = extra(meta_models["controlnet"], meta_models["controlnet_base"])
    assert sorted(added) == sorted(
        f"controlnet_cond_embedding.to_rgbs.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    )
    rrdb = extra(meta_models["controlnet_rrdb"], meta_models["controlnet"])
    assert rrdb and all(k.startswith("controlnet_cond_embedding.preprocesser.") for k in rrdb)


@pytest.mark.parametrize(
    ("ours", "official"),
    [
        ("full", "unet_full"),
        ("light", "unet_light"),
        ("controlnet", "controlnet"),
        ("controlnet_rrdb", "controlnet_rrdb"),
    ],
)
def test_inventory_equals_reference(meta_models, ours: str, official: str) -> None:
    assert inventory(meta_models[ours]) == REFERENCE_INVENTORY[official]


def test_registry_sizes_match_parameter_counts(meta_models) -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert REGISTRY["pasd"].size_bytes == 4 * (count(meta_models["full"]) + count(meta_models["controlnet"]))
    assert REGISTRY["pasd-light"].size_bytes == 4 * (
        count(meta_models["light"]) + count(meta_models["controlnet"])
    )
    assert REGISTRY["pasd-light-rrdb"].size_bytes == 4 * (
        count(meta_models["light"]) + count(meta_models["controlnet_rrdb"])
    )


# --------------------------------------------------------------------------- PASD-SDXL
SDXL_REFERENCE_INVENTORY = json.loads((FIXTURES / "reference" / "sdxl_inventory.json").read_text())


@pytest.fixture(scope="module")
def sdxl_meta_models():
    from backend.models.pasd.configs import pasd_sdxl_controlnet_config, pasd_sdxl_unet_config
    from backend.models.sdxl import SDXL_UNET_CONFIG

    with torch.device("meta"):
        base = UNet2DConditionModel(**{k: v for k, v in SDXL_UNET_CONFIG.items() if not k.startswith("_")})
        return {
            "base": base,
            # The released configs carry use_sd3_vae: false; building from them ignores it.
            "unet_full": PasdUNet2DConditionModel.from_config(pasd_sdxl_unet_config(), pasd_variant="full"),
            "controlnet": PasdControlNetModel.from_config(pasd_sdxl_controlnet_config()),
        }


@pytest.mark.parametrize("name", ["unet_full", "controlnet"])
def test_pasd_sdxl_inventory_equals_reference(sdxl_meta_models, name: str) -> None:
    """The reference PASD classes with SDXL's config, at full width: every key and shape, no more."""
    assert inventory(sdxl_meta_models[name]) == SDXL_REFERENCE_INVENTORY[name]


def test_pasd_sdxl_pixel_attention_follows_the_transformer_depths(sdxl_meta_models) -> None:
    """[1, 2, 10] transformer layers per block, reversed on the way up: 10-layer pixel attention at the
    lowest resolution, and pixel attention at every layer of every up block, the plain UpBlock2D too."""
    added = extra(sdxl_meta_models["unet_full"], sdxl_meta_models["base"])
    assert all(".pixel_attentions." in k for k in added)
    depth = {
        block: 1
        + max(
            int(k.split(".")[5])
            for k in added
            if k.startswith(f"up_blocks.{block}.pixel_attentions.0.transformer_blocks.")
        )
        for block in (0, 1, 2)
    }
    assert depth == {0: 10, 1: 2, 2: 1}
    assert {k.split(".")[3] for k in added} == {"0", "1", "2"}  # three layers per up block
