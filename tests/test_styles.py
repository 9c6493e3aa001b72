"""Personalized models ("styles"): finding them, telling their kinds apart, applying them, refusing bad ones.

Parity with the reference's blending and LoRA merge is in ``test_styles_parity.py``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from backend.models.pasd import PasdUNet2DConditionModel
from backend.models.pasd.styles import (
    STYLES_DIR,
    Style,
    StyleError,
    StyleKind,
    apply_style,
    detect_kind,
    find_styles,
    read_state_dict,
    resolve_style,
)
from backend.models.pasd.tiny_style import StyleFiles, write_style_files
from backend.models.registry import REGISTRY
from backend.models.sgm_keys import unet_map

MODULES = ("unet", "vae", "text_encoder")
STYLE_SPECS = [s for s in REGISTRY.values() if "style" in s.tasks]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("style-model") / "tiny", "full", seed=5)


@pytest.fixture(scope="module")
def files(model: Path, tmp_path_factory: pytest.TempPathFactory) -> StyleFiles:
    return write_style_files(tmp_path_factory.mktemp("style-files"), model)


def fresh(model: Path) -> tuple[PasdUNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    unet = PasdUNet2DConditionModel.from_pretrained(model, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(model / "vae")).eval()
    text_encoder = CLIPTextModel.from_pretrained(str(model / "text_encoder")).eval()
    return unet, vae, text_encoder


def states(modules) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: v.detach().clone() for k, v in m.state_dict().items()}
        for name, m in zip(MODULES, modules, strict=True)
    }


def assert_same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    for module in MODULES:
        assert a[module].keys() == b[module].keys()
        for key, tensor in a[module].items():
            assert tensor.dtype == b[module][key].dtype
            assert torch.equal(tensor, b[module][key]), f"{module}/{key} differs"


def is_pixel_aware(key: str) -> bool:
    return ".pixel_attentions." in key


# ------------------------------------------------------------------------------------ finding
def models_dir_with_styles(root: Path, files: StyleFiles) -> Path:
    styles = root / STYLES_DIR
    styles.mkdir(parents=True)
    shutil.copy(files.checkpoint, styles / "Portrait.safetensors")
    shutil.copy(files.checkpoint_ckpt, styles / "old-model.ckpt")
    shutil.copy(files.lora, styles / "film-grain.safetensors")
    shutil.copytree(files.unet_folder, styles / "unet_disney")
    (styles / "notes.txt").write_text("not a style")
    (styles / "broken.safetensors").write_bytes(b"\x00garbage, not a safetensors header")
    (styles / "empty-folder").mkdir()
    for spec in STYLE_SPECS:  # the registry's style, installed as a download leaves it
        target = root / spec.id / spec.files[0]
        target.parent.mkdir(parents=True)
        shutil.copy(files.checkpoint, target)
    return root


def test_find_styles(files: StyleFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert STYLE_SPECS, "the registry has a style entry (style-majicmix-realistic)"
    root = models_dir_with_styles(tmp_path / "models", files)
    with caplog.at_level(logging.WARNING):
        found = find_styles(root)
    by_name = {s.name: s for s in found}
    assert [s.name for s in found[:4]] == ["film-grain", "old-model", "Portrait", "unet_disney"]
    assert by_name["Portrait"].kind == "checkpoint"
    assert by_name["old-model"].kind == "checkpoint"
    assert by_name["film-grain"].kind == "lora"
    assert by_name["unet_disney"].kind == "unet"
    assert by_name["unet_disney"].path == root / STYLES_DIR / "unet_disney"
    assert by_name["Portrait"].licence == ""
    for spec in STYLE_SPECS:
        style = by_name[spec.id]
        assert (style.path, style.kind, style.licence) == (
            root / spec.id / spec.files[0],
            "checkpoint",
            spec.licence,
        )
    assert "broken" not in by_name and "notes" not in by_name and "empty-folder" not in by_name
    assert "broken.safetensors" in caplog.text
    assert by_name["film-grain"].default_strength == 0.6
    assert by_name["Portrait"].default_strength == by_name["unet_disney"].default_strength == 1.0


def test_find_styles_without_styles(tmp_path: Path) -> None:
    assert find_styles(tmp_path) == []
    (tmp_path / STYLES_DIR).mkdir()
    assert find_styles(tmp_path) == []


def test_resolve_style(files: StyleFiles, tmp_path: Path) -> None:
    root = models_dir_with_styles(tmp_path / "models", files)
    assert resolve_style("Portrait", root).path == root / STYLES_DIR / "Portrait.safetensors"
    assert resolve_style("portrait", root).name == "Portrait"
    assert resolve_style("film-grain.safetensors", root).kind == "lora"  # a file name in styles/
    assert resolve_style(files.lora_no_alpha, root).kind == "lora"  # a path anywhere
    assert resolve_style(str(files.unet_folder), root).kind == "unet"
    for spec in STYLE_SPECS:
        assert resolve_style(spec.id, root).licence == spec.licence
    with pytest.raises(StyleError, match=r"No style named 'nope'.*Portrait.*styles"):
        resolve_style("nope", root)
    with pytest.raises(StyleError, match="not found"):
        resolve_style(tmp_path / "missing.safetensors", root)
    with pytest.raises(StyleError, match="not a diffusers UNet folder"):
        resolve_style(root / STYLES_DIR / "empty-folder", root)
    with pytest.raises(StyleError, match="Could not read"):
        resolve_style("broken.safetensors", root)


def test_resolve_registry_style_not_installed(tmp_path: Path) -> None:
    for spec in STYLE_SPECS:
        with pytest.raises(StyleError, match=rf"not installed.*python -m backend download {spec.id}"):
            resolve_style(spec.id, tmp_path)


def test_kind_is_read_from_content(files: StyleFiles, model: Path, tmp_path: Path) -> None:
    lora = shutil.copy(files.lora, tmp_path / "realistic-vision.safetensors")
    checkpoint = shutil.copy(files.checkpoint, tmp_path / "my-lora-merge.safetensors")
    assert detect_kind(Path(lora)) == "lora"
    assert detect_kind(Path(checkpoint)) == "checkpoint"
    assert detect_kind(files.lora_no_alpha) == "lora"
    assert detect_kind(files.checkpoint_ckpt) == "checkpoint"
    assert detect_kind(files.unet_folder) == "unet"
    with pytest.raises(StyleError, match="holds a lora, not a checkpoint"):
        apply_style(Style("x", Path(lora), "checkpoint"), *fresh(model))


# ------------------------------------------------------------------------------------ reading
def test_ckpt_reads_as_its_safetensors(files: StyleFiles, model: Path) -> None:
    a, b = read_state_dict(files.checkpoint), read_state_dict(files.checkpoint_ckpt)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    one, two = fresh(model), fresh(model)
    apply_style(Style("a", files.checkpoint, "checkpoint"), *one, strength=0.7)
    apply_style(Style("b", files.checkpoint_ckpt, "checkpoint"), *two, strength=0.7)
    assert_same(states(one), states(two))


class _RunsCode:
    """Unpickling this runs code: what a malicious .ckpt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_malicious_pickle_is_refused(tmp_path: Path, model: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _RunsCode(marker)}, path
    )
    assert not marker.exists()
    with pytest.raises(StyleError, match=r"weights-only loading refuses.*\.safetensors"):
        read_state_dict(path)
    with pytest.raises(StyleError, match="weights-only"):
        resolve_style(path, tmp_path)
    modules = fresh(model)
    before = states(modules)
    with pytest.raises(StyleError):
        apply_style(Style("evil", path, "checkpoint"), *modules)
    assert not marker.exists()
    assert_same(before, states(modules))


