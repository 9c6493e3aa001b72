"""Personalized models ("styles") against the reference's ``load_dreambooth_lora`` (github.com/yangxy/PASD).

The fixtures were recorded by ``tools/make_style_fixtures.py`` (see there how to re-record): the reference
applied to a tiny PASD model and tiny style files, which are written again here with the same seeds
and checked against the recorded digests first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from backend.models.pasd import PasdUNet2DConditionModel
from backend.models.pasd.styles import Style, apply_style
from backend.models.pasd.tiny_style import state_digest, write_style_files
from backend.models.sgm_keys import with_text_model
from backend.models.tiny import write_tiny_model

from .conftest import FIXTURES

FOLDER = FIXTURES / "styles"
META = json.loads((FOLDER / "reference.json").read_text())
TOLERANCE = 1e-6
MODULES = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded inputs, written again (and checked to be the very same tensors)."""
    root = tmp_path_factory.mktemp("style-parity")
    inputs = META["inputs"]
    base = write_tiny_model(root / "base", "full", seed=inputs["base_seed"])
    write_style_files(root / "styles", base, seed=inputs["style_seed"])
    for name, relative in inputs["files"].items():
        got = state_digest(load_file(str(root / relative)))
        assert got == inputs["digests"][name], (
            f"the tiny {name} differs from the one the fixtures were recorded on (tiny.py or tiny_style.py "
            "changed?): re-record with tools/make_style_fixtures.py"
        )
    return root


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return load_file(str(FOLDER / "reference.safetensors"))


def fresh(work: Path) -> tuple[PasdUNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    base = work / "base"
    unet = PasdUNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(base / "vae")).eval()
    text_encoder = CLIPTextModel.from_pretrained(str(base / "text_encoder")).eval()
    return unet, vae, text_encoder


def states(modules: tuple[Any, ...]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: v.detach().clone() for k, v in m.state_dict().items()}
        for name, m in zip(MODULES, modules, strict=True)
    }


def reference_changes(outputs: dict[str, torch.Tensor], case: str, module: str, ours: set[str]) -> dict:
    """What the reference changed in ``module`` for ``case``, under our key names."""
    entry = META["cases"][case]["modules"][module]
    prefix = f"{entry.get('same_as', case)}/{module}/"
    by_file_key = {with_text_model(k): k for k in ours} if module == "text_encoder" else {k: k for k in ours}
    changed = {by_file_key[k[len(prefix) :]]: v for k, v in outputs.items() if k.startswith(prefix)}
    assert len(changed) == entry["changed"]
    assert len(ours) - len(changed) == entry["unchanged"]
    return changed


def compare(outputs: dict[str, torch.Tensor], case: str, before: dict, after: dict) -> dict[str, float]:
    """Largest error relative to each tensor's scale, per module; untouched tensors must be bit-equal."""
    errors = {}
    for module in MODULES:
        changed = reference_changes(outputs, case, module, set(after[module]))
        worst = 0.0
        for key, ours in after[module].items():
            if key in changed:
                ref = changed[key]
                scale = max(ref.abs().max().item(), 1e-12)
                worst = max(worst, (ours - ref).abs().max().item() / scale)
            else:
                assert torch.equal(ours, before[module][key]), f"{case}/{module}/{key} changed"
        errors[module] = worst
    return errors


CASES = {
    "checkpoint_alpha1": ("checkpoint", 1.0, "alpha"),
    "checkpoint_alpha05": ("checkpoint", 0.5, "alpha"),
    "lora_m06": ("lora", 0.6, "reference"),
}


def style_file(work: Path, kind: str) -> Path:
    return work / META["inputs"]["files"][kind]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case: str, work: Path, outputs: dict[str, torch.Tensor]) -> None:
    kind, strength, scaling = CASES[case]
    settings = META["cases"][case]["settings"]
    assert strength == settings.get("blending_alpha", settings.get("multiplier"))
    modules = fresh(work)
    before = states(modules)
    style = Style("tiny", style_file(work, kind), kind)  # type: ignore[arg-type]
    report = apply_style(style, *modules, strength=strength, lora_scaling=scaling)  # type: ignore[arg-type]
    errors = compare(outputs, case, before, states(modules))
    print(case, {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOLERANCE, errors
    if kind == "checkpoint":
        assert report.vae_replaced and report.text_encoder_replaced
        assert report.unet_keys == META["cases"][case]["modules"]["unet"]["changed"]
    else:
        assert report.lora_layers == sum(
            META["cases"][case]["modules"][m]["changed"] for m in ("unet", "text_encoder")
        )


def test_lora_alpha_scaling_is_reference_times_alpha_over_rank(
    work: Path, outputs: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Default scaling: each layer's change is the reference's (multiplier · up@down) times alpha/rank."""
    lora = load_file(str(style_file(work, "lora")))
    factor = {
        k.rpartition(".")[0]: lora[k].item() / lora[k.replace(".alpha", ".lora_down.weight")].shape[0]
        for k in lora
        if k.endswith(".alpha")
    }
    assert len(set(factor.values())) > 2  # alpha/rank differs between layers
    modules = fresh(work)
    before = states(modules)
    apply_style(Style("tiny", style_file(work, "lora"), "lora"), *modules, strength=0.6)
    after = states(modules)
    # the reference's per-layer deltas, scaled
    unet_names = {n: n for n, _ in modules[0].named_modules()}
    te_names = {with_text_model(n): n for n, _ in modules[2].named_modules()}
    worst = 0.0
    for layer, f in factor.items():
        module, table = ("unet", unet_names) if layer.startswith("lora_unet_") else ("text_encoder", te_names)
        flat = layer.removeprefix("lora_unet_").removeprefix("lora_te_")
        name = next(v for k, v in table.items() if k.replace(".", "_") == flat)
        key = f"{name}.weight"
        ref = reference_changes(outputs, "lora_m06", module, set(after[module]))[key]
        expected = before[module][key] + f * (ref - before[module][key])
        worst = max(worst, ((after[module][key] - expected).abs().max() / expected.abs().max()).item())
    print("alpha scaling", f"{worst:.2e}")
    assert worst <= TOLERANCE

    # the same as reference scaling of a LoRA whose up factors carry alpha/rank
    scaled = {
        k: v * factor[k.rpartition(".lora_up")[0]] if ".lora_up." in k else v
        for k, v in lora.items()
        if not k.endswith(".alpha")
    }
    path = tmp_path / "scaled.safetensors"
    save_file(scaled, str(path))
    again = fresh(work)
    apply_style(Style("scaled", path, "lora"), *again, strength=0.6, lora_scaling="reference")
    for module, state in states(again).items():
        for key, tensor in state.items():
            torch.testing.assert_close(tensor, after[module][key], rtol=0, atol=TOLERANCE * 4)
