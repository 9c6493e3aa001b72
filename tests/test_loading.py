"""Strict loading of official-layout folders: every variant loads; every mismatch is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.models import (
    ModelLoadError,
    PasdControlNetModel,
    PasdUNet2DConditionModel,
    StateDictMismatchError,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"


def copy_component(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(folder: Path, edit) -> None:
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


@pytest.mark.parametrize(
    ("name", "variant", "rrdb"),
    [
        ("full", "full", False),
        ("light", "light", False),
        ("color", "light", False),
        ("full_rrdb", "full", True),
    ],
)
def test_every_variant_loads_strictly(tiny_models, name: str, variant: str, rrdb: bool) -> None:
    unet = PasdUNet2DConditionModel.from_pretrained(tiny_models[name], subfolder="unet")
    controlnet = PasdControlNetModel.from_pretrained(tiny_models[name], subfolder="controlnet")
    assert unet.pasd_variant == variant
    assert controlnet.config.use_rrdb is rrdb
    stored = load_file(str(tiny_models[name] / "unet" / WEIGHTS))
    loaded = unet.state_dict()
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[k], stored[k]) for k in stored)
    assert not any(p.is_meta for p in [*unet.parameters(), *controlnet.parameters()])
    assert not unet.training and not controlnet.training


def test_renamed_key_is_named(tiny_models, tmp_path: Path) -> None:
    folder = copy_component(tiny_models["full"] / "unet", tmp_path / "unet")
    old = "up_blocks.2.pixel_attentions.1.proj_in.weight"
    rewrite(folder, lambda s: s.__setitem__("up_blocks.2.pixel_attentions.1.proj_inn.weight", s.pop(old)))
    with pytest.raises(StateDictMismatchError) as err:
        PasdUNet2DConditionModel.from_pretrained(folder)
    assert old in str(err.value) and "missing keys (1)" in str(err.value)
    assert "up_blocks.2.pixel_attentions.1.proj_inn.weight" in str(err.value)
    assert "unexpected keys (1)" in str(err.value)


def test_missing_key_is_named(tiny_models, tmp_path: Path) -> None:
    folder = copy_component(tiny_models["light"] / "controlnet", tmp_path / "controlnet")
    rewrite(folder, lambda s: s.pop("controlnet_mid_block.weight"))
    with pytest.raises(StateDictMismatchError, match=r"missing keys \(1\):\n  controlnet_mid_block.weight"):
        PasdControlNetModel.from_pretrained(folder)


def test_wrong_shape_is_named(tiny_models, tmp_path: Path) -> None:
    folder = copy_component(tiny_models["light"] / "unet", tmp_path / "unet")
    key = "up_blocks.3.attentions.0.transformer_blocks.0.attn2_plus.to_k.weight"
    rewrite(folder, lambda s: s.__setitem__(key, torch.zeros(3, 3)))
    with pytest.raises(StateDictMismatchError, match=rf"{key}: checkpoint \[3, 3\] vs model"):
        PasdUNet2DConditionModel.from_pretrained(folder)


def test_training_only_rgb_heads_may_be_absent(tiny_models, tmp_path: Path) -> None:
    folder = copy_component(tiny_models["full"] / "controlnet", tmp_path / "controlnet")
    rewrite(folder, lambda s: [s.pop(k) for k in list(s) if ".to_rgbs." in k])
    controlnet = PasdControlNetModel.from_pretrained(folder)
    assert all(torch.count_nonzero(p) == 0 for p in controlnet.controlnet_cond_embedding.to_rgbs.parameters())
    # …and an extra key anywhere else is still refused
    rewrite(folder, lambda s: s.__setitem__("controlnet_cond_embedding.extra.weight", torch.zeros(1)))
    with pytest.raises(StateDictMismatchError, match=r"controlnet_cond_embedding\.extra\.weight"):
        PasdControlNetModel.from_pretrained(folder)


def test_bin_and_safetensors_load_the_same(tiny_models, tmp_path: Path) -> None:
    folder = copy_component(tiny_models["light"] / "unet", tmp_path / "unet")
    state = load_file(str(folder / WEIGHTS))
    (folder / WEIGHTS).unlink()
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    from_bin = PasdUNet2DConditionModel.from_pretrained(folder)
    from_st = PasdUNet2DConditionModel.from_pretrained(tiny_models["light"] / "unet")
    assert from_bin.pasd_variant == "light"
    assert all(
        torch.equal(a, b)
        for a, b in zip(from_bin.state_dict().values(), from_st.state_dict().values(), strict=True)
    )


def test_plain_sd_unet_is_refused(tiny_models, tmp_path: Path) -> None:
    folder = copy_component(tiny_models["full"] / "unet", tmp_path / "unet")
    rewrite(folder, lambda s: [s.pop(k) for k in list(s) if ".pixel_attentions." in k])
    with pytest.raises(ModelLoadError, match="plain Stable Diffusion UNet"):
        PasdUNet2DConditionModel.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["no_config", "bad_config", "no_weights", "truncated"])
def test_damaged_folders_give_clear_errors(tiny_models, tmp_path: Path, damage: str) -> None:
    folder = copy_component(tiny_models["full"] / "unet", tmp_path / "unet")
    if damage == "no_config":
        (folder / "config.json").unlink()
        expected = "config.json is missing"
    elif damage == "bad_config":
        (folder / "config.json").write_text("{not json")
        expected = "is not valid JSON"
    elif damage == "no_weights":
        (folder / WEIGHTS).unlink()
        expected = "No weights in"
    else:
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
        expected = "Could not read weights"
    with pytest.raises(ModelLoadError, match=expected):
        PasdUNet2DConditionModel.from_pretrained(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="Model folder not found"):
        PasdControlNetModel.from_pretrained(tmp_path / "nowhere")


def test_config_is_official_and_round_trips(tiny_models, tmp_path: Path) -> None:
    config = json.loads((tiny_models["full"] / "unet" / "config.json").read_text())
    assert "pasd_variant" not in config and config["_class_name"] == "UNet2DConditionModel"
    cn_config = json.loads((tiny_models["full"] / "controlnet" / "config.json").read_text())
    assert cn_config["return_rgbs"] is True and cn_config["use_rrdb"] is False
    unet = PasdUNet2DConditionModel.from_pretrained(tiny_models["full"] / "unet")
    unet.save_pretrained(tmp_path / "saved")
    again = PasdUNet2DConditionModel.from_pretrained(tmp_path / "saved")
    assert again.pasd_variant == "full"
    assert "pasd_variant" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def test_half_precision_load(tiny_models) -> None:
    unet = PasdUNet2DConditionModel.from_pretrained(tiny_models["light"] / "unet", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
