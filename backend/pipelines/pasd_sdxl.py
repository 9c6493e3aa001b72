"""The PASD-SDXL pipeline: PASD's pixel-aware UNet and ControlNet with SDXL configs, run as the
reference ``pipeline_pasd_sdxl.py`` runs them (github.com/yangxy/PASD).

What differs from PASD-SD1.5 (:class:`~backend.pipelines.pasd.PasdPipeline`, whose tiled denoising,
region fidelity, tiled VAE, decoding and offload it reuses):

- two text encoders (penultimate layers joined, pooled text of the second) and SDXL's size ids
  ``[H, W, 0, 0, H, W]`` of the whole processed image as added conditions, for every tile too;
- the start is pure noise × the scheduler's initial sigma (the reference's image start is dead code),
  so ``added_noise_level`` does not apply; Euler as SDXL base's scheduler;
- on a GPU in float16 the fp16-fix VAE (SDXL's own VAE overflows in float16); without it the VAE runs
  in float32.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, SchedulerMixin

from ..devices import DeviceChoice
from ..models.loading import ModelLoadError
from ..models.pasd import PasdControlNetModel, PasdUNet2DConditionModel
from ..models.sdxl.text import SdxlText, size_ids
from ..models.store import InstalledModel
from .base import CancelFn, NoiseAnchor, ProgressFn, TextConditioning, TraceFn, emit
from .pasd import PasdPipeline, load_pasd_parts
from .tiled_vae import VaeTiling


class PasdSdxlPipeline(PasdPipeline):
    """PASD-SDXL components on one device; callable on a pre-scaled RGB image (see PasdPipeline)."""

    scheduler_class = EulerDiscreteScheduler
    supports_fast = False  # no LCM-LoRA for PASD-SDXL: enable_fast raises FastModeError

    def __init__(
        self,
        *,
        vae: AutoencoderKL,
        text: SdxlText,
        unet: PasdUNet2DConditionModel,
        controlnet: PasdControlNetModel,
        scheduler: SchedulerMixin,
        choice: DeviceChoice,
        offload: bool = False,
    ) -> None:
        self.text = text
        super().__init__(
            vae=vae,
            text_encoder=text.text_encoder,
            tokenizer=text.tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            choice=choice,
            offload=offload,
        )
        self.max_prompt_tokens = text.max_tokens
        self._place(text.text_encoder_2)
        expected = unet.add_embedding.linear_1.in_features
        given = unet.config.addition_time_embed_dim * 6 + text.pooled_width
        if expected != given:
            raise ModelLoadError(
                f"the UNet expects {expected} added-embedding inputs but the second text encoder and six "
                f"size ids give {given}: the base components do not belong to this model"
            )

    @classmethod
    def from_installed(
        cls, model: InstalledModel, choice: DeviceChoice, offload: bool = False
    ) -> PasdSdxlPipeline:
        """Load every component (official layouts, strict loading of the PASD parts)."""
        root, manifest = model.root, model.manifest
        unet, controlnet = load_pasd_parts(model)
        if unet.pasd_variant != "full" or unet.config.addition_embed_type != "text_time":
            raise ModelLoadError(
                f"{root}: pasd_model.json says PASD-SDXL, but the UNet is not SDXL-shaped "
                f"({unet.pasd_variant}, added embeddings {unet.config.addition_embed_type!r})"
            )
        names = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        try:
            text = SdxlText.from_folders({name: manifest.resolve(root, name) for name in names})
            vae_dir = manifest.resolve(root, "vae")
            fp16_dir = manifest.resolve(root, "vae_fp16") if "vae_fp16" in manifest.extra else None
            if choice.vae_dtype == torch.float16:
                if fp16_dir is not None and fp16_dir.is_dir():
                    vae_dir = fp16_dir
                else:  # SDXL's VAE overflows in float16
                    choice = dataclasses.replace(choice, vae_dtype=torch.float32)
            vae = AutoencoderKL.from_pretrained(str(vae_dir))
            config = EulerDiscreteScheduler.load_config(str(manifest.resolve(root, "scheduler")))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{root}: a base component could not be loaded: {exc}") from exc
        return cls(
            vae=vae,
            text=text,
            unet=unet,
            controlnet=controlnet,
            scheduler=EulerDiscreteScheduler.from_config(config),
            choice=choice,
            offload=offload,
        )

    def prompt_token_count(self, prompt: str) -> int:
        return self.text.token_count(prompt)

    def conditioning(
        self, prompt: str, negative_prompt: str, guidance: bool, size: tuple[int, int]
    ) -> TextConditioning:
        """Joined text states, pooled text and the size ids of the whole processed image ``size``
        (the reference uses the same ids for the negative prompt and for every tile)."""
        texts = [negative_prompt, prompt] if guidance else [prompt]
        with self._on_device(*self.text.encoders):
            states, pooled = self.text.encode(texts, self.choice.device)
        dtype, device = self.choice.dtype, self.choice.device
        ids = size_ids(*size).repeat(len(texts), 1)
        return TextConditioning(
            states.to(dtype),
            {"text_embeds": pooled.to(dtype), "time_ids": ids.to(device=device, dtype=dtype)},
        )

    def start(
        self,
        scheduler: SchedulerMixin,
        image: torch.Tensor,
        generator: torch.Generator,
        vae_tiling: VaeTiling | None,
        added_noise_level: int | None,
        progress: ProgressFn,
        check_cancel: CancelFn,
        trace: TraceFn | None,
        anchor: NoiseAnchor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pure noise (one draw, float32 on the CPU generator) × the scheduler's initial sigma."""
        f = self.vae_scale_factor
        size = (image.shape[-2] // f, image.shape[-1] // f)
        channels = self.unet.config.in_channels
        if anchor is not None:
            (noise,) = anchor.draw(generator, channels, size, (torch.float32,))
        else:
            noise = torch.randn((1, channels, *size), generator=generator, dtype=torch.float32)
        noise = noise.to(self.choice.device)
        emit(trace, "noise", noise)
        latents = noise * scheduler.init_noise_sigma
        emit(trace, "start", latents)
        return latents, None
