"""Model registry and the per-user model folder: offline behaviour and clear instructions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.models import ModelLoadError
from backend.models.registry import DEFAULT_MODEL_FOR_TASK, REGISTRY, with_requirements
from backend.models.store import installed_models, missing_files, resolve_model
from backend.models.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_registry_entries_are_complete() -> None:
    assert set(DEFAULT_MODEL_FOR_TASK.values()) <= set(REGISTRY)
    for spec in REGISTRY.values():
        assert spec.repo and spec.files and spec.licence and spec.size_bytes > 0
        if spec.variant:  # a PASD checkpoint: unet + controlnet under its subfolder, needs SD1.5
            assert spec.requires == ("sd15",)
            assert {f"{spec.subfolder}/unet/config.json", f"{spec.subfolder}/controlnet/config.json"} <= set(
                spec.files
            )
    assert (
        REGISTRY["pasd"].repo == "yangtao9009/PASD" and REGISTRY["pasd"].subfolder == "pasd/checkpoint-100000"
    )
    assert REGISTRY["pasd-color"].scheduler_subfolder == "pasd_color/scheduler"
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
