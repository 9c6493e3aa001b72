"""The one registry of models the tool knows how to fetch, and where each one's files live.

PASD checkpoints hold only ``unet/`` and ``controlnet/`` (plus ``scaler.pt``, accelerate's training
state, a pickle that is never fetched); the text encoder, tokenizer, VAE and scheduler come from
Stable Diffusion 1.5 (the ``sd15`` entry), which every PASD entry requires. The colour model is
``pasd_light_color/`` on the hub (``runs/pasd_color`` is only the upstream README's local name) and
brings its own zero-terminal-SNR scheduler. Sizes are the float32 safetensors sizes of the listed
files (parameters × 4 bytes, rounded). ``blip`` is the optional captioner that writes automatic
prompt words; it stands alone. Standard library only: the installer reads this file before the
backend's environment exists.
"""

from __future__ import annotations

from dataclasses import dataclass

HF_URL = "https://huggingface.co"
PASD_REPO = "yangtao9009/PASD"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PASD_LICENCE = "Apache-2.0 (PASD code and weights, github.com/yangxy/PASD)"
SD15_LICENCE = "CreativeML OpenRAIL-M (Stable Diffusion 1.5)"
BLIP_REPO = "Salesforce/blip-image-captioning-base"
BLIP_LICENCE = "BSD-3-Clause (BLIP, Salesforce)"

_UNET_FULL_BYTES = 1_107_755_524 * 4
_UNET_LIGHT_BYTES = 888_218_884 * 4
_CONTROLNET_BYTES = 361_289_497 * 4
_CONTROLNET_RRDB_BYTES = 361_497_337 * 4
_BLIP_BYTES = 247_444_600 * 4  # the official file stores the tied LM head as its own tensor


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

    @property
    def url(self) -> str:
        return f"{HF_URL}/{self.repo}"


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
