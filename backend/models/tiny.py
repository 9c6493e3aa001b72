"""Tiny PASD model folders with seeded random weights, in exactly the official layout.

Real weights can never be downloaded on the machines that build and test this project, so tests
and self-checks run on these: same folder layout, file names, config keys and state-dict key names
as the official checkpoints (``unet/``, ``controlnet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), only with tiny widths. Everything is written locally, including a
small byte-level BPE vocabulary for the CLIP tokenizer.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .manifest import MANIFEST_NAME, ModelManifest, write_manifest
from .pasd import PasdControlNetModel, PasdUNet2DConditionModel
from .pasd.configs import pasd_sdxl_controlnet_config, pasd_sdxl_unet_config, sd15_controlnet_config
from .sd15 import SD15_UNET_CONFIG

TinyVariant = Literal["full", "light", "color", "sdxl"]
TINY_VARIANTS: tuple[TinyVariant, ...] = ("full", "light", "color", "sdxl")

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.29.2"  # the version the official PASD configs were written with

# Shaped like SD1.5 (4 levels, 2 layers per block, 12 + 1 ControlNet residuals, cross attention in
# the top three levels), only narrow.
TINY_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "_diffusers_version": DIFFUSERS_VERSION,
    "attention_head_dim": 2,
    "block_out_channels": [8, 16, 16, 16],
    "cross_attention_dim": 32,
    "norm_num_groups": 4,
    "sample_size": 8,
}

TINY_CONDITIONING_CHANNELS = [4, 8, 8, 16]

# Shaped like SDXL (3 levels, cross attention in the lower two, deeper transformers lower down,
# "text_time" added embeddings from the pooled text and six size ids), only narrow. The pooled text
# is TINY_SDXL_POOLED_DIM wide: 6 · 8 + 16 = 64 inputs to the added-embedding projection.
TINY_SDXL_POOLED_DIM = 16
TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
    **pasd_sdxl_unet_config(),
    "_diffusers_version": DIFFUSERS_VERSION,
    "addition_time_embed_dim": 8,
    "attention_head_dim": [2, 4, 4],
    "block_out_channels": [8, 16, 16],
    "cross_attention_dim": 32,
    "norm_num_groups": 4,
    "projection_class_embeddings_input_dim": 6 * 8 + TINY_SDXL_POOLED_DIM,
    "sample_size": 8,
    "transformer_layers_per_block": [1, 2, 3],
}

_PROMPT_WORDS = (
    "a",
    "photo",
    "of",
    "the",
    "old",
    "man",
    "woman",
    "child",
    "dog",
    "cat",
    "house",
    "tree",
    "sky",
    "face",
    "portrait",
    "building",
    "street",
    "clean",
    "high",
    "resolution",
    "8k",
    "detailed",
    "sharp",
    "blurry",
    "dotted",
    "noise",
    "raster",
    "lines",
    "unclear",
    "lowres",
    "over",
    "smoothed",
    "colorful",
    "vivid",
    "natural",
    "color",
    "black",
    "white",
)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table (the BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def write_tokenizer(folder: Path, max_length: int = 77, pad_token: str = "<|endoftext|>") -> int:
    """Write a small CLIP BPE tokenizer (vocab.json, merges.txt, configs); returns the vocab size.

    SDXL's second tokenizer pads with ``!`` instead of the end token (``pad_token``)."""
    alphabet = sorted(set(_bytes_to_unicode().values()))
    vocab: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    # Learn merges until every prompt word is one token under real BPE rank order.
    for word in dict.fromkeys(_PROMPT_WORDS):
        while len(pieces := _bpe(word, merges)) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.append(pieces[0] + pieces[1])
    vocab = [*dict.fromkeys(vocab), "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "do_lower_case": True,
                "errors": "replace",
                "add_prefix_space": False,
                **special,
            },
            indent=2,
        )
    )
    return len(vocab)


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """Split ``word`` the way a BPE tokenizer with ``merges`` (in rank order) does."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _write_component(folder: Path, config: dict[str, Any], model: torch.nn.Module) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / SAFETENSORS_NAME), metadata={"format": "pt"})


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded non-zero weights everywhere (the zero convolutions too), so every path is exercised."""
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=generator) / max(fan_in, 1) ** 0.5)


def tiny_unet_config() -> dict[str, Any]:
    return json.loads(json.dumps(TINY_UNET_CONFIG))


