"""Automatic prompt words: a tiny BLIP in the official layout, the cleaning, and the optional lookup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from backend.models.manifest import MANIFEST_NAME
from backend.models.registry import REGISTRY, with_requirements
from backend.models.store import missing_files
from backend.models.tiny_blip import write_blip_vocab, write_tiny_blip
from backend.pipelines.captioner import Captioner, clean_caption, find_captioner

from .conftest import run_backend
from .fake_hub import FakeHub

BLIP_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("models") / "blip", seed=0)


@pytest.fixture(scope="module")
def captioner(tiny_blip: Path) -> Captioner:
    return Captioner.load(tiny_blip)


def test_registry_entry() -> None:
    spec = REGISTRY["blip"]
    assert spec.repo == "Salesforce/blip-image-captioning-base"
    assert spec.files == BLIP_FILES
    assert spec.tasks == ("caption",) and spec.variant is None and spec.requires == ()
    assert "BSD-3-Clause" in spec.licence
    assert 0.95e9 < spec.size_bytes < 1.0e9
    assert [s.id for s in with_requirements("blip")] == ["blip"]


def test_tiny_blip_has_the_official_layout(tiny_blip: Path) -> None:
    from transformers import BertTokenizer, BlipForConditionalGeneration, BlipProcessor

    assert sorted(p.name for p in tiny_blip.iterdir()) == sorted(BLIP_FILES)
    assert missing_files(REGISTRY["blip"], tiny_blip) == []
    config = json.loads((tiny_blip / "config.json").read_text())
    assert config["architectures"] == ["BlipForConditionalGeneration"] and config["model_type"] == "blip"
    with safe_open(str(tiny_blip / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "vision_model.embeddings.patch_embedding.weight" in keys
    assert "text_decoder.bert.embeddings.word_embeddings.weight" in keys
    assert {k.split(".")[0] for k in keys} == {"vision_model", "text_decoder"}

    processor = BlipProcessor.from_pretrained(tiny_blip)
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip)
    assert isinstance(processor.tokenizer, BertTokenizer)
    vocab = write_blip_vocab(tiny_blip.parent / "vocab-again.txt")
    assert processor.tokenizer.bos_token == "[DEC]" and processor.tokenizer.bos_token_id == len(vocab)
    assert model.config.text_config.bos_token_id == processor.tokenizer.bos_token_id
    assert model.config.text_config.sep_token_id == processor.tokenizer.sep_token_id
    assert processor.tokenizer.decode(processor.tokenizer("a dog on the grass")["input_ids"][1:-1]) == (
        "a dog on the grass"
    )


def test_describe_gives_clean_words(captioner: Captioner, tiny_blip: Path) -> None:
    vocab = set((tiny_blip / "vocab.txt").read_text().split())
    image = torch.rand(1, 3, 900, 700, generator=torch.Generator().manual_seed(3))
    words = captioner.describe(image)
    assert words and words == words.strip().lower() and "  " not in words
    assert len(words.split()) <= 20
    assert not set(words.split()) - vocab, words  # real words; no [SEP], [DEC] or ## pieces
    # The same pixels as an array or a PIL image give the same words.
    pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert captioner.describe(pixels) == captioner.describe(Image.fromarray(pixels)) == words
    assert captioner.describe(torch.rand(1, 4, 64, 48)).strip()  # alpha dropped
    assert captioner.describe(np.random.rand(40, 30).astype(np.float32)) is not None  # grey


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("arafed man with a hat", "man with a hat"),
        ("There is a Dog, sitting on the grass.", "a dog sitting on the grass"),
        ("a man with a man with a man with a beard", "a man with a beard"),
        ("snow snow snow snow", "snow"),
        ("a picture of a cat", "a cat"),
        ("  a   red\tcar  ", "a red car"),
        ("a man and a dog", "a man and a dog"),
        ("araffe", ""),
    ],
)
def test_clean_caption(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_clean_caption_caps_words() -> None:
    many = " ".join(f"w{i}" for i in range(40))
    assert clean_caption(many).split() == [f"w{i}" for i in range(20)]


def test_find_captioner_is_off_when_absent(tmp_path: Path, tiny_blip: Path) -> None:
    assert find_captioner(tmp_path) is None  # nothing installed: no error, no network
    damaged = tmp_path / "blip"
    shutil.copytree(tiny_blip, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    assert find_captioner(tmp_path) is None
    (damaged / "model.safetensors").unlink()
    assert find_captioner(tmp_path) is None
    shutil.copy(tiny_blip / "model.safetensors", damaged / "model.safetensors")
    (damaged / "config.json").write_text("{not json")
    assert find_captioner(tmp_path) is None  # unreadable: off with a warning, never raises


def test_find_captioner_in_the_models_folder(
    tiny_blip: Path, captioner: Captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GDU_MODELS_DIR", str(tiny_blip.parent))
    found = find_captioner()
    assert isinstance(found, Captioner)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    assert found.describe(image) == captioner.describe(image)
    assert find_captioner(tiny_blip.parent, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_download_blip_from_the_hub(tmp_path: Path, tiny_blip: Path) -> None:
    """The real download path fetches only the listed files and writes no PASD manifest."""
    repo = tmp_path / "hub" / "blip"
    shutil.copytree(tiny_blip, repo)
    (repo / "pytorch_model.bin").write_bytes(b"the same weights again, never needed")
    (repo / "tf_model.h5").write_bytes(b"never needed")
    models = tmp_path / "models"
    with FakeHub({"Salesforce/blip-image-captioning-base": repo}) as hub:
        result = run_backend(
            "download",
            "blip",
            "--quiet",
            "--models",
            str(models),
            HF_ENDPOINT=hub.url,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
        )
    assert result.returncode == 0, result.stderr
    assert (
        not (models / "blip" / "pytorch_model.bin").exists()
        and not (models / "blip" / "tf_model.h5").exists()
    )
    assert not (models / "blip" / MANIFEST_NAME).exists()
    assert isinstance(find_captioner(models), Captioner)
