"""Automatic prompt words: a BLIP caption of the input picture.

PASD's text conditioning works best when the prompt names what is in the picture; a caption
gives those words without asking the user. The captioner is optional: when its weights
(registry entry ``blip``) are not installed, :func:`find_captioner` returns ``None`` and the
feature is simply off. Nothing here touches the network.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from transformers import BlipForConditionalGeneration, BlipProcessor

log = logging.getLogger(__name__)

CAPTION_MODEL_ID = "blip"
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


def _to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image no larger than ``_PREVIEW_SIDE`` from a tensor, an array or a PIL image."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        pil.thumbnail((_PREVIEW_SIDE, _PREVIEW_SIDE), Image.Resampling.BICUBIC)
        return pil
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
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


class Captioner:
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

        folder = str(Path(folder).expanduser())
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
        model = BlipForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
        return cls(model.to(device), processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def describe(self, image: ImageLike) -> str:
        """Greedy caption of ``image`` ([1, 3, H, W] in [0, 1], an array or PIL), cleaned to prompt words."""
        inputs = self.processor(images=_to_pil(image), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        ids = self.model.generate(
            pixel_values=pixels, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
        )
        text = self.processor.decode(ids[0], skip_special_tokens=True)
        return clean_caption(text, self.max_words)


def find_captioner(
    models_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Captioner | None:
    """The installed captioner, or ``None`` when it is absent or unreadable (never raises)."""
    try:
        from ..models.registry import get_spec
        from ..models.store import _models_dir, missing_files

        folder = _models_dir(models_dir) / CAPTION_MODEL_ID
        if not folder.is_dir() or missing_files(get_spec(CAPTION_MODEL_ID), folder):
            return None
        return Captioner.load(folder, device, dtype)
    except Exception as exc:  # a damaged folder turns the feature off, it does not stop the run
        log.warning("Automatic prompt words are off: the captioner could not be loaded (%s)", exc)
        return None
