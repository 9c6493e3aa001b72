"""Model registry and the per-user model folder: offline behaviour and clear instructions."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.models import ModelLoadError
from backend.models.manifest import ModelManifest, write_manifest
from backend.models.registry import DEFAULT_MODEL_FOR_TASK, FAMILIES, REGISTRY, with_requirements
from backend.models.store import (
    ModelDownloadError,
    download_model,
    installed_models,
    missing_files,
    plan_download,
    resolve_model,
)
from backend.models.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_registry_entries_are_complete() -> None:
    assert set(DEFAULT_MODEL_FOR_TASK.values()) <= set(REGISTRY)
    for spec in REGISTRY.values():
        if spec.links and not spec.files:  # other entries' files only, each one its requirement
            assert set(spec.links.values()) <= set(spec.requires) and spec.size_bytes == 0
            continue
        assert spec.repo and spec.files and spec.licence and spec.size_bytes > 0
        if spec.family == "supir":  # one weights file, the SDXL single file and tokenizers, terms first
            assert spec.terms == "supir" and "non-commercial" in spec.licence
            assert spec.files[0].endswith(".safetensors") and "sdxl-tokenizers" in spec.requires
            assert spec.links["base_file"] in spec.requires
            continue
        if spec.variant:  # a PASD checkpoint: unet + controlnet under its subfolder, needs its family's base
            family = FAMILIES[spec.family or ""]
            assert spec.requires[0] == family.base and set(spec.tasks) <= set(family.defaults)
            assert {f"{spec.subfolder}/unet/config.json", f"{spec.subfolder}/controlnet/config.json"} <= set(
                spec.files
            )
    assert (
        REGISTRY["pasd"].repo == "yangtao9009/PASD" and REGISTRY["pasd"].subfolder == "pasd/checkpoint-100000"
    )
    # The hub's folders (yangtao9009/PASD has no pasd_color/) and the architecture each one holds.
    pasd = {
        i: (s.subfolder, s.variant, s.use_rrdb, s.scheduler_subfolder, s.tasks)
        for i, s in REGISTRY.items()
        if s.variant and s.family != "supir"
    }
    assert pasd == {
        "pasd": ("pasd/checkpoint-100000", "full", False, None, ("upscale",)),
        "pasd-light": ("pasd_light/checkpoint-120000", "light", False, None, ("upscale",)),
        "pasd-rrdb": ("pasd_rrdb/checkpoint-100000", "full", True, None, ("upscale",)),
        "pasd-light-rrdb": ("pasd_light_rrdb/checkpoint-100000", "light", True, None, ("upscale",)),
        "pasd-color": (
            "pasd_light_color/checkpoint-180000",
            "light",
            False,
            "pasd_light_color/scheduler",
            ("colorize",),
        ),
        # PASD-SDXL: its own repository, the full classes, SDXL base's Euler scheduler.
        "pasd-sdxl": ("checkpoint-200000", "full", False, None, ("upscale",)),
    }
    assert REGISTRY["pasd-sdxl"].repo == "yangtao9009/PASD-SDXL"
    assert [s.id for s in with_requirements("pasd-sdxl")] == ["sdxl", "sdxl-vae-fp16", "pasd-sdxl"]
    sdxl_parts = {f.split("/")[0] for f in REGISTRY["sdxl"].files}
    assert {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler"} <= sdxl_parts
    assert REGISTRY["sdxl"].repo == "stabilityai/stable-diffusion-xl-base-1.0"
    assert "Open RAIL++-M" in REGISTRY["sdxl"].licence and "Open RAIL++-M" in REGISTRY["pasd-sdxl"].licence
    assert "pasd_light_color/scheduler/scheduler_config.json" in REGISTRY["pasd-color"].files
    assert not any(f.endswith((".pt", ".pth", ".ckpt", ".bin")) for s in REGISTRY.values() for f in s.files)
    assert REGISTRY["sd15"].repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert [s.id for s in with_requirements("pasd-light")] == ["sd15", "pasd-light"]
    sd15_parts = {f.split("/")[0] for f in REGISTRY["sd15"].files}
    assert {"text_encoder", "tokenizer", "vae", "scheduler"} <= sd15_parts
    assert not any("unet" in f or "safety_checker" in f for f in REGISTRY["sd15"].files)


def test_local_folder_works_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_tiny_model(tmp_path / "my-model", "light", seed=5)
    by_path = resolve_model(folder)
    by_id = resolve_model("my-model", models_dir=tmp_path)
    assert by_path.root == by_id.root == folder
    assert by_id.manifest.variant == "light"
    assert [m.root.name for m in installed_models(tmp_path)] == ["my-model"]


def test_missing_registry_model_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        resolve_model("pasd", models_dir=tmp_path)
    text = str(err.value)
    assert "python -m backend download pasd" in text
    assert "pasd/checkpoint-100000/unet/diffusion_pytorch_model.safetensors" in text
    assert str(tmp_path / "pasd") in text


def test_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'nope' is not installed"):
        resolve_model("nope", models_dir=tmp_path)


def test_download_without_network_explains_what_to_fetch(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "backend", "download", "pasd-color", "--models", str(tmp_path), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Could not download 'sd15'" in result.stderr
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in result.stderr
    assert "vae/diffusion_pytorch_model.safetensors" in result.stderr
    assert f"put them under {tmp_path / 'sd15'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_damaged_download_is_detected(tmp_path: Path) -> None:
    spec = REGISTRY["pasd"]
    target = tmp_path / "pasd"
    for name in spec.files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(b"{}" if name.endswith(".json") else b"not a safetensors file")
    assert missing_files(spec, target) == [f for f in spec.files if f.endswith(".safetensors")]


# yangtao9009/PASD as the hub lists it (shared/research/pasd-family.md §4), weights as safetensors.
PASD_LISTING = [
    ".gitattributes",
    "README.md",
    *(
        f"{checkpoint}/{name}"
        for checkpoint in (
            "pasd/checkpoint-100000",
            "pasd_light/checkpoint-120000",
            "pasd_rrdb/checkpoint-100000",
            "pasd_light_rrdb/checkpoint-100000",
            "pasd_light_color/checkpoint-180000",
        )
        for name in (
            "scaler.pt",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "controlnet/config.json",
            "controlnet/diffusion_pytorch_model.safetensors",
        )
    ),
    "pasd_light_color/scheduler/scheduler_config.json",
]


def test_every_pasd_entry_is_found_in_the_real_listing_and_no_pickle_is_chosen() -> None:
    for spec in REGISTRY.values():
        if spec.repo == "yangtao9009/PASD":
            assert plan_download(spec, PASD_LISTING) == list(spec.files)
    colour = plan_download(REGISTRY["pasd-color"], PASD_LISTING)
    assert all(f.startswith("pasd_light_color/") for f in colour)
    assert "pasd_light_color/scheduler/scheduler_config.json" in colour


def test_plan_takes_a_bin_only_where_a_component_has_no_safetensors() -> None:
    sd15 = REGISTRY["sd15"]
    listing = [*sd15.files, "v1-5-pruned-emaonly.ckpt", "unet/diffusion_pytorch_model.safetensors"]
    listing += ["vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.safetensors"]
    listing += ["text_encoder/pytorch_model.bin", "safety_checker/pytorch_model.bin"]
    assert plan_download(sd15, listing) == list(sd15.files)  # safetensors preferred, variants ignored

    without = [f for f in listing if not f.startswith("text_encoder/model.")]
    plan = plan_download(sd15, without)
    assert "text_encoder/pytorch_model.bin" in plan and "text_encoder/model.safetensors" not in plan

    # A folder that has safetensors, only not under the expected name: no silent stand-in.
    renamed = [f for f in listing if f != "vae/diffusion_pytorch_model.safetensors"]
    with pytest.raises(ModelDownloadError) as err:
        plan_download(sd15, renamed)
    assert "has no file vae/diffusion_pytorch_model.safetensors; vae/ holds config.json, " in str(err.value)


def test_a_missing_folder_names_what_its_parent_holds() -> None:
    spec = REGISTRY["pasd-color"]
    stale = dataclasses.replace(
        spec,
        subfolder="pasd_light_color/checkpoint-170000",
        files=tuple(f.replace("checkpoint-180000", "checkpoint-170000") for f in spec.files),
    )
    with pytest.raises(ModelDownloadError) as err:
        plan_download(stale, PASD_LISTING)
    assert str(err.value) == (
        "yangtao9009/PASD has no folder pasd_light_color/checkpoint-170000; pasd_light_color/ holds "
        "checkpoint-180000/, scheduler/ — the registry entry 'pasd-color' is out of date; please report it."
    )
    gone = [f for f in PASD_LISTING if f != "pasd_light_color/scheduler/scheduler_config.json"]
    with pytest.raises(
        ModelDownloadError, match="has no folder pasd_light_color/scheduler; pasd_light_color/ "
    ):
        plan_download(spec, gone)


def test_a_bin_stand_in_counts_as_installed(tmp_path: Path) -> None:
    spec = REGISTRY["blip"]
    for name in spec.files:
        (tmp_path / name).write_bytes(b"{}")
    (tmp_path / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert missing_files(spec, tmp_path) == []
    (tmp_path / "pytorch_model.bin").write_bytes((tmp_path / "pytorch_model.bin").read_bytes()[:40])
    assert missing_files(spec, tmp_path) == ["model.safetensors"]


def test_a_colour_model_installed_under_the_old_hub_paths_is_moved_not_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("everything is on disk: the hub must not be asked")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)
    src = write_tiny_model(tmp_path / "src", "color", seed=7)
    sd15 = tmp_path / "models" / "sd15"
    for part in ("text_encoder", "tokenizer", "vae", "scheduler"):
        shutil.copytree(src / part, sd15 / part)
    (sd15 / "model_index.json").write_text("{}")
    folder = tmp_path / "models" / "pasd-color"  # as the old manual instructions had it
    for part in ("unet", "controlnet"):
        shutil.copytree(src / part, folder / "pasd_color" / "checkpoint-180000" / part)
    shutil.copytree(src / "scheduler", folder / "pasd_color" / "scheduler")
    old = ModelManifest(
        id="pasd-color",
        variant="light",
        tasks=("colorize",),
        pasd_dir="pasd_color/checkpoint-180000",
        scheduler_dir="pasd_color/scheduler",
        base_dir="../sd15",
    )
    write_manifest(folder, old)

    assert download_model("pasd-color", tmp_path / "models", progress=False) == folder
    assert missing_files(REGISTRY["pasd-color"], folder) == []
    assert not (folder / "pasd_color").exists()
    model = resolve_model("pasd-color", tmp_path / "models")
    assert model.manifest.pasd_dir == "pasd_light_color/checkpoint-180000"
    assert (
        model.manifest.resolve(folder, "scheduler") == (folder / "pasd_light_color" / "scheduler").resolve()
    )