# ------------------------------------------------------------------------------------ applying
def test_checkpoint_blends_unet_and_replaces_vae_and_text_encoder(files: StyleFiles, model: Path) -> None:
    modules = fresh(model)
    before = states(modules)
    report = apply_style(Style("tiny", files.checkpoint, "checkpoint"), *modules, strength=0.25)
    after = states(modules)
    theirs = style_unet(files)
    for key, tensor in after["unet"].items():
        if is_pixel_aware(key):
            assert torch.equal(tensor, before["unet"][key])
        else:
            expected = theirs[key] * 0.25 + before["unet"][key] * 0.75
            torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)
    assert all(not torch.equal(after["vae"][k], before["vae"][k]) for k in after["vae"])
    assert all(
        not torch.equal(after["text_encoder"][k], before["text_encoder"][k]) for k in after["text_encoder"]
    )
    base = sum(not is_pixel_aware(k) for k in after["unet"])
    assert (report.kind, report.strength, report.unet_keys, report.lora_layers) == (
        "checkpoint",
        0.25,
        base,
        0,
    )
    assert report.vae_replaced and report.text_encoder_replaced and report.skipped == ()


def style_unet(files: StyleFiles) -> dict[str, torch.Tensor]:
    """The style's UNet weights under diffusers keys (its diffusers folder holds the same tensors)."""
    return load_file(str(files.unet_folder / "diffusion_pytorch_model.safetensors"))


