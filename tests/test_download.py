"""The real download path (huggingface_hub) against a fake hub on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from backend.models.manifest import read_manifest
from backend.models.tiny import write_pasd_components, write_tiny_model

from .conftest import run_backend
from .fake_hub import FakeHub


def cli(hub: FakeHub, *args: str) -> subprocess.CompletedProcess[str]:
    return run_backend(
        *args,
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_OFFLINE="0",
        HF_HOME=str(Path(args[-1]).parent / "hf-home"),
    )


def make_repos(tmp_path: Path) -> dict[str, Path]:
    pasd = tmp_path / "hub" / "PASD"
    write_pasd_components(pasd / "pasd" / "checkpoint-100000", "full", False, seed=11)
    (pasd / "pasd" / "checkpoint-100000" / "optimizer.bin").write_bytes(b"training state, never needed")
    sd15 = tmp_path / "hub" / "sd15"
    tiny = write_tiny_model(tmp_path / "hub-src", "full", seed=12)
    for part in ("text_encoder", "tokenizer", "vae", "scheduler", "unet"):
        shutil.copytree(tiny / part, sd15 / part)
    (sd15 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {"yangtao9009/PASD": pasd, "stable-diffusion-v1-5/stable-diffusion-v1-5": sd15}


def test_download_fetches_only_needed_files_and_installs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        result = cli(hub, "download", "pasd", "--quiet", "--models", str(models))
        assert result.returncode == 0, result.stderr
        fetched = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
        assert not any("optimizer.bin" in r or ("/unet/" in r and "sd15" in r) for r in fetched)
        assert not (models / "sd15" / "unet").exists()
        assert not (models / "pasd" / "pasd" / "checkpoint-100000" / "optimizer.bin").exists()

        manifest = read_manifest(models / "pasd")
        assert manifest.variant == "full" and manifest.tasks == ("upscale",)
        assert (
            manifest.resolve(models / "pasd", "text_encoder") == (models / "sd15" / "text_encoder").resolve()
        )

        inspected = cli(hub, "inspect", "pasd", "--models", str(models))
        assert inspected.returncode == 0, inspected.stderr
        assert "PASD-full" in inspected.stdout

        # A second run finds everything in place and asks the hub for nothing.
        before = len(hub.requests)
        again = cli(hub, "download", "pasd", "--quiet", "--models", str(models))
        assert again.returncode == 0, again.stderr
        assert len(hub.requests) == before


def test_download_repairs_a_damaged_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        assert cli(hub, "download", "pasd", "--quiet", "--models", str(models)).returncode == 0
        weights = (
            models
            / "pasd"
            / "pasd"
            / "checkpoint-100000"
            / "controlnet"
            / "diffusion_pytorch_model.safetensors"
        )
        weights.write_bytes(weights.read_bytes()[:100])  # a truncated file
        listing = cli(hub, "models", "--models", str(models))
        assert listing.returncode == 0
        repaired = cli(hub, "download", "pasd", "--quiet", "--models", str(models))
        assert repaired.returncode == 0, repaired.stderr
        assert cli(hub, "inspect", "pasd", "--models", str(models)).returncode == 0
