"""SDXL's text conditioning: two CLIP encoders read the same prompt; their penultimate layers are
joined along the width (768 + 1280 = 2048 on SDXL base) and the second's projected end token is the
pooled text the UNet adds to its time embedding. Shared by every SDXL-based family."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@dataclass
class SdxlText:
    """Both encoders and tokenizers (``text_encoder``/``tokenizer`` and ``..._2`` in SDXL's layout)."""

    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer

    @classmethod
    def from_folders(cls, folder: dict[str, Path]) -> SdxlText:
        """Load from the four component folders (keys: the component names above)."""
        return cls(
            text_encoder=CLIPTextModel.from_pretrained(str(folder["text_encoder"])),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(str(folder["text_encoder_2"])),
            tokenizer=CLIPTokenizer.from_pretrained(str(folder["tokenizer"])),
            tokenizer_2=CLIPTokenizer.from_pretrained(str(folder["tokenizer_2"])),
        )

    @property
    def encoders(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.text_encoder, self.text_encoder_2

    @property
    def max_tokens(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.tokenizer_2.model_max_length))

    @property
    def pooled_width(self) -> int:
        return int(self.text_encoder_2.config.projection_dim)

    def token_count(self, text: str) -> int:
        return max(len(self.tokenizer(text).input_ids), len(self.tokenizer_2(text).input_ids))

    def encode(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states [B, 77, C₁ + C₂] and pooled text [B, P] for ``texts``, each padded to the
        tokenizer's length and cut there (the second tokenizer pads with its own token)."""
        states = []
        pooled = None
        pairs = ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))
        for tokenizer, encoder in pairs:
            ids = tokenizer(
                texts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
        assert pooled is not None
        return torch.cat(states, dim=-1), pooled


def size_ids(height: int, width: int) -> torch.Tensor:
    """SDXL's six size conditions for an uncropped image generated at its own size:
    original (H, W), crop top-left (0, 0), target (H, W), in pixels."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