def test_default_strength_is_the_reference_default(files: StyleFiles, model: Path) -> None:
    modules = fresh(model)
    report = apply_style(Style("tiny", files.checkpoint, "checkpoint"), *modules)
    assert report.strength == 1.0
    unet = states(modules)["unet"]
    assert all(torch.equal(unet[k], v) for k, v in style_unet(files).items())
    report = apply_style(Style("tiny", files.lora, "lora"), *fresh(model))
    assert report.strength == 0.6


def test_unet_folder_keeps_pixel_aware_weights(files: StyleFiles, model: Path) -> None:
    modules = fresh(model)
    before = states(modules)
    report = apply_style(Style("unet_disney", files.unet_folder, "unet"), *modules)
    after = states(modules)
    folder = style_unet(files)
    pixel = [k for k in after["unet"] if is_pixel_aware(k)]
    assert pixel and all(torch.equal(after["unet"][k], before["unet"][k]) for k in pixel)
    assert all(torch.equal(after["unet"][k], v) for k, v in folder.items())
    assert any(not torch.equal(after["unet"][k], before["unet"][k]) for k in folder)
    for module in ("vae", "text_encoder"):
        assert all(torch.equal(after[module][k], v) for k, v in before[module].items())
    assert (report.unet_keys, report.vae_replaced, report.text_encoder_replaced) == (
        len(folder),
        False,
        False,
    )


def test_pasd_unet_folder_as_style_keeps_the_models_pixel_aware_weights(model: Path, tmp_path: Path) -> None:
    """A PASD UNet folder (with its own pixel-aware tensors) lends only its base weights."""
    from backend.models.tiny import write_tiny_model

    other = write_tiny_model(tmp_path / "other", "full", seed=9)
    modules = fresh(model)
    before = states(modules)
    report = apply_style(Style("other", other / "unet", "unet"), *modules, strength=1.0)
    after = states(modules)["unet"]
    theirs = load_file(str(other / "unet" / "diffusion_pytorch_model.safetensors"))
    for key, tensor in after.items():
        assert torch.equal(tensor, before["unet"][key] if is_pixel_aware(key) else theirs[key])
    assert any("pixel-aware" in s for s in report.skipped)


