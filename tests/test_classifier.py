"""Classification prompt words (ModelScope's PASD way): a tiny ResNet in the official layout, the
threshold on both sides, the image inputs, and the optional lookup."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from backend.models.registry import REGISTRY
from backend.models.store import missing_files
from backend.models.tiny_blip import write_tiny_blip
from backend.models.tiny_classifier import (
    RESNET_PREPROCESSOR_CONFIG,
    TINY_IMAGENET_LABELS,
    label_index,
    write_tiny_classifier,
)
from backend.pipelines.captioner import (
    CLASSIFIER_MODEL_ID,
    CLASSIFY_THRESHOLD,
    SOURCE_MODEL_IDS,
    WORD_SOURCES,
    Captioner,
    Classifier,
    clean_label,
    find_classifier,
    find_describer,
)

CLASSIFIER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# microsoft/resnet-50's config.json keys, no more and no fewer.
OFFICIAL_CONFIG_KEYS = {
    "architectures",
    "depths",
    "downsample_in_first_stage",
    "embedding_size",
    "hidden_act",
    "hidden_sizes",
    "id2label",
    "label2id",
    "layer_type",
    "model_type",
    "num_channels",
    "torch_dtype",
    "transformers_version",
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the classifier installed, sure the picture is a tabby."""
    root = tmp_path_factory.mktemp("models")
    write_tiny_classifier(root / CLASSIFIER_MODEL_ID, seed=0, sure_of="tabby")
    return root


@pytest.fixture(scope="module")
def sure_folder(models_dir: Path) -> Path:
    return models_dir / CLASSIFIER_MODEL_ID


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """Random seeded head: the answer depends on the pixels."""
    return Classifier.load(write_tiny_classifier(tmp_path_factory.mktemp("seeded") / "clf", seed=1))


def _picture(seed: int = 3, height: int = 300, width: int = 200) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_registry_entry() -> None:
    spec = REGISTRY[CLASSIFIER_MODEL_ID]
    assert spec.repo == "microsoft/resnet-50" and spec.files == CLASSIFIER_FILES
    assert SOURCE_MODEL_IDS == {"caption": "blip", "classify": CLASSIFIER_MODEL_ID}
    assert WORD_SOURCES == ("caption", "classify")


