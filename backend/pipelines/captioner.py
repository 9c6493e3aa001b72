"""Automatic prompt words: a BLIP caption of the input picture, or its ImageNet category.

PASD's text conditioning works best when the prompt names what is in the picture; a caption
gives those words without asking the user. ModelScope's PASD pipeline gets them another way: an
ImageNet ResNet-50 names the picture's category when its top-1 probability reaches 0.1, and
:class:`Classifier` does the same, so either source can be chosen (:data:`WordSource`). Both models
are optional: when their weights (registry entries ``blip``, ``resnet50-classifier``) are not
installed, the ``find_*`` functions return ``None`` and the feature is simply off. Nothing here
touches the network.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from transformers import (
        BaseImageProcessor,
        BlipForConditionalGeneration,
        BlipProcessor,
        PreTrainedModel,
    )

log = logging.getLogger(__name__)

CAPTION_MODEL_ID = "blip"
CLASSIFIER_MODEL_ID = "resnet50-classifier"
CLASSIFY_THRESHOLD = 0.1  # ModelScope's PASD adds the category from this top-1 probability up
MAX_WORDS = 20
MAX_NEW_TOKENS = 30
_PREVIEW_SIDE = 768  # the processor resizes to 384; shrinking first spares it a huge PIL image

# BLIP's well-known artefacts ("arafed", "araffe", ...) and openers that carry no content.
_NONSENSE = re.compile(r"^araf+\w*$")
_OPENERS = (
    "there is",
    "there are",
    "a picture of",
    "a photo of",
    "an image of",
    "a close up of",
)
_MAX_LOOP = 4  # longest repeated phrase folded ("a man with a man with" → "a man with")

ImageLike = torch.Tensor | Image.Image | np.ndarray
WordSource = Literal["caption", "classify"]
WORD_SOURCES: tuple[WordSource, ...] = ("caption", "classify")
# The registry entry each source needs, for "not installed" notes.
SOURCE_MODEL_IDS: dict[WordSource, str] = {"caption": CAPTION_MODEL_ID, "classify": CLASSIFIER_MODEL_ID}


def clean_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """Lower-case words only: no punctuation, no BLIP filler, no looping repeats, at most ``max_words``."""
    text = re.sub(r"[^a-z0-9'\- ]+", " ", text.lower())
    words = [w.strip("'-") for w in text.split()]
    words = [w for w in words if w and not _NONSENSE.match(w)]
    for opener in _OPENERS:
        lead = opener.split()
        if words[: len(lead)] == lead and len(words) > len(lead):
            words = words[len(lead) :]
            break
    words = _fold_repeats(words)
    return " ".join(words[:max_words])


def _fold_repeats(words: list[str]) -> list[str]:
    """Drop a phrase of 1…4 words that directly repeats the one before it (greedy decoding loops)."""
    out: list[str] = []
    for word in words:
        out.append(word)
        for n in range(1, _MAX_LOOP + 1):
            if len(out) >= 2 * n and out[-n:] == out[-2 * n : -n]:
                del out[-n:]
                break
    return out


def clean_label(label: str, max_words: int = MAX_WORDS) -> str:
    """An ImageNet category ("tabby, tabby cat") as prompt words: its first synonym, cleaned."""
    return clean_caption(label.split(",")[0], max_words)


def _to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image no larger than ``_PREVIEW_SIDE`` from a tensor, an array or a PIL image.

    Float pixels are read in [0, 1]; integer arrays (8 or 16 bits) over their type's full range.
    """
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        pil.thumbnail((_PREVIEW_SIDE, _PREVIEW_SIDE), Image.Resampling.BICUBIC)
        return pil
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32)
        if np.issubdtype(image.dtype, np.integer):
            array /= np.iinfo(image.dtype).max
        if array.ndim == 2:
            array = array[:, :, None]
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    else:
        x = image.detach().to("cpu", torch.float32)
        if x.ndim == 3:
            x = x[None]
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 2, 3, 4):
        raise ValueError(f"expected one image [1, C, H, W] (C = 1…4), got shape {tuple(x.shape)}")
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)  # drop alpha, grey → RGB
    height, width = x.shape[-2:]
    shrink = _PREVIEW_SIDE / max(height, width)
    if shrink < 1:
        size = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def _load_pretrained(
    folder: str | Path,
    processor_class: type,
    model_class: type,
    device: torch.device | str,
    dtype: torch.dtype,
) -> tuple[Any, Any]:
    """``(model, processor)`` from an official-layout folder, local files only, on ``device``."""
    folder = str(Path(folder).expanduser())
    processor = processor_class.from_pretrained(folder, local_files_only=True)
    model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.to(device), processor