def test_lora_merge(files: StyleFiles, model: Path) -> None:
    """W += m · alpha/rank · up@down on every layer (1×1 convolutions too), W += m · up@down without alpha."""
    lora = load_file(str(files.lora))
    modules = fresh(model)
    before = states(modules)
    report = apply_style(Style("lora", files.lora, "lora"), *modules, strength=0.5)
    after = states(modules)
    te_keys = {k.replace(".", "_"): k for k in after["text_encoder"]}
    unet_keys = {k.replace(".", "_"): k for k in after["unet"]}
    layers = {k.partition(".")[0] for k in lora}
    convs = 0
    for layer in layers:
        up, down, alpha = (lora[f"{layer}.{p}"] for p in ("lora_up.weight", "lora_down.weight", "alpha"))
        if layer.startswith("lora_te_"):
            module, key = "text_encoder", te_keys[layer.removeprefix("lora_te_text_model_") + "_weight"]
        else:
            module, key = "unet", unet_keys[layer.removeprefix("lora_unet_") + "_weight"]
        w0 = before[module][key]
        convs += w0.ndim == 4
        delta = (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        expected = w0 + 0.5 * alpha.item() / down.shape[0] * delta
        torch.testing.assert_close(after[module][key], expected, rtol=0, atol=1e-6)
    assert convs > 0
    changed = sum(not torch.equal(after[m][k], before[m][k]) for m in MODULES for k in after[m])
    assert changed == len(layers) == report.lora_layers
    assert report.unet_keys == sum(k.startswith("lora_unet_") for k in layers)
    # without alpha keys, "alpha" scaling is the reference's plain multiplier
    plain, reference = fresh(model), fresh(model)
    apply_style(Style("a", files.lora_no_alpha, "lora"), *plain, strength=0.5)
    apply_style(Style("b", files.lora, "lora"), *reference, strength=0.5, lora_scaling="reference")
    assert_same(states(plain), states(reference))


def test_lora_in_ldm_naming(files: StyleFiles, model: Path, tmp_path: Path) -> None:
    """A UNet LoRA named after the LDM modules (input_blocks.1.1.proj_in …) lands on the same layers."""
    lora = load_file(str(files.lora))
    unet = fresh(model)[0]
    names = {n.replace(".", "_"): n for n, _ in unet.named_modules()}
    renamed = {}
    for key, tensor in lora.items():
        layer, _, suffix = key.partition(".")
        if layer.startswith("lora_unet_"):
            name = names[layer.removeprefix("lora_unet_")]
            ldm = unet_map([name + ".weight"], unet.config, "")[name + ".weight"].key.removesuffix(".weight")
            layer = "lora_unet_" + ldm.replace(".", "_")
        renamed[f"{layer}.{suffix}"] = tensor
    assert any("input_blocks" in k for k in renamed)
    path = tmp_path / "ldm-named.safetensors"
    save_file(renamed, str(path))
    one, two = fresh(model), fresh(model)
    apply_style(Style("a", files.lora, "lora"), *one)
    apply_style(Style("b", path, "lora"), *two)
    assert_same(states(one), states(two))


def test_half_precision_blends_in_float32(files: StyleFiles, model: Path) -> None:
    modules = fresh(model)
    for m in modules:
        m.to(torch.float16)
    before = states(modules)
    apply_style(Style("tiny", files.checkpoint, "checkpoint"), *modules, strength=0.5)
    after = states(modules)
    theirs = style_unet(files)
    for key, tensor in after["unet"].items():
        assert tensor.dtype == torch.float16
        if not is_pixel_aware(key):
            expected = (theirs[key] * 0.5 + before["unet"][key].float() * 0.5).half()
            assert torch.equal(tensor, expected)
    assert all(t.dtype == torch.float16 for m in ("vae", "text_encoder") for t in after[m].values())


# ------------------------------------------------------------------------------------ refusing
def write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def sdxl_like(files: StyleFiles) -> dict[str, torch.Tensor]:
    """An SD1.5 file given SDXL's marks: the second text encoder and the UNet's added embedding."""
    state = read_state_dict(files.checkpoint)
    state["conditioner.embedders.1.model.ln_final.weight"] = torch.ones(8)
    state["model.diffusion_model.label_emb.0.0.weight"] = torch.ones(8, 8)
    return {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in state.items()}


def bad_styles(files: StyleFiles, tmp: Path) -> dict[str, tuple[Style, str]]:
    """Files that must be refused, each with a pattern of the message."""
    good = read_state_dict(files.checkpoint)
    lora = load_file(str(files.lora))
    out: dict[str, tuple[Path, StyleKind, str]] = {}
    out["sdxl"] = (write(tmp / "sdxl.safetensors", sdxl_like(files)), "checkpoint", "Stable Diffusion XL")
    sd2 = {k.replace("cond_stage_model.transformer.", "cond_stage_model.model."): v for k, v in good.items()}
    out["sd2"] = (write(tmp / "sd2.safetensors", sd2), "checkpoint", r"Stable Diffusion 2\.x")
    garbage = tmp / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json and no tensors}")
    out["garbage"] = (garbage, "checkpoint", "Could not read")
    truncated = tmp / "truncated.safetensors"
    truncated.write_bytes(files.checkpoint.read_bytes()[:5000])
    out["truncated"] = (truncated, "checkpoint", "Could not read")
    other = write(tmp / "other.safetensors", {"encoder.weight": torch.ones(2, 2)})
    out["no unet"] = (other, "checkpoint", r"no model\.diffusion_model\.\* keys")
    missing = {k: v for k, v in good.items() if "output_blocks.5.1.proj_out" not in k}
    out["missing unet tensor"] = (write(tmp / "missing.safetensors", missing), "checkpoint", "lacks 2 of")
    inpaint = dict(good)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint[key] = torch.ones(inpaint[key].shape[0], 9, 3, 3)
    out["inpainting"] = (write(tmp / "inpaint.safetensors", inpaint), "checkpoint", "inpainting")
    # the UNet fits, a later part does not: still nothing may be written
    vae_bad = dict(good)
    vae_bad["first_stage_model.decoder.conv_out.weight"] = torch.ones(3, 4, 3, 3)
    out["vae shape"] = (write(tmp / "vae.safetensors", vae_bad), "checkpoint", "VAE of .* does not fit")
    te_bad = {k: v for k, v in good.items() if "final_layer_norm.bias" not in k}
    out["text encoder"] = (
        write(tmp / "te.safetensors", te_bad),
        "checkpoint",
        r"text encoder .*missing final_layer_norm\.bias",
    )
    lora_bad = dict(lora)
    last = sorted(k for k in lora if k.endswith("lora_down.weight"))[-1]
    lora_bad[last] = torch.ones(2, 5)
    out["lora shape"] = (write(tmp / "lora-bad.safetensors", lora_bad), "lora", "do not fit")
    unknown = {**lora, "lora_unet_nowhere_to_q.lora_up.weight": torch.ones(2, 2)}
    unknown["lora_unet_nowhere_to_q.lora_down.weight"] = torch.ones(2, 2)
    out["lora layer"] = (write(tmp / "lora-unknown.safetensors", unknown), "lora", "not an SD1.5 LoRA")
    sdxl_lora = {k.replace("lora_te_", "lora_te1_"): v for k, v in lora.items()}
    out["sdxl lora"] = (write(tmp / "lora-xl.safetensors", sdxl_lora), "lora", "Stable Diffusion XL LoRA")
    loha = {"lora_unet_x.hada_w1_a": torch.ones(2, 2), "lora_unet_x.hada_w1_b": torch.ones(2, 2)}
    out["loha"] = (write(tmp / "loha.safetensors", loha), "lora", "not supported")
    return {name: (Style(name, path, kind), pattern) for name, (path, kind, pattern) in out.items()}


