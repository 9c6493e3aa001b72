"""The one registry of models the tool knows how to fetch, and where each one's files live.

PASD checkpoints hold only ``unet/`` and ``controlnet/`` (plus ``scaler.pt``, accelerate's training
state, a pickle that is never fetched); the text encoder, tokenizer, VAE and scheduler come from
Stable Diffusion 1.5 (the ``sd15`` entry), which every PASD entry requires. The colour model is
``pasd_light_color/`` on the hub (``runs/pasd_color`` is only the upstream README's local name) and
brings its own zero-terminal-SNR scheduler. PASD-SDXL (``checkpoint-200000/`` of its own repository)
needs SDXL base's components (``sdxl``) and, for float16 on GPUs, the fp16-fix VAE (``sdxl-vae-fp16``).
Each restoration entry names its family (``FAMILIES``: base components, defaults per task). Sizes are
the float32 safetensors sizes of the listed files (parameters × 4 bytes, rounded). ``blip`` is the
optional captioner that writes automatic prompt words; it stands alone. Standard library only: the
installer reads this file before the backend's environment exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

HF_URL = "https://huggingface.co"
PASD_REPO = "yangtao9009/PASD"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PASD_LICENCE = "Apache-2.0 (PASD code and weights, github.com/yangxy/PASD)"
SD15_LICENCE = "CreativeML OpenRAIL-M (Stable Diffusion 1.5)"
BLIP_REPO = "Salesforce/blip-image-captioning-base"
BLIP_LICENCE = "BSD-3-Clause (BLIP, Salesforce)"
# Optional pieces beside the restoration models (tasks name what they are for, not a restoration task):
# the LCM-LoRA of the fast mode, the ImageNet classifier that gives ModelScope-style prompt words, and
# a personalized SD1.5 checkpoint ("style") as PASD's demo blends it.
LCM_REPO = "latent-consistency/lcm-lora-sdv1-5"
LCM_LICENCE = "CreativeML Open RAIL++-M (LCM-LoRA SD1.5, latent-consistency)"
CLASSIFIER_REPO = "microsoft/resnet-50"
CLASSIFIER_LICENCE = "Apache-2.0 (ResNet-50 ImageNet-1k, Microsoft)"
STYLE_MAJICMIX_REPO = "camenduru/PASD"  # the copy PASD's own demo uses (yangxy's OSS assets)
STYLE_MAJICMIX_LICENCE = "CreativeML OpenRAIL-M (majicMIX realistic v6, by Merjic)"

_UNET_FULL_BYTES = 1_107_755_524 * 4
_UNET_LIGHT_BYTES = 888_218_884 * 4
_CONTROLNET_BYTES = 361_289_497 * 4
_CONTROLNET_RRDB_BYTES = 361_497_337 * 4
_BLIP_BYTES = 247_444_600 * 4  # the official file stores the tied LM head as its own tensor
# PASD-SDXL: parameters of the full-width UNet and ControlNet (tests/fixtures/reference/sdxl_inventory.json)
# × 4 bytes; the hub's dtype is not confirmed, so this is the float32 upper bound.
_SDXL_UNET_BYTES = 3_602_260_164 * 4
_SDXL_CONTROLNET_BYTES = 1_251_024_537 * 4
PASD_SDXL_REPO = "yangtao9009/PASD-SDXL"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_LICENCE = "CreativeML Open RAIL++-M (Stable Diffusion XL 1.0)"
SDXL_VAE_FP16_REPO = "madebyollin/sdxl-vae-fp16-fix"
SDXL_VAE_FP16_LICENCE = "MIT (SDXL-VAE-FP16-Fix, madebyollin)"
# SUPIR's weights as Kijai's float16 safetensors of the official checkpoints (the official keys, read
# by ComfyUI-SUPIR key by key): half the download of the official fp32 pickles (SUPIR-v0Q.ckpt,
# 5.33 GB, which load too when given as a local file) and no pickle to fetch. Only SUPIR's parts:
# control model, connectors, denoise encoder (tests/fixtures/supir/inventory_full.json: 1,332.3 M).
SUPIR_REPO = "Kijai/SUPIR_pruned"
_SUPIR_FP16_BYTES = 1_332_339_912 * 2
SUPIR_LICENCE = "SUPIR Software License Agreement (SupPixel Pty Ltd): non-commercial use only"
# SDXL base as one official file (UNet, the 0.9 VAE SUPIR was trained with, both text encoders), fp16.
_SDXL_FILE_BYTES = (2_567_463_684 + 83_653_863 + 123_060_480 + 694_659_840) * 2

JUGGERNAUT_LICENCE = "CreativeML Open RAIL++-M (SDXL fine-tune by RunDiffusion; see its model card)"

# Terms a user must accept before a model's weights are fetched: id → what is shown and accepted.
LICENCE_TERMS: dict[str, str] = {
    "supir": (
        "SUPIR's code, weights and architecture are licensed by SupPixel Pty Ltd under the SUPIR "
        "Software License Agreement: NON-COMMERCIAL USE ONLY. You may restore photos for personal, "
        "research or educational purposes. You may not use SUPIR or its results commercially (paid "
        "work, products, services) without SupPixel's written permission. SUPIR runs on Stable "
        "Diffusion XL (CreativeML Open RAIL++-M). Full terms: "
        "https://github.com/Fanghua-Yu/SUPIR/blob/master/LICENSE"
    )
}


@dataclass(frozen=True)
class ModelDefaults:
    """What a model runs with when a parameter is left unset (``None``): its authors' inference settings."""

    steps: int
    guidance: float
    fidelity: float  # the ControlNet conditioning scale, inside and outside a selection
    process_size: int  # pixels on the short side the diffusion works at
    scheduler: str  # "unipc" | "euler"
    quality_prompt: str
    negative_prompt: str
    added_noise_level: int | None = None  # PASD-SD1.5's noised start; None: the family starts from noise
    # SUPIR's sampler (None where a family has no such knob; see RestoreParams)
    guidance_start: float | None = None
    fidelity_start: float | None = None
    restoration: float | None = None
    churn: float | None = None
    churn_noise: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Family:
    """A model family: one pipeline module runs every model of it (``backend/pipelines/<pipeline>.py``)."""

    id: str
    title: str
    short: str  # its name in a sentence ("PASD-SDXL")
    base: str  # the registry id of its base components
    defaults: dict[str, ModelDefaults]  # per task
    gpu_memory_gb: float  # roughly what a 2× upscale of a 1 MP photo needs in fp16, tiles automatic
    note: str = ""