def test_tiny_classifier_has_the_official_layout(sure_folder: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ResNetForImageClassification

    assert sorted(p.name for p in sure_folder.iterdir()) == sorted(CLASSIFIER_FILES)
    assert missing_files(REGISTRY[CLASSIFIER_MODEL_ID], sure_folder) == []
    config = json.loads((sure_folder / "config.json").read_text())
    assert set(config) == OFFICIAL_CONFIG_KEYS
    assert config["architectures"] == ["ResNetForImageClassification"] and config["model_type"] == "resnet"
    assert config["layer_type"] == "bottleneck" and config["id2label"]["3"] == "tabby, tabby cat"
    assert json.loads((sure_folder / "preprocessor_config.json").read_text()) == RESNET_PREPROCESSOR_CONFIG
    with safe_open(str(sure_folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"resnet.embedder.embedder.convolution.weight", "classifier.1.weight", "classifier.1.bias"} <= keys
    assert {k.split(".")[0] for k in keys} == {"resnet", "classifier"}

    processor = AutoImageProcessor.from_pretrained(sure_folder, local_files_only=True)
    assert type(processor).__name__.startswith("ConvNextImageProcessor")
    assert processor.crop_pct == 0.875 and processor.size == {"shortest_edge": 224}
    pixels = processor(images=Image.new("RGB", (500, 300)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    model = AutoModelForImageClassification.from_pretrained(sure_folder, local_files_only=True)
    assert isinstance(model, ResNetForImageClassification)
    assert model.config.num_labels == len(TINY_IMAGENET_LABELS) >= 11


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("tabby, tabby cat", "tabby"),
        ("African elephant, Loxodonta africana", "african elephant"),
        ("jack-o'-lantern", "jack-o'-lantern"),
        ("T-shirt, tee shirt", "t-shirt"),
        ("Granny Smith", "granny smith"),
        ("volcano", "volcano"),
    ],
)
def test_clean_label(label: str, words: str) -> None:
    assert clean_label(label) == words


def test_sure_gives_the_label_words(sure_folder: Path) -> None:
    classifier = Classifier.load(sure_folder)
    label, probability = classifier.classify(_picture())
    assert label == "tabby, tabby cat" and probability > 0.99
    assert classifier.describe(_picture()) == "tabby"


@pytest.mark.parametrize("label", ["jack-o'-lantern", "Granny Smith"])
def test_sure_of_other_labels(tmp_path: Path, label: str) -> None:
    classifier = Classifier.load(write_tiny_classifier(tmp_path / "clf", sure_of=label))
    assert classifier.classify(_picture())[0] == TINY_IMAGENET_LABELS[label_index(label)]
    assert classifier.describe(_picture()) == clean_label(label)


def test_unsure_gives_nothing(tmp_path: Path) -> None:
    classifier = Classifier.load(write_tiny_classifier(tmp_path / "clf", unsure=True))
    label, probability = classifier.classify(_picture())
    assert label in TINY_IMAGENET_LABELS
    assert probability == pytest.approx(1 / len(TINY_IMAGENET_LABELS)) and probability < CLASSIFY_THRESHOLD
    assert classifier.describe(_picture()) == ""


def test_threshold_is_inclusive(seeded: Classifier) -> None:
    label, probability = seeded.classify(_picture())
    assert seeded.threshold == CLASSIFY_THRESHOLD == 0.1
    try:
        seeded.threshold = probability
        assert seeded.describe(_picture()) == clean_label(label)
        seeded.threshold = probability + 1e-4
        assert seeded.describe(_picture()) == ""
    finally:
        seeded.threshold = CLASSIFY_THRESHOLD


def test_tiny_classifier_writer_rejects_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        write_tiny_classifier(tmp_path / "a", sure_of="zebra", unsure=True)
    with pytest.raises(ValueError, match="not one of"):
        write_tiny_classifier(tmp_path / "b", sure_of="platypus")


def test_inputs_of_every_kind_agree(seeded: Classifier) -> None:
    image = _picture(5, 90, 120)
    pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    label, probability = seeded.classify(image)
    for same in (pixels, Image.fromarray(pixels), image[0], pixels.astype(np.float64) / 255):
        other, p = seeded.classify(same)
        assert other == label and p == pytest.approx(probability, abs=1e-5)
    # 16-bit pictures: integer arrays over their full range, half-precision or 16-bit-quantised floats.
    sixteen = pixels.astype(np.uint16) * 257
    assert seeded.classify(sixteen)[0] == label
    assert seeded.classify(torch.from_numpy(sixteen / 65535.0).permute(2, 0, 1)[None].half())[0] == label
    quantised = np.round(np.random.default_rng(0).random((70, 50, 3)) * 65535) / 65535
    assert isinstance(seeded.describe(quantised.astype(np.float32)), str)
    assert isinstance(seeded.describe(torch.rand(1, 4, 64, 48)), str)  # alpha dropped
    assert isinstance(seeded.describe(np.random.rand(40, 30).astype(np.float32)), str)  # grey
    assert seeded.describe(_picture(7, 1500, 900)) in {"", *map(clean_label, TINY_IMAGENET_LABELS)}
    with pytest.raises(ValueError, match="one image"):
        seeded.classify(torch.rand(2, 3, 8, 8))


def test_find_classifier_is_off_when_absent_or_damaged(
    tmp_path: Path, sure_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backend.pipelines.captioner")
    assert find_classifier(tmp_path) is None  # nothing installed: no error, no network, no warning
    assert not caplog.records
    damaged = tmp_path / CLASSIFIER_MODEL_ID
    shutil.copytree(sure_folder, damaged)
    weights = damaged / "model.safetensors"
    data = weights.read_bytes()
    for cut in (data[:64], data[: len(data) - 256]):  # the header cut; the tensors cut short
        caplog.clear()
        weights.write_bytes(cut)
        assert find_classifier(tmp_path) is None
        assert "lacks or has damaged files: model.safetensors" in caplog.text
    weights.unlink()
    assert find_classifier(tmp_path) is None
    weights.write_bytes(data)
    (damaged / "config.json").write_text("{not json")
    caplog.clear()
    assert find_classifier(tmp_path) is None  # unreadable: off with a warning, never raises
    assert "classifier could not be loaded" in caplog.text


def test_find_classifier_in_the_models_folder(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GDU_MODELS_DIR", str(models_dir))
    found = find_classifier()
    assert isinstance(found, Classifier) and found.describe(_picture()) == "tabby"
    half = find_classifier(models_dir, dtype=torch.bfloat16)
    assert half is not None and half.dtype == torch.bfloat16
    assert half.describe(_picture()) == "tabby"


def test_find_describer_picks_by_source(tmp_path: Path, sure_folder: Path) -> None:
    assert find_describer("caption", tmp_path) is None and find_describer("classify", tmp_path) is None
    shutil.copytree(sure_folder, tmp_path / CLASSIFIER_MODEL_ID)
    assert isinstance(find_describer("classify", tmp_path), Classifier)
    assert find_describer("caption", tmp_path) is None  # one source installed says nothing of the other
    write_tiny_blip(tmp_path / SOURCE_MODEL_IDS["caption"], seed=0)
    assert isinstance(find_describer("caption", tmp_path), Captioner)
    with pytest.raises(ValueError, match="unknown source"):
        find_describer("tags", tmp_path)  # type: ignore[arg-type]


def test_engine_adds_class_words_as_modelscope_does(tmp_path: Path, one_thread: None) -> None:
    """Through the engine and the CLI: the class joins the prompt when sure, a note says why not otherwise."""
    from backend.engine import Engine
    from backend.models.tiny import write_tiny_model
    from backend.pipelines.params import RestoreParams

    models = tmp_path / "models"
    write_tiny_model(models / "tiny-full", "full", seed=1)
    img = (np.random.default_rng(2).random((32, 40, 3)) * 255).astype(np.uint8)
    params = RestoreParams(steps=1, seed=1, scale=1.0, process_size=256, prompt="old photo", auto_prompt=True,
                           auto_prompt_source="classify")  # fmt: skip
    engine = Engine(models, device="cpu")
    missing = engine.restore(img, params, model="tiny-full")
    assert "its model (resnet50-classifier) is not installed" in " ".join(missing.notes)
    write_tiny_classifier(models / CLASSIFIER_MODEL_ID, sure_of="tabby")
    sure = engine.restore(img, params, model="tiny-full")  # installed later: taken up at once
    assert sure.prompt.startswith("old photo, tabby, ")
    unsure_models = tmp_path / "unsure"
    write_tiny_model(unsure_models / "tiny-full", "full", seed=1)
    write_tiny_classifier(unsure_models / CLASSIFIER_MODEL_ID, unsure=True)
    unsure = Engine(unsure_models, device="cpu").restore(img, params, model="tiny-full")
    assert unsure.prompt.startswith("old photo, clean")
    assert any(n.startswith("no class words: the classifier is not sure") for n in unsure.notes)