def test_bad_styles_are_refused_and_change_nothing(files: StyleFiles, model: Path, tmp_path: Path) -> None:
    modules = fresh(model)
    before = states(modules)
    for name, (style, pattern) in bad_styles(files, tmp_path).items():
        with pytest.raises(StyleError, match=pattern):
            apply_style(style, *modules)
        assert_same(before, states(modules))
        print(f"{name}: refused")


def test_sdxl_message_says_what_fits(files: StyleFiles, model: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "sd_xl_base.safetensors", sdxl_like(files))
    with pytest.raises(StyleError) as info:
        apply_style(resolve_style(path, tmp_path), *fresh(model))
    message = str(info.value)
    assert "sd_xl_base.safetensors is a Stable Diffusion XL checkpoint" in message
    assert "Stable Diffusion 1.5" in message and "conditioner.embedders" in message


@pytest.mark.parametrize(
    ("kind", "strength", "scaling", "pattern"),
    [
        ("checkpoint", 1.5, "alpha", "from 0 to 1"),
        ("unet", -0.1, "alpha", "from 0 to 1"),
        ("checkpoint", float("nan"), "alpha", "finite"),
        ("lora", float("inf"), "alpha", "finite"),
        ("lora", 0.6, "kohya", "lora_scaling"),
    ],
)
def test_bad_settings_are_refused(
    files: StyleFiles, model: Path, kind: str, strength: float, scaling: str, pattern: str
) -> None:
    path = {"checkpoint": files.checkpoint, "unet": files.unet_folder, "lora": files.lora}[kind]
    modules = fresh(model)
    before = states(modules)
    with pytest.raises(StyleError, match=pattern):
        apply_style(Style("x", path, kind), *modules, strength=strength, lora_scaling=scaling)  # type: ignore[arg-type]
    assert_same(before, states(modules))


