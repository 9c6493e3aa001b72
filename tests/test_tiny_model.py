"""``python -m backend tiny-model``: a complete official-layout folder that the real loaders accept."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UniPCMultistepScheduler
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from backend.models.manifest import read_manifest

from .conftest import run_backend

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_backend(*args, HF_HUB_OFFLINE="1")


@pytest.mark.parametrize("variant", ["full", "light", "color"])
def test_cli_writes_a_loadable_model(tmp_path: Path, variant: str) -> None:
    folder = tmp_path / f"tiny-{variant}"
    result = run_cli("tiny-model", str(folder), "--variant", variant, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == [
        "controlnet",
        "pasd_model.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
    for part in ("unet", "controlnet", "vae"):
        assert (folder / part / "diffusion_pytorch_model.safetensors").is_file()
    manifest = read_manifest(folder)
    assert manifest.variant == ("full" if variant == "full" else "light")
    assert manifest.tasks == (("colorize",) if variant == "color" else ("upscale",))

    inspected = run_cli("inspect", str(folder))
    assert inspected.returncode == 0, inspected.stderr
    assert f"PASD-{manifest.variant}" in inspected.stdout

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    # SD1.5's key names, which transformers 4 (the reference's) needs; transformers 5 drops the prefix
    keys = load_file(str(folder / "text_encoder" / "model.safetensors"))
    assert keys and all(k.startswith("text_model.") for k in keys)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    ids = tokenizer(["clean, high-resolution, 8k"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        hidden = text_encoder(ids.input_ids)[0]
    assert hidden.shape == (1, 77, 32)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    assert vae.config.block_out_channels == [8, 16, 16, 16]  # 3 downsamples: latents are 1/8, as in SD
    scheduler_cls = DDPMScheduler if variant == "color" else UniPCMultistepScheduler
    scheduler = scheduler_cls.from_pretrained(folder / "scheduler")
    if variant == "color":  # zero terminal SNR: the last timestep carries no signal at all
        assert scheduler.alphas_cumprod[-1].item() < 1e-6


def test_tokenizer_merges_known_words(tmp_path: Path) -> None:
    from backend.models.tiny import write_tokenizer

    size = write_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert len(vocab) == size and vocab["<|endoftext|>"] == size - 1
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer.tokenize("Clean high resolution") == ["clean</w>", "high</w>", "resolution</w>"]
    # unknown words fall back to byte-level pieces instead of failing
    pieces = tokenizer.tokenize("zebra")
    assert pieces and "".join(pieces).replace("</w>", "") == "zebra"


def test_cli_rejects_bad_variant(tmp_path: Path) -> None:
    result = run_cli("tiny-model", str(tmp_path / "x"), "--variant", "huge")
    assert result.returncode == 2 and "invalid choice" in result.stderr