def tiny_controlnet_config(use_rrdb: bool = False) -> dict[str, Any]:
    """The ControlNet that matches the tiny UNet, with PASD's config keys."""
    cfg = sd15_controlnet_config(use_rrdb)
    cfg.update({k: TINY_UNET_CONFIG[k] for k in cfg if k in TINY_UNET_CONFIG and not k.startswith("_class")})
    cfg["conditioning_embedding_out_channels"] = TINY_CONDITIONING_CHANNELS
    cfg["_diffusers_version"] = DIFFUSERS_VERSION
    return cfg


def tiny_sdxl_unet_config() -> dict[str, Any]:
    return json.loads(json.dumps(TINY_SDXL_UNET_CONFIG))


def tiny_sdxl_controlnet_config() -> dict[str, Any]:
    """The ControlNet that matches the tiny SDXL UNet, with PASD-SDXL's config keys."""
    cfg = pasd_sdxl_controlnet_config()
    cfg.update(
        {
            k: TINY_SDXL_UNET_CONFIG[k]
            for k in cfg
            if k in TINY_SDXL_UNET_CONFIG and not k.startswith("_class")
        }
    )
    cfg["conditioning_embedding_out_channels"] = TINY_CONDITIONING_CHANNELS
    cfg["_diffusers_version"] = DIFFUSERS_VERSION
    return cfg


def tiny_vae_config() -> dict[str, Any]:
    """The SD VAE layout (×8 down, GroupNorm, mid-block attention) at tiny widths."""
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )


def _save_text_encoder(folder: Path, model: CLIPTextModel | CLIPTextModelWithProjection) -> None:
    """``save_pretrained``, with the official key names: SD1.5's and SDXL's ``model.safetensors`` (and
    transformers 4, which the reference pins) have ``text_model.``-prefixed keys and, with a projection,
    a top-level ``text_projection.weight``; transformers 5 writes CLIPTextModel's without the prefix and
    reads both, transformers 4 would silently leave the weights random."""
    model.save_pretrained(str(folder))
    path = folder / "model.safetensors"
    state = load_file(str(path))
    official = {
        k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
        for k, v in state.items()
    }
    if official.keys() != state.keys():
        save_file(official, str(path), metadata={"format": "pt"})


