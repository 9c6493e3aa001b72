"""A tiny BLIP captioner folder with seeded random weights, in the official file layout.

The real captioner (``Salesforce/blip-image-captioning-base``) can never be downloaded where this
project is built and tested, so tests run on this one: the same files (``config.json``,
``model.safetensors``, ``preprocessor_config.json``, the BERT tokenizer files), config keys and
state-dict key names, loaded through the same transformers classes, only narrow. The WordPiece
vocabulary is written locally. It captions at random, from that vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
)

from .tiny import _randomize

BLIP_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_DECODER_TOKEN = "[DEC]"  # BLIP's decoder start token, added after the BERT vocabulary
BLIP_ENCODER_TOKEN = "[ENC]"
BLIP_IMAGE_SIZE = 384  # the official processor's size; tiny patches keep the sequence short
_PATCH = 32

_WORD_LINES = """
a an the of in on at with and to for from by over under near behind front next top side inside
outside up down is are there it its his her their this that some two three four many one
man woman men women person people boy girl child children baby family couple group crowd
dog dogs cat cats bird birds horse cow sheep animal animals fish bear elephant giraffe zebra
house houses building buildings church tower bridge road street city town village wall door
window windows roof room kitchen bed table chair chairs couch sofa desk shelf floor ceiling
tree trees forest grass field flower flowers garden park plant plants leaves mountain mountains
hill sky clouds cloud sun sunset sea ocean beach water lake river sand snow rock rocks ice
car cars bus truck train boat boats plane bicycle motorcycle bike wheel
old young little small large big tall long short
black white red blue green yellow brown gray grey orange pink purple dark light bright colorful
photo picture image painting drawing portrait close view face hand hands hair eyes head smile
shirt dress hat coat jacket suit uniform glasses
sitting standing walking running playing holding looking wearing riding lying flying
swimming eating talking posing smiling
vintage black-and-white blurry sharp old-fashioned
food plate cake pizza bowl cup glass bottle book books phone computer clock sign
"""
_WORDS = tuple(_WORD_LINES.split())
_SUFFIXES = ("##s", "##ed", "##ing", "##ly", "##er")


def write_blip_vocab(path: Path) -> list[str]:
    """A BERT WordPiece ``vocab.txt``: the five special tokens, common caption words, a few suffixes."""
    vocab = list(dict.fromkeys((*BLIP_SPECIAL_TOKENS, *_WORDS, *_SUFFIXES)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    return vocab


def write_tiny_blip(folder: str | Path, seed: int = 0) -> Path:
    """Write a loadable tiny ``BlipForConditionalGeneration`` + ``BlipProcessor`` folder."""
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    vocab = write_blip_vocab(root / "vocab.txt")
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=True,
        bos_token=BLIP_DECODER_TOKEN,
        extra_special_tokens=[BLIP_ENCODER_TOKEN],
        model_max_length=512,
    )
    tokenizer.save_pretrained(str(root))  # tokenizer.json, tokenizer_config.json
    special = {
        "bos_token": BLIP_DECODER_TOKEN,
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
        "additional_special_tokens": [BLIP_ENCODER_TOKEN],
    }
    (root / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    # The image processor alone writes the official ``preprocessor_config.json``.
    BlipImageProcessor(size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE}).save_pretrained(str(root))

    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": BLIP_IMAGE_SIZE,
            "patch_size": _PATCH,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    _randomize(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(str(root))  # config.json, model.safetensors
    (root / "generation_config.json").unlink(missing_ok=True)  # not part of the official folder
    return root