def test_lora_multiplier_may_be_negative_or_above_one(files: StyleFiles, model: Path) -> None:
    assert apply_style(Style("x", files.lora, "lora"), *fresh(model), strength=-0.5).strength == -0.5
    assert apply_style(Style("x", files.lora, "lora"), *fresh(model), strength=1.5).lora_layers > 0


def test_text_encoder_keys_without_text_model_level(files: StyleFiles, model: Path, tmp_path: Path) -> None:
    """Some merges name the CLIP weights without ``text_model.``: the same weights either way."""
    state = read_state_dict(files.checkpoint)
    old = {k.replace(".transformer.text_model.", ".transformer."): v for k, v in state.items()}
    path = write(tmp_path / "old-merge.safetensors", old)
    one, two = fresh(model), fresh(model)
    apply_style(Style("a", files.checkpoint, "checkpoint"), *one)
    apply_style(Style("b", path, "checkpoint"), *two)
    assert_same(states(one), states(two))


def test_full_width_sd15_checkpoint_converts_completely() -> None:
    """The SD1.5 single-file inventory (full width, on the meta device) fills every base tensor of a full
    PASD UNet, the VAE and CLIP ViT-L, and names nothing it cannot place."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from backend.models.pasd.styles import _plan_checkpoint
    from backend.models.pasd.tiny_style import ldm_checkpoint
    from backend.models.sd15 import SD15_UNET_CONFIG

    vae_config = {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
    }
    clip = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
    )
    with torch.device("meta"):
        pasd = PasdUNet2DConditionModel.from_config(SD15_UNET_CONFIG, pasd_variant="full")
        plain = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
        vae, text_encoder = AutoencoderKL(**vae_config), CLIPTextModel(clip)
    official = ldm_checkpoint(plain, vae, text_encoder)
    assert len(official) == 686 + 248 + 196 + 1  # UNet, VAE, CLIP ViT-L and its position ids
    plan = _plan_checkpoint(official, pasd, vae, text_encoder, Path("sd15.safetensors"))
    assert len(plan.unet) == len(plain.state_dict()) == 686
    assert plan.vae is not None and len(plan.vae) == 248
    assert plan.text_encoder is not None and len(plan.text_encoder) == 196
    assert plan.skipped == []


def test_extra_tensors_are_reported_and_a_missing_vae_is_kept(
    files: StyleFiles, model: Path, tmp_path: Path
) -> None:
    state = read_state_dict(files.checkpoint)
    extra = {**state, "alphas_cumprod": torch.ones(10), "model_ema.decay": torch.tensor(0.999)}
    path = write(tmp_path / "extra.safetensors", extra)
    report = apply_style(Style("extra", path, "checkpoint"), *fresh(model))
    assert report.skipped == ("2 tensors beside the UNet, VAE and text encoder (alphas_cumprod, model_ema)",)
    no_vae = write(
        tmp_path / "no-vae.safetensors", {k: v for k, v in state.items() if "first_stage" not in k}
    )
    modules = fresh(model)
    before = states(modules)
    report = apply_style(Style("no-vae", no_vae, "checkpoint"), *modules)
    assert (report.vae_replaced, report.text_encoder_replaced) == (False, True)
    assert all(torch.equal(v, before["vae"][k]) for k, v in states(modules)["vae"].items())
    assert any("VAE" in s for s in report.skipped)