def write_pasd_components(folder: Path, variant: Literal["full", "light"], use_rrdb: bool, seed: int) -> None:
    """``unet/`` and ``controlnet/`` of a tiny PASD checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    unet_cfg = tiny_unet_config()
    unet = PasdUNet2DConditionModel.from_config(unet_cfg, pasd_variant=variant)
    _randomize(unet, gen)
    _write_component(folder / "unet", unet_cfg, unet)
    cn_cfg = tiny_controlnet_config(use_rrdb)
    controlnet = PasdControlNetModel.from_config(cn_cfg)
    _randomize(controlnet, gen)
    _write_component(folder / "controlnet", cn_cfg, controlnet)


def write_pasd_sdxl_components(folder: Path, seed: int) -> None:
    """``unet/`` and ``controlnet/`` of a tiny PASD-SDXL checkpoint (the full classes, as released)."""
    gen = torch.Generator().manual_seed(seed)
    unet_cfg = tiny_sdxl_unet_config()
    unet = PasdUNet2DConditionModel.from_config(unet_cfg, pasd_variant="full")
    _randomize(unet, gen)
    _write_component(folder / "unet", unet_cfg, unet)
    cn_cfg = tiny_sdxl_controlnet_config()
    controlnet = PasdControlNetModel.from_config(cn_cfg)
    _randomize(controlnet, gen)
    _write_component(folder / "controlnet", cn_cfg, controlnet)


def _text_config(
    vocab_size: int, tokenizer: CLIPTokenizer, hidden: int, act: str, projection: int
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
    )


def write_tiny_sdxl_base(root: Path, seed: int) -> None:
    """SDXL base's components at tiny widths, in its layout: ``text_encoder/`` (CLIP-L, the penultimate
    layer is used), ``text_encoder_2/`` (bigG with its projection: the pooled text), both tokenizers
    (the second pads with ``!``), ``vae/`` (SDXL's scaling factor) and ``scheduler/`` (SDXL base's Euler)."""
    gen = torch.Generator().manual_seed(seed)
    vocab_size = write_tokenizer(root / "tokenizer")
    write_tokenizer(root / "tokenizer_2", pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    half = TINY_SDXL_UNET_CONFIG["cross_attention_dim"] // 2
    first = CLIPTextModel(_text_config(vocab_size, tokenizer, half, "quick_gelu", half))
    _randomize(first, gen)
    _save_text_encoder(root / "text_encoder", first)
    second_cfg = _text_config(vocab_size, tokenizer, half, "gelu", TINY_SDXL_POOLED_DIM)
    second = CLIPTextModelWithProjection(second_cfg)
    _randomize(second, gen)
    _save_text_encoder(root / "text_encoder_2", second)
    vae = AutoencoderKL(**tiny_vae_config(), scaling_factor=0.13025, force_upcast=True)
    _randomize(vae, gen)
    vae.save_pretrained(str(root / "vae"))
    # stabilityai/stable-diffusion-xl-base-1.0's scheduler_config.json
    EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        interpolation_type="linear",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    ).save_pretrained(str(root / "scheduler"))


def write_tiny_model(
    folder: str | Path, variant: TinyVariant = "full", seed: int = 0, use_rrdb: bool = False
) -> Path:
    """Write a complete tiny model folder; ``color`` is PASD-light with a zero-terminal-SNR, v-prediction
    scheduler (the colour model's)."""
    if variant not in TINY_VARIANTS:
        raise ValueError(f"variant must be one of {TINY_VARIANTS}, not {variant!r}")
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if variant == "sdxl":
        write_pasd_sdxl_components(root, seed)
        write_tiny_sdxl_base(root, seed + 1)
        write_manifest(
            root,
            ModelManifest(
                id=root.name,
                variant="full",
                tasks=("upscale",),
                family="pasd-sdxl",
                description="Tiny random-weight PASD-SDXL for tests; draws noise, not pictures.",
                licence="Apache-2.0 (generated locally)",
                tiny=True,
            ),
        )
        return root
    arch: Literal["full", "light"] = "full" if variant == "full" else "light"
    write_pasd_components(root, arch, use_rrdb, seed)
    gen = torch.Generator().manual_seed(seed + 1)

    vocab_size = write_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    text_encoder = CLIPTextModel(_text_config(vocab_size, tokenizer, 32, "quick_gelu", 32))
    _randomize(text_encoder, gen)
    _save_text_encoder(root / "text_encoder", text_encoder)

    vae = AutoencoderKL(**tiny_vae_config())
    _randomize(vae, gen)
    vae.save_pretrained(str(root / "vae"))

    if variant == "color":
        scheduler = DDPMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",  # as the colour model is trained and run (PASD #37)
            timestep_spacing="trailing",
            clip_sample=False,
            steps_offset=1,
        )
    else:
        scheduler = UniPCMultistepScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
        )
    scheduler.save_pretrained(str(root / "scheduler"))

    write_manifest(
        root,
        ModelManifest(
            id=root.name,
            variant=arch,
            tasks=("colorize",) if variant == "color" else ("upscale",),
            description=f"Tiny random-weight PASD ({variant}) for tests; draws noise, not pictures.",
            licence="Apache-2.0 (generated locally)",
            tiny=True,
            use_rrdb=use_rrdb,
        ),
    )
    return root


def write_tiny_modelscope(
    folder: str | Path,
    version: Literal["pasd", "pasd_v2"] = "pasd_v2",
    seed: int = 0,
    checkpoint: bool = True,
) -> Path:
    """A tiny ModelScope PASD snapshot: the component folders side by side, ``configuration.json``
    (``pipeline.version``, ``model_cfg``), a personalized single-file checkpoint (SD1.5 keys) named by
    ``model_cfg.dreambooth_lora_ckpt``, and RetinaFace's weights file (which we never read: faces are
    found by ``backend.faces``). v1 (``"pasd"``) has PASD-light's classes, v2 full PASD's."""
    from .pasd.tiny_style import ldm_checkpoint, tiny_style_components, write_checkpoint

    root = write_tiny_model(folder, "light" if version == "pasd" else "full", seed)
    (root / MANIFEST_NAME).unlink()  # ModelScope's folder has none: configuration.json says it all
    model_cfg: dict[str, Any] = {"tiled_size": 224, "process_size": 768}
    if checkpoint:
        state = ldm_checkpoint(*tiny_style_components(root, seed + 10))
        write_checkpoint(root / "majicmixRealistic_v6.safetensors", state)
        model_cfg["dreambooth_lora_ckpt"] = "majicmixRealistic_v6.safetensors"
    config = {
        "framework": "pytorch",
        "task": "image-super-resolution-pasd",
        "pipeline": {"type": "image-super-resolution-pasd", "version": version},
        "model": {"type": "image-super-resolution-pasd"},
        "model_cfg": model_cfg,
    }
    (root / "configuration.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (root / "feature_extractor").mkdir(exist_ok=True)
    (root / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                    "feature_extractor_type": "CLIPFeatureExtractor", "size": 224}, indent=2) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    torch.save({"conv.weight": torch.zeros(1)}, root / "RetinaFace-R50.pth")
    return root