class _PictureModel:
    """What both describers share: a model in eval mode and the pixel batch its processor makes."""

    model: PreTrainedModel
    processor: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _pixels(self, image: ImageLike) -> torch.Tensor:
        inputs = self.processor(images=_to_pil(image), return_tensors="pt")
        return inputs["pixel_values"].to(self.device, self.dtype)


class Captioner(_PictureModel):
    """A loaded BLIP captioner; ``describe`` turns a picture into a few prompt words."""

    def __init__(
        self,
        model: BlipForConditionalGeneration,
        processor: BlipProcessor,
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_words: int = MAX_WORDS,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.max_words = max_words

    @classmethod
    def load(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Captioner:
        """Load an official-layout BLIP folder (local files only)."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        return cls(*_load_pretrained(folder, BlipProcessor, BlipForConditionalGeneration, device, dtype))

    @torch.inference_mode()
    def describe(self, image: ImageLike) -> str:
        """Greedy caption of ``image`` ([1, 3, H, W] in [0, 1], an array or PIL), cleaned to prompt words."""
        ids = self.model.generate(
            pixel_values=self._pixels(image), max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
        )
        text = self.processor.decode(ids[0], skip_special_tokens=True)
        return clean_caption(text, self.max_words)


class Classifier(_PictureModel):
    """A loaded ImageNet classifier; ``describe`` names the picture's category, as ModelScope's PASD does,
    only when the top-1 probability reaches ``threshold`` (a wrong category would mislead the prompt)."""

    def __init__(
        self,
        model: PreTrainedModel,
        processor: BaseImageProcessor,
        threshold: float = CLASSIFY_THRESHOLD,
        max_words: int = MAX_WORDS,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.threshold = threshold
        self.max_words = max_words

    @classmethod
    def load(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Classifier:
        """Load an official-layout image-classification folder such as ``microsoft/resnet-50``."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        return cls(
            *_load_pretrained(folder, AutoImageProcessor, AutoModelForImageClassification, device, dtype)
        )

    @torch.inference_mode()
    def classify(self, image: ImageLike) -> tuple[str, float]:
        """The top-1 category as the model names it ("tabby, tabby cat") and its softmax probability."""
        logits = self.model(pixel_values=self._pixels(image)).logits
        probability, index = logits[0].float().softmax(-1).max(-1)
        return str(self.model.config.id2label[int(index)]), float(probability)

    def describe(self, image: ImageLike) -> str:
        """The category as prompt words ("tabby"), or "" when the classifier is not sure enough."""
        label, probability = self.classify(image)
        return clean_label(label, self.max_words) if probability >= self.threshold else ""


Describer = Captioner | Classifier
_Found = TypeVar("_Found", Captioner, Classifier)


def _find(
    model_id: str,
    load: Callable[[Path, torch.device | str, torch.dtype], _Found],
    what: str,
    models_dir: str | Path | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> _Found | None:
    """The installed model ``model_id`` loaded by ``load``, or ``None`` when absent or unreadable."""
    try:
        from ..models.registry import get_spec
        from ..models.store import _models_dir, missing_files

        folder = _models_dir(models_dir) / model_id
        if not folder.is_dir():
            return None
        missing = missing_files(get_spec(model_id), folder)
        if missing:  # a partial download or a cut file: say so, since the folder is there
            log.warning(
                "Automatic prompt words are off: the %s in %s lacks or has damaged files: %s",
                what,
                folder,
                ", ".join(missing),
            )
            return None
        return load(folder, device, dtype)
    except Exception as exc:  # a damaged folder turns the feature off, it does not stop the run
        log.warning("Automatic prompt words are off: the %s could not be loaded (%s)", what, exc)
        return None


def find_captioner(
    models_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Captioner | None:
    """The installed captioner, or ``None`` when it is absent or unreadable (never raises)."""
    return _find(CAPTION_MODEL_ID, Captioner.load, "captioner", models_dir, device, dtype)


def find_classifier(
    models_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Classifier | None:
    """The installed ImageNet classifier, or ``None`` when it is absent or unreadable (never raises)."""
    return _find(CLASSIFIER_MODEL_ID, Classifier.load, "classifier", models_dir, device, dtype)


def find_describer(
    source: WordSource,
    models_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Describer | None:
    """The installed model for ``source`` ("caption": BLIP, "classify": ResNet-50), or ``None``."""
    if source == "caption":
        return find_captioner(models_dir, device, dtype)
    if source == "classify":
        return find_classifier(models_dir, device, dtype)
    raise ValueError(f"unknown source of prompt words {source!r}; expected one of {WORD_SOURCES}")