# The reference inference's defaults (github.com/yangxy/PASD test_pasd.py and test_pasd_sdxl.py). For
# colorization the reference adds no quality words and uses only "b&w, color bleeding" as the negative
# prompt (and turns "black and white" in captions into "color": prompt.colorize_words).
_PASD_UPSCALE = ModelDefaults(
    steps=20,
    guidance=7.5,
    fidelity=1.0,
    process_size=768,
    scheduler="unipc",
    quality_prompt="clean, high-resolution, 8k",
    negative_prompt="blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed",
    added_noise_level=900,
)
FAMILIES: dict[str, Family] = {
    family.id: family
    for family in (
        Family(
            id="pasd",
            title="PASD on Stable Diffusion 1.5",
            short="PASD",
            base="sd15",
            defaults={
                "upscale": _PASD_UPSCALE,
                "colorize": replace(_PASD_UPSCALE, quality_prompt="", negative_prompt="b&w, color bleeding"),
            },
            gpu_memory_gb=4.0,
        ),
        Family(
            id="pasd-sdxl",
            title="PASD on Stable Diffusion XL",
            short="PASD-SDXL",
            base="sdxl",
            defaults={
                "upscale": ModelDefaults(
                    steps=25,
                    guidance=7.0,
                    fidelity=0.8,
                    process_size=1280,
                    scheduler="euler",
                    quality_prompt="photorealistic, clean, high-resolution, 8k",
                    negative_prompt=(
                        "blurry, dirty, messy, frames, deformed, dotted, noise, raster lines, unclear, "
                        "lowres, over-smoothed, painting, ai generated"
                    ),
                )
            },
            gpu_memory_gb=12.0,
            note="no colour model exists for SDXL: colorize with pasd-color",
        ),
        Family(
            id="supir",
            title="SUPIR on Stable Diffusion XL (non-commercial)",
            short="SUPIR",
            base="sdxl-base-file",
            # SUPIR's test.py today (50 steps, guidance 4 rising linearly from 1, churn 5 × 1.01,
            # control scale 1, restoration guidance off, short side 1024) and its prompt words.
            defaults={
                "upscale": ModelDefaults(
                    steps=50,
                    guidance=4.0,
                    fidelity=1.0,
                    process_size=1024,
                    scheduler="edm",
                    quality_prompt=(
                        "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, "
                        "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, "
                        "extreme meticulous detailing, skin pore detailing, hyper sharpness, perfect "
                        "without deformations."
                    ),
                    negative_prompt=(
                        "painting, oil painting, illustration, drawing, art, sketch, oil painting, "
                        "cartoon, CG Style, 3D render, unreal engine, blurring, dirty, messy, worst "
                        "quality, low quality, frames, watermark, signature, jpeg artifacts, deformed, "
                        "lowres, over-smooth"
                    ),
                    guidance_start=1.0,
                    restoration=-1.0,
                    churn=5.0,
                    churn_noise=1.01,
                )
            },
            gpu_memory_gb=12.0,
            note="non-commercial licence; its terms are shown and must be accepted before download",
        ),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model: which hub files make it up and what it is for."""

    id: str
    title: str
    repo: str
    files: tuple[str, ...]  # allow-patterns relative to the repo root; nothing else is fetched
    licence: str
    size_bytes: int
    tasks: tuple[str, ...] = ()
    variant: str | None = None  # "full" | "light" for PASD entries, None for base components
    subfolder: str = ""  # folder of unet/ + controlnet/ inside the repo
    scheduler_subfolder: str | None = None  # own scheduler (colorization), else SD1.5's
    use_rrdb: bool = False
    requires: tuple[str, ...] = ()
    revision: str = "main"
    family: str | None = None  # FAMILIES key for restoration models, None for components
    optional_files: tuple[str, ...] = ()  # fetched too where the repository holds them
    overrides: dict[str, Any] = field(default_factory=dict)  # this model's own ModelDefaults changes
    terms: str | None = None  # LICENCE_TERMS id the user must accept before the weights are fetched
    # Files another entry holds, by role (SUPIR: "supir" weights, "base_file" SDXL single file):
    # role → that entry's id; its first file is used from its own folder, never fetched twice.
    links: dict[str, str] = field(default_factory=dict)

    def defaults(self, task: str) -> ModelDefaults:
        """The defaults this model runs ``task`` with: its family's, with its own changes."""
        return model_defaults(self.family or "pasd", task, self.overrides)

    @property
    def url(self) -> str:
        return f"{HF_URL}/{self.repo}"


def model_defaults(family: str, task: str, overrides: dict[str, Any] | None = None) -> ModelDefaults:
    """A family's defaults for a task, with a model's own changes; KeyError names what is unknown."""
    try:
        known = FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None
    try:
        defaults = known.defaults[task]
    except KeyError:
        raise KeyError(f"{known.title} does not do {task}") from None
    return replace(defaults, **(overrides or {}))


def _pasd_files(subfolder: str) -> tuple[str, ...]:
    return tuple(
        f"{subfolder}/{part}/{name}"
        for part in ("unet", "controlnet")
        for name in ("config.json", "diffusion_pytorch_model.safetensors")
    )


def _pasd(
    id: str,
    title: str,
    subfolder: str,
    variant: str,
    tasks: tuple[str, ...],
    use_rrdb: bool = False,
    scheduler_subfolder: str | None = None,
) -> ModelSpec:
    files = _pasd_files(subfolder)
    if scheduler_subfolder:
        files += (f"{scheduler_subfolder}/scheduler_config.json",)
    unet = _UNET_FULL_BYTES if variant == "full" else _UNET_LIGHT_BYTES
    controlnet = _CONTROLNET_RRDB_BYTES if use_rrdb else _CONTROLNET_BYTES
    return ModelSpec(
        id=id,
        title=title,
        repo=PASD_REPO,
        files=files,
        licence=PASD_LICENCE,
        size_bytes=unet + controlnet,
        tasks=tasks,
        variant=variant,
        subfolder=subfolder,
        scheduler_subfolder=scheduler_subfolder,
        use_rrdb=use_rrdb,
        requires=("sd15",),
        family="pasd",
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        _pasd("pasd", "PASD (full pixel-aware attention)", "pasd/checkpoint-100000", "full", ("upscale",)),
        _pasd(
            "pasd-light",
            "PASD-light (smaller, faster)",
            "pasd_light/checkpoint-120000",
            "light",
            ("upscale",),
        ),
        _pasd(
            "pasd-rrdb",
            "PASD with RRDB degradation removal",
            "pasd_rrdb/checkpoint-100000",
            "full",
            ("upscale",),
            use_rrdb=True,
        ),
        _pasd(
            "pasd-light-rrdb",
            "PASD-light with RRDB degradation removal",
            "pasd_light_rrdb/checkpoint-100000",
            "light",
            ("upscale",),
            use_rrdb=True,
        ),
        _pasd(
            "pasd-color",
            "PASD colorization (light, zero-terminal-SNR scheduler)",
            "pasd_light_color/checkpoint-180000",
            "light",
            ("colorize",),
            scheduler_subfolder="pasd_light_color/scheduler",
        ),
        ModelSpec(
            id="pasd-sdxl",
            title="PASD-SDXL (the authors' newer, stronger model; needs a big GPU)",
            repo=PASD_SDXL_REPO,
            files=_pasd_files("checkpoint-200000"),
            # The reference reads the checkpoint's own scheduler/ (test_pasd_sdxl.py); whether the hub
            # has one is not known, so it is taken when the listing shows it, else SDXL base's Euler.
            optional_files=("checkpoint-200000/scheduler/scheduler_config.json",),
            licence=f"{PASD_LICENCE}; its SDXL base is under {SDXL_LICENCE}",
            size_bytes=_SDXL_UNET_BYTES + _SDXL_CONTROLNET_BYTES,
            tasks=("upscale",),
            variant="full",
            subfolder="checkpoint-200000",
            requires=("sdxl", "sdxl-vae-fp16"),
            family="pasd-sdxl",
        ),
        ModelSpec(
            id="sdxl",
            title="Stable Diffusion XL base components (two text encoders, tokenizers, VAE, scheduler)",
            repo=SDXL_REPO,
            files=(
                "model_index.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "text_encoder_2/config.json",
                "text_encoder_2/model.safetensors",
                *(
                    f"{folder}/{name}"
                    for folder in ("tokenizer", "tokenizer_2")
                    for name in (
                        "merges.txt",
                        "special_tokens_map.json",
                        "tokenizer_config.json",
                        "vocab.json",
                    )
                ),
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
                "scheduler/scheduler_config.json",
            ),
            licence=SDXL_LICENCE,
            size_bytes=(123_060_480 + 694_659_840 + 83_653_863) * 4,
        ),
        *(
            ModelSpec(
                id=f"supir-v0{kind.lower()}",
                title=title,
                repo=SUPIR_REPO,
                files=(f"SUPIR-v0{kind}_fp16.safetensors",),
                licence=f"{SUPIR_LICENCE}; its SDXL base is under {SDXL_LICENCE}",
                size_bytes=_SUPIR_FP16_BYTES,
                tasks=("upscale",),
                variant="full",
                requires=("sdxl-base-file", "sdxl-tokenizers"),
                family="supir",
                terms="supir",
                links={"base_file": "sdxl-base-file"},
            )
            for kind, title in (
                ("Q", "SUPIR-v0Q (SDXL restoration, strongest on heavy damage; non-commercial)"),
                ("F", "SUPIR-v0F (SDXL restoration, keeps more detail on light damage; non-commercial)"),
            )
        ),
        ModelSpec(
            id="supir-v0q-juggernaut",
            title="SUPIR-v0Q on Juggernaut-XL v9, a photographic SDXL fine-tune (non-commercial)",
            repo=SUPIR_REPO,
            files=(),  # SUPIR-v0Q's file and Juggernaut's, each from its own entry's folder
            licence=f"{SUPIR_LICENCE}; its base Juggernaut-XL v9 is under {JUGGERNAUT_LICENCE}",
            size_bytes=0,
            tasks=("upscale",),
            variant="full",
            requires=("supir-v0q", "juggernaut-xl-v9", "sdxl-tokenizers"),
            family="supir",
            terms="supir",
            links={"supir": "supir-v0q", "base_file": "juggernaut-xl-v9"},
        ),
        ModelSpec(
            id="juggernaut-xl-v9",
            title="Juggernaut-XL v9 (RunDiffusion's photographic SDXL fine-tune) as one file",
            repo="RunDiffusion/Juggernaut-XL-v9",
            files=("Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors",),
            licence=JUGGERNAUT_LICENCE,
            size_bytes=7_105_000_000,  # the hub's 7.11 GB (its VAE is stored in float32)
        ),
        ModelSpec(
            id="sdxl-base-file",
            title="Stable Diffusion XL base 1.0 as one file (with the 0.9 VAE), the base SUPIR runs on",
            repo=SDXL_REPO,
            files=("sd_xl_base_1.0_0.9vae.safetensors",),
            licence=SDXL_LICENCE,
            size_bytes=_SDXL_FILE_BYTES,
        ),
        ModelSpec(
            id="sdxl-tokenizers",
            title="Stable Diffusion XL's two tokenizers",
            repo=SDXL_REPO,
            files=tuple(
                f"{folder}/{name}"
                for folder in ("tokenizer", "tokenizer_2")
                for name in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
            ),
            licence=SDXL_LICENCE,
            size_bytes=4 * 1_600_000,
        ),
        ModelSpec(
            id="sdxl-vae-fp16",
            title="SDXL VAE that does not overflow in float16 (used on GPUs in half precision)",
            repo=SDXL_VAE_FP16_REPO,
            files=("config.json", "diffusion_pytorch_model.safetensors"),
            licence=SDXL_VAE_FP16_LICENCE,
            size_bytes=83_653_863 * 4,
        ),
        ModelSpec(
            id="sd15",
            title="Stable Diffusion 1.5 components (text encoder, tokenizer, VAE, scheduler)",
            repo=SD15_REPO,
            files=(
                "model_index.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
                "scheduler/scheduler_config.json",
            ),
            licence=SD15_LICENCE,
            size_bytes=(123_060_480 + 83_653_863) * 4,
        ),
        ModelSpec(
            id="blip",
            title="BLIP image captioning (automatic prompt words)",
            repo=BLIP_REPO,
            files=(
                "config.json",
                "model.safetensors",
                "preprocessor_config.json",
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.txt",
            ),
            licence=BLIP_LICENCE,
            size_bytes=_BLIP_BYTES,
            tasks=("caption",),
        ),
        ModelSpec(
            id="lcm-lora-sdv1-5",
            title="LCM-LoRA for SD1.5: the fast mode (3-4 steps) of the PASD SD1.5 models",
            repo=LCM_REPO,
            files=("pytorch_lora_weights.safetensors",),
            licence=LCM_LICENCE,
            size_bytes=134_621_556,
            tasks=("fast",),
        ),
        ModelSpec(
            id="resnet50-classifier",
            title="ResNet-50 ImageNet classifier (prompt words as ModelScope's PASD makes them)",
            repo=CLASSIFIER_REPO,
            files=("config.json", "model.safetensors", "preprocessor_config.json"),
            licence=CLASSIFIER_LICENCE,
            size_bytes=25_557_032 * 4,
            tasks=("classify",),
        ),
        ModelSpec(
            id="style-majicmix-realistic",
            title="majicMIX realistic v6: a personalized SD1.5 checkpoint for photographic restoration",
            repo=STYLE_MAJICMIX_REPO,
            files=("majicmixRealistic_v6.safetensors",),
            licence=STYLE_MAJICMIX_LICENCE,
            size_bytes=2_400_000_000,
            tasks=("style",),
        ),
    )
}

DEFAULT_MODEL_FOR_TASK = {"upscale": "pasd", "colorize": "pasd-color"}


def accepted_names(path: str) -> tuple[str, ...]:
    """A registry file and the stand-in a repository may hold instead: the ``.bin`` of a weights file
    (``diffusion_pytorch_model.bin``, or ``pytorch_model.bin`` for ``model.safetensors``), so that a
    component published without safetensors still installs; the preferred name comes first."""
    folder, _, name = path.rpartition("/")
    if not name.endswith(".safetensors"):
        return (path,)
    stem = name.removesuffix(".safetensors")
    stand_in = "pytorch_model.bin" if stem == "model" else f"{stem}.bin"
    return (path, f"{folder}/{stand_in}" if folder else stand_in)


def get_spec(model_id: str) -> ModelSpec:
    try:
        return REGISTRY[model_id]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise KeyError(f"Unknown model {model_id!r}; known models: {known}") from None


def with_requirements(model_id: str) -> list[ModelSpec]:
    """The model and everything it needs, requirements first."""
    spec = get_spec(model_id)
    return [get_spec(r) for r in spec.requires] + [spec]


def family_of(spec: ModelSpec) -> Family | None:
    return FAMILIES.get(spec.family) if spec.family else None


def recommend_model(task: str, gpu_memory_bytes: int | None) -> tuple[str, str]:
    """The model to install for ``task`` on a machine with that much GPU memory (None: no GPU),
    and why, in a sentence: the installer and the dialog say the same."""
    default = DEFAULT_MODEL_FOR_TASK[task]
    sdxl = FAMILIES["pasd-sdxl"]
    if task not in sdxl.defaults:
        return default, f"{get_spec(default).title} is the model for {task} ({sdxl.note})."
    if gpu_memory_bytes is None:
        return default, (
            "No GPU was found: PASD (SD1.5) is the one to use; PASD-SDXL would take very long on the CPU."
        )
    gb = gpu_memory_bytes / 2**30
    if gb >= sdxl.gpu_memory_gb:
        return "pasd-sdxl", (
            f"This GPU has {gb:.0f} GB: enough for PASD-SDXL (about {sdxl.gpu_memory_gb:g} GB), the "
            "stronger model; PASD (SD1.5) is faster."
        )
    return default, (
        f"This GPU has {gb:.0f} GB: PASD (SD1.5) fits (about {FAMILIES['pasd'].gpu_memory_gb:g} GB); "
        f"PASD-SDXL needs about {sdxl.gpu_memory_gb:g} GB and would be offloaded and slow."
    )
