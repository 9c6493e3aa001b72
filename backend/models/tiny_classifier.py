"""A tiny ResNet ImageNet classifier folder with seeded random weights, in the official file layout.

The real classifier (``microsoft/resnet-50``) can never be downloaded where this project is built
and tested, so tests run on this one: the same three files (``config.json``, ``model.safetensors``,
``preprocessor_config.json``), the same config keys and state-dict key names, the same legacy
``ConvNextFeatureExtractor`` preprocessor file, loaded through the same transformers auto classes;
only narrow, and with a dozen real ImageNet labels instead of a thousand. The head can be set so
the model is sure of one label, or equally unsure of all of them, to reach both sides of the
prompt-word threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import ResNetConfig, ResNetForImageClassification

from .tiny import _randomize

# Real ImageNet-1k names (index in the real 1000-class head in the comment); 12 of them, so an
# equally unsure head gives 1/12 < 0.1, below the prompt-word threshold.
TINY_IMAGENET_LABELS: tuple[str, ...] = (
    "tench, Tinca tinca",  # 0
    "goldfish, Carassius auratus",  # 1
    "golden retriever",  # 207
    "tabby, tabby cat",  # 281
    "Egyptian cat",  # 285
    "zebra",  # 340
    "African elephant, Loxodonta africana",  # 386
    "jack-o'-lantern",  # 607
    "T-shirt, tee shirt",  # 610
    "sports car, sport car",  # 817
    "Granny Smith",  # 948
    "volcano",  # 980
)

# The official preprocessor file as it stands in the repository: the old feature-extractor form
# (``size`` a bare number, no ``image_processor_type``), which ``AutoImageProcessor`` must still read.
RESNET_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}

# The official config.json's keys, with tiny widths (the real one: embedding 64, hidden sizes
# 256…2048, depths 3-4-6-3, 1000 labels).
_TINY_WIDTHS: dict[str, Any] = {
    "depths": [1, 1],
    "downsample_in_first_stage": False,
    "embedding_size": 8,
    "hidden_act": "relu",
    "hidden_sizes": [16, 32],
    "layer_type": "bottleneck",
    "num_channels": 3,
}
_OFFICIAL_TRANSFORMERS_VERSION = "4.18.0.dev0"
_NOT_CONFIG_ARGUMENTS = ("architectures", "model_type", "torch_dtype", "transformers_version")
_SURE_LOGIT = 8.0  # softmax ≈ 0.996 for the chosen label against eleven zeros


def resnet_config_dict(labels: tuple[str, ...] = TINY_IMAGENET_LABELS) -> dict[str, Any]:
    """``config.json`` with exactly the official key set."""
    return {
        "architectures": ["ResNetForImageClassification"],
        **_TINY_WIDTHS,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "model_type": "resnet",
        "torch_dtype": "float32",
        "transformers_version": _OFFICIAL_TRANSFORMERS_VERSION,
    }


def label_index(label: str, labels: tuple[str, ...] = TINY_IMAGENET_LABELS) -> int:
    """The index of ``label``, given as its full ImageNet name or its first synonym."""
    for i, name in enumerate(labels):
        if label in (name, name.split(",")[0]):
            return i
    raise ValueError(f"{label!r} is not one of the tiny classifier's labels: {labels}")


def write_tiny_classifier(
    folder: str | Path, seed: int = 0, *, sure_of: str | None = None, unsure: bool = False
) -> Path:
    """Write a loadable tiny ``ResNetForImageClassification`` folder.

    By default the head is seeded at random, so the answer depends on the picture. ``sure_of`` (a
    label) makes it answer that label with probability ≈ 0.996 whatever the picture; ``unsure`` makes
    every label equally likely (1/12), below the prompt-word threshold.
    """
    if sure_of is not None and unsure:
        raise ValueError("a classifier cannot be both sure and unsure")
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    config_dict = resnet_config_dict()
    config = ResNetConfig(
        **{k: v for k, v in config_dict.items() if k not in ("torch_dtype", "architectures")}
    )
    model = ResNetForImageClassification(config).eval()
    _randomize(model, torch.Generator().manual_seed(seed))
    head = model.classifier[1]
    if sure_of is not None or unsure:
        with torch.no_grad():
            head.weight.zero_()  # the picture no longer matters: only the bias speaks
            head.bias.zero_()
            if sure_of is not None:
                head.bias[label_index(sure_of)] = _SURE_LOGIT
    model.save_pretrained(str(root))  # model.safetensors (and a config.json, replaced below)
    (root / "generation_config.json").unlink(missing_ok=True)
    (root / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    (root / "preprocessor_config.json").write_text(json.dumps(RESNET_PREPROCESSOR_CONFIG, indent=2) + "\n")
    return root
