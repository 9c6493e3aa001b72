"""The PASD diffusion pipeline: prompt → text embeddings, image → latents, tiled denoising with a
per-pixel ControlNet scale, latents → image.

It follows the reference inference (github.com/yangxy/PASD, ``pipeline_pasd.py``) with three
changes: the ControlNet scale can be a map (region fidelity) and survives tiling, the tiles' noise
predictions are blended with weights normalised per pixel, and the VAE is tiled with shared
GroupNorm statistics, so memory follows the tile size and not the image size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    LCMScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)
from transformers import CLIPTextModel, CLIPTokenizer

from ..devices import DeviceChoice
from ..image_ops import area_resize, resize
from ..models.loading import ModelLoadError
from ..models.pasd import PasdControlNetModel, PasdUNet2DConditionModel
from ..models.store import InstalledModel
from .base import (
    CancelFn,
    DenoiseTiling,
    NoiseAnchor,
    PreviewFn,
    ProgressFn,
    SamplingKnobs,
    TextConditioning,
    TraceFn,
    emit,
    no_cancel,
    no_progress,
    visiting,
)
from .fast import FAST_STEPS, FastModeError, find_lcm_lora, fuse_lcm_lora, lcm_scheduler, unsupported
from .preview import LatentPreview
from .tiled_vae import VaeTiling, tiled_decode, tiled_encode
from .tiling import Tile, blend_weights, plan_tiles

# Names of a family's added conditions in traces (the reference pipelines' names for them)
ADDED_TRACE_NAMES = {"text_embeds": "pooled_prompt_embeds", "time_ids": "time_ids"}


class PasdPipeline:
    """PASD-SD1.5 components on one device; callable on a pre-scaled RGB image.

    The base of the PASD family's pipelines: the tiled denoising loop with a per-pixel ControlNet
    scale, decoding and offload are the same on SDXL (``pasd_sdxl.py``); prompt conditioning and the
    start latents are what a subclass changes (:meth:`conditioning`, :meth:`start`).
    """

    scheduler_class: type[SchedulerMixin] = UniPCMultistepScheduler
    fixes_colour = False
    size_unit = 8
    supports_fast = True  # the LCM-LoRA fast mode (enable_fast); the SD1.5 family only

    def __init__(
        self,
        *,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: PasdUNet2DConditionModel,
        controlnet: PasdControlNetModel,
        scheduler: SchedulerMixin,
        choice: DeviceChoice,
        offload: bool = False,
    ) -> None:
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.controlnet = controlnet
        self.scheduler = scheduler
        self.choice = choice
        self.offload = offload
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.max_prompt_tokens = int(tokenizer.model_max_length)
        self.fast_lora: Path | None = None  # the LCM-LoRA fused into the UNet (fast mode), if any
        self._place(text_encoder, unet, controlnet)
        torch.nn.Module.to(vae, device=self._home, dtype=choice.vae_dtype).eval().requires_grad_(False)

    @property
    def _home(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.choice.device

    def _place(self, *modules: torch.nn.Module) -> None:
        # nn.Module.to, not ModelMixin.to: the latter warns about fp32-pinned modules PASD has none of.
        for module in modules:
            torch.nn.Module.to(module, device=self._home, dtype=self.choice.dtype).eval().requires_grad_(
                False
            )

    def widths(self) -> tuple[int, int]:
        """Base widths of the UNet and of the VAE decoder's last block, for tile-size estimates."""
        return int(self.unet.config.block_out_channels[0]), int(self.vae.config.block_out_channels[0])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_installed(
        cls, model: InstalledModel, choice: DeviceChoice, offload: bool = False
    ) -> PasdPipeline:
        """Load every component of an installed model folder (official layouts, strict loading)."""
        root, manifest = model.root, model.manifest
        unet, controlnet = load_pasd_parts(model)
        if unet.pasd_variant != manifest.variant:
            raise ModelLoadError(
                f"{root}: pasd_model.json says variant {manifest.variant!r} but the UNet weights are "
                f"{unet.pasd_variant!r}"
            )
        if unet.config.addition_embed_type is not None:
            raise ModelLoadError(
                f"{root}: the UNet is SDXL-shaped but pasd_model.json says family {manifest.family!r}; "
                'a PASD-SDXL folder needs family "pasd-sdxl" (install it with python -m backend download '
                "pasd-sdxl)"
            )
        try:
            vae = AutoencoderKL.from_pretrained(str(manifest.resolve(root, "vae")))
            text_encoder = CLIPTextModel.from_pretrained(str(manifest.resolve(root, "text_encoder")))
            tokenizer = CLIPTokenizer.from_pretrained(str(manifest.resolve(root, "tokenizer")))
            config = UniPCMultistepScheduler.load_config(str(manifest.resolve(root, "scheduler")))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{root}: a base component could not be loaded: {exc}") from exc
        # The colour model ships a DDPM config with a zero-terminal-SNR schedule; UniPC takes it over.
        check_scheduler(root, manifest.tasks, config)
        scheduler = UniPCMultistepScheduler.from_config(config)
        return cls(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            choice=choice,
            offload=offload,
        )

    def _on_device(self, *modules: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """With offload, a component visits the accelerator only while its stage runs."""
        return visiting(self.choice.device, self.offload, *modules)

    # ------------------------------------------------------------------ fast mode
    @property
    def fast(self) -> bool:
        """True once the LCM-LoRA is fused (:meth:`enable_fast`): every run then samples with LCM."""
        return self.fast_lora is not None

    def enable_fast(
        self,
        lora_file: str | Path | None = None,
        *,
        models_dir: str | Path | None = None,
        scale: float = 1.0,
    ) -> int:
        """Switch this pipeline to the fast mode for good: fuse the LCM-LoRA into the UNet and sample
        every later run with ``LCMScheduler`` (as PASD's ``--use_lcm_lora``).

        ``lora_file`` defaults to the installed ``lcm-lora-sdv1-5`` of ``models_dir``. Steps and
        guidance stay the caller's (``fast.FAST_STEPS``, ``fast.FAST_GUIDANCE`` are the mode's own).
        Returns the number of UNet layers changed; 0 when this file is fused already. There is no way
        back short of loading the model again (unfusing would leave rounding in half-precision
        weights), so a cache of pipelines must tell fast ones apart. Raises FastModeError for a family
        without fast mode, for the colour model (v-prediction: the LoRA is distilled from SD1.5's
        noise prediction), for a missing or damaged file, and for a LoRA that does not fit the UNet
        (the UNet is then left as it was).
        """
        if not self.supports_fast:
            raise unsupported(self)
        kind = self.scheduler.config.get("prediction_type", "epsilon")
        if kind != "epsilon":
            raise FastModeError(
                f"The fast mode's LCM-LoRA is distilled from SD1.5's noise (epsilon) prediction, but this "
                f"model predicts {kind} (PASD's colour model): it would paint noise. Turn the fast mode off "
                "for this model."
            )
        path = Path(lora_file) if lora_file is not None else find_lcm_lora(models_dir)
        if self.fast_lora is not None:
            if self.fast_lora.resolve() == path.resolve():
                return 0
            raise FastModeError(
                f"{self.fast_lora} is fused into this UNet already; load the model again to fuse {path}"
            )
        unet = getattr(self.unet, "_orig_mod", self.unet)  # under torch.compile, the module itself
        with self._on_device(unet):  # with offload too, the merge's matrix products on the accelerator
            changed = fuse_lcm_lora(unet, path, scale)
        self.fast_lora = path
        return changed

    def make_scheduler(self) -> SchedulerMixin:
        """A fresh solver for one run: the family's (UniPC; Euler on SDXL) or, in fast mode, LCM made
        from the same config as the reference makes it."""
        if self.fast:
            return lcm_scheduler(self.scheduler.config)
        return self.scheduler_class.from_config(self.scheduler.config)

    # ------------------------------------------------------------------ stages
    def conditioning(
        self, prompt: str, negative_prompt: str, guidance: bool, size: tuple[int, int]
    ) -> TextConditioning:
        """Text states for the denoiser; ``size`` (the whole processed image's, pixels) is unused on SD1.5."""
        return TextConditioning(self.encode_prompt(prompt, negative_prompt, guidance))

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: bool) -> torch.Tensor:
        """[uncond, cond] text embeddings (only cond without guidance); CLIP keeps 77 tokens."""
        texts = [negative_prompt, prompt] if guidance else [prompt]
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        with self._on_device(self.text_encoder):
            ids = tokens.input_ids.to(self.choice.device)
            return self.text_encoder(ids)[0].to(self.choice.dtype)

    def prompt_token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt).input_ids)

    def __call__(
        self,
        image: torch.Tensor,
        *,
        prompt: str,
        negative_prompt: str,
        steps: int = 20,
        guidance: float = 7.5,
        seed: int = 0,
        scale_map: torch.Tensor | float = 1.0,
        added_noise_level: int | None = 900,
        tiling: DenoiseTiling | None = None,
        vae_tiling: VaeTiling | None = None,
        progress: ProgressFn = no_progress,
        check_cancel: CancelFn = no_cancel,
        preview: PreviewFn | None = None,
        trace: TraceFn | None = None,
        anchor: NoiseAnchor | None = None,
        knobs: SamplingKnobs | None = None,
    ) -> torch.Tensor:
        """Restore ``image`` ([1, 3, H, W] in [0, 1], H and W multiples of 8, on the CPU).

        Returns [1, 3, H, W] float32 in [0, 1] on the CPU. ``scale_map`` is a float or a
        [1, 1, H, W] map of ControlNet scales (region fidelity). ``preview`` gets a small RGB
        picture of the current estimate after every step. ``trace``, if given, gets copies of the
        stages in order (the parity test compares them with the reference's): ``prompt_embeds``
        ([uncond, cond] or [cond]), ``init_latents`` (the VAE's sample, scaled), the two noise draws
        ``noise`` and ``added_noise``, ``noised_start``, ``step_0`` … ``step_{n-1}`` (latents after
        each solver step) and ``decoded``. Tracing only copies: the result does not change.
        ``anchor`` places the image in a larger one (a preview's crop in the whole image): the noise
        is then the larger image's, drawn in the same order, at the crop's place (see NoiseAnchor).
        In fast mode (:meth:`enable_fast`) the solver is LCM, whose steps draw fresh noise after the
        start's three draws (see :func:`lcm_step`).
        """
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image must be [1, 3, H, W], got {list(image.shape)}")
        height, width = image.shape[-2:]
        f = self.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"image sides must be multiples of {f}, got {height}x{width}")
        if torch.is_tensor(scale_map) and scale_map.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"scale map is {list(scale_map.shape)}, image is {list(image.shape)}")
        device = self.choice.device
        cfg = guidance > 1.0
        generator = torch.Generator("cpu").manual_seed(seed)

        check_cancel()
        whole = (anchor.height * f, anchor.width * f) if anchor is not None else (height, width)
        conditioning = self.conditioning(prompt, negative_prompt, cfg, whole)
        emit(trace, "prompt_embeds", conditioning.states)
        for name, value in conditioning.added.items():
            emit(trace, ADDED_TRACE_NAMES.get(name, name), value)

        scheduler = self.make_scheduler()
        if isinstance(scheduler, LCMScheduler):
            most = scheduler.config.original_inference_steps  # LCM's steps are a subset of these
            if not 1 <= steps <= most:
                raise FastModeError(
                    f"The fast mode takes 1 to {most} steps, not {steps} ({FAST_STEPS} is best)"
                )
        scheduler.set_timesteps(steps, device=device)
        latents, init = self.start(
            scheduler, image, generator, vae_tiling, added_noise_level, progress, check_cancel, trace, anchor
        )
        on_step = None
        if preview is not None:
            if init is None:
                init = self._preview_latents(image)
            previewer = LatentPreview(init, image)
            on_step = lambda estimate: preview(previewer(estimate))  # noqa: E731
        del init

        pull = None
        knobs = knobs or SamplingKnobs()
        if knobs.restoration is not None and knobs.restoration > 0:
            # Restoration guidance (SUPIR's idea, off by default): the input's own latents anchor
            # the clean estimate of the early steps.
            with self._on_device(self.vae):
                anchor_latents = tiled_encode(
                    self.vae, image.to(self.choice.device), vae_tiling, sample=False, from_unit=True
                ).float()
            weight = knobs.restore_map
            if torch.is_tensor(weight):
                weight = area_resize(weight.float(), tuple(latents.shape[-2:])).to(latents.device)
            pull = RestorationPull(anchor_latents, float(knobs.restoration), weight)
            emit(trace, "restoration_anchor", anchor_latents)

        with self._on_device(self.unet, self.controlnet):
            latents = self.denoise(
                scheduler,
                latents,
                image,
                scale_map,
                conditioning,
                guidance,
                tiling,
                progress,
                check_cancel,
                on_step,
                trace,
                pull,
                generator=generator,
                anchor=anchor,
            )

        with self._on_device(self.vae):
            decoded = self._decode(latents, vae_tiling, progress, check_cancel)
        emit(trace, "decoded", decoded)
        return decoded

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
        """The start latents, and the encoded input when the start made it (the preview's fit uses it).

        PASD-SD1.5 starts from its input: the VAE's sample, noised to the first timestep and then to
        ``added_noise_level`` (:meth:`_noised_start`). Draw order: the VAE sample's noise, the start
        noise, the added noise; an anchor draws the same three over the whole image's latent.
        """
        f = self.vae_scale_factor
        drawn = None
        if anchor is not None:
            vae_dtype = next(self.vae.parameters()).dtype
            channels = self.vae.config.latent_channels
            size = (image.shape[-2] // f, image.shape[-1] // f)
            drawn = anchor.draw(generator, channels, size, (vae_dtype, torch.float32, torch.float32))
        with self._on_device(self.vae):
            init = self._encode(image, vae_tiling, generator, progress, check_cancel, drawn and drawn[0])
        emit(trace, "init_latents", init)
        level = 900 if added_noise_level is None else added_noise_level
        latents = self._noised_start(
            scheduler, init, scheduler.timesteps[:1], level, generator, trace, drawn and drawn[1:]
        )
        return latents, init

    def _preview_latents(self, image: torch.Tensor) -> torch.Tensor:
        """The input's latents at preview size (the distribution's mean: no random draw), for a
        family whose start does not encode the input."""
        h, w = image.shape[-2:]
        factor = min(1.0, 512 / max(h, w))
        f = self.vae_scale_factor
        small = resize(image, (max(f, round(h * factor / f) * f), max(f, round(w * factor / f) * f)))
        with self._on_device(self.vae):
            latents = tiled_encode(self.vae, small.to(self.choice.device), None, sample=False, from_unit=True)
        return latents.float()

    def denoise(
        self,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        image: torch.Tensor,
        scale_map: torch.Tensor | float,
        conditioning: TextConditioning,
        guidance: float,
        tiling: DenoiseTiling | None = None,
        progress: ProgressFn = no_progress,
        check_cancel: CancelFn = no_cancel,
        on_step: Callable[[torch.Tensor], None] | None = None,
        trace: TraceFn | None = None,
        pull: RestorationPull | None = None,
        generator: torch.Generator | None = None,
        anchor: NoiseAnchor | None = None,
    ) -> torch.Tensor:
        """The sampling loop: per step, blend the tiles' guided predictions, then step the whole latent.

        ``on_step`` gets the clean-latent estimate of each step (shrunk to preview size first);
        ``trace`` the latents after each step, as ``step_{i}``. With LCM (fast mode) each step but the
        last draws fresh noise from ``generator`` (the run's, after the start's draws; a fixed seed
        when None), over the whole image's latent when ``anchor`` places this one in it.
        """
        if isinstance(scheduler, LCMScheduler) and generator is None:
            generator = torch.Generator("cpu").manual_seed(0)
        lh, lw = latents.shape[-2:]
        plan = tiling or DenoiseTiling(max(lh, lw), 0)
        tiles = plan_tiles(lh, lw, plan.tile, plan.overlap)
        weights = [w.to(latents.device) for w in blend_weights(tiles, lh, lw)]
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            progress("denoise", i, len(timesteps))
            noise = torch.zeros_like(latents)
            for tile, weight in zip(tiles, weights, strict=True):
                pred = self._predict(
                    scheduler, latents, t, tile, image, scale_map, conditioning, guidance, check_cancel
                )
                rows, cols = tile.slices()
                noise[..., rows, cols] += pred * weight
            if pull is not None and i < len(timesteps) - 1:  # not on the last step, as SUPIR
                noise = pull(scheduler, latents, noise, t)
            if on_step is not None:
                on_step(_clean_estimate(scheduler, latents, noise, t))
            if isinstance(scheduler, LCMScheduler):
                following = timesteps[i + 1] if i + 1 < len(timesteps) else None
                draw = _noise_draw(generator, anchor, latents)
                latents = lcm_step(scheduler, noise, t, latents, following, draw)
            else:
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            emit(trace, f"step_{i}", latents)
        progress("denoise", len(timesteps), len(timesteps))
        return latents

    def _noised_start(
        self,
        scheduler: SchedulerMixin,
        init: torch.Tensor,
        first: torch.Tensor,
        added_noise_level: int,
        generator: torch.Generator,
        trace: TraceFn | None = None,
        drawn: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """PASD's start: the encoded input noised to the first timestep, then to ``added_noise_level``.

        The first noising is the solver's own (the timestep is on its schedule). The second is PASD's
        "adjustable noise schedule" as its authors wrote it on diffusers 0.21.4, a DDPM forward step
        to training timestep ``level`` (see :func:`renoise`). Current diffusers' ``add_noise`` would look
        ``level`` up in the solver's schedule and, when it is not on it (900 with 20 steps), fall back
        to the last step: the knob would jump instead of turning.
        """
        if drawn:
            noise, added = (d.to(init.device) for d in drawn)
        else:
            noise = torch.randn(init.shape, generator=generator, dtype=torch.float32).to(init.device)
        latents = scheduler.add_noise(init, noise, first.repeat(init.shape[0]))
        if not drawn:
            added = torch.randn(init.shape, generator=generator, dtype=torch.float32).to(init.device)
        latents = renoise(latents, added, added_noise_level, scheduler.alphas_cumprod)
        latents = latents * scheduler.init_noise_sigma
        emit(trace, "noise", noise)
        emit(trace, "added_noise", added)
        emit(trace, "noised_start", latents)
        return latents

    def _predict(
        self,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        t: torch.Tensor,
        tile: Tile,
        image: torch.Tensor,
        scale_map: torch.Tensor | float,
        conditioning: TextConditioning,
        guidance: float,
        check_cancel: CancelFn,
    ) -> torch.Tensor:
        """Guided noise prediction for one tile, in float32."""
        device, dtype = self.choice.device, self.choice.dtype
        rows, cols = tile.slices()
        irows, icols = tile.slices(self.vae_scale_factor)
        batch = conditioning.batch
        added = conditioning.added or None
        sample = latents[..., rows, cols].expand(batch, -1, -1, -1)
        sample = scheduler.scale_model_input(sample, t).to(dtype)
        cond = image[..., irows, icols].to(device=device, dtype=dtype).expand(batch, -1, -1, -1)
        scale = scale_map
        if torch.is_tensor(scale_map):
            scale = scale_map[..., irows, icols].to(device=device, dtype=dtype)
        check_cancel()
        down, mid = self.controlnet(
            sample,
            t,
            encoder_hidden_states=conditioning.states,
            controlnet_cond=cond,
            conditioning_scale=scale,
            added_cond_kwargs=added,
            return_dict=False,
        )
        check_cancel()
        pred = self.unet(
            sample,
            t,
            encoder_hidden_states=conditioning.states,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0].float()
        if batch == 2:
            uncond, cond_pred = pred.chunk(2)
            pred = uncond + guidance * (cond_pred - uncond)
        return pred

    def _encode(
        self,
        image: torch.Tensor,
        tiling: VaeTiling | None,
        generator: torch.Generator,
        progress: ProgressFn,
        check_cancel: CancelFn,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def on_tile(done: int, total: int) -> None:
            progress("encode", done, total)

        latents = tiled_encode(
            self.vae,
            image,
            tiling,
            generator=generator,
            sample=True,
            check_cancel=check_cancel,
            on_tile=on_tile,
            from_unit=True,  # [0, 1] → [-1, 1] per tile: no image-sized temporary
            noise=noise,
        )
        return latents.to(device=self.choice.device, dtype=torch.float32)

    def _decode(
        self, latents: torch.Tensor, tiling: VaeTiling | None, progress: ProgressFn, check_cancel: CancelFn
    ) -> torch.Tensor:
        def on_tile(done: int, total: int) -> None:
            progress("decode", done, total)

        f = self.vae_scale_factor
        out = torch.empty(1, 3, latents.shape[-2] * f, latents.shape[-1] * f, dtype=torch.float32)
        tiled_decode(self.vae, latents, tiling, out=out, check_cancel=check_cancel, on_tile=on_tile)
        if not torch.isfinite(out).all() and self.vae.dtype != torch.float32:
            # Half-precision SD VAEs overflow on some images; decoding again in fp32 fixes it.
            torch.nn.Module.to(self.vae, torch.float32)
            tiled_decode(self.vae, latents, tiling, out=out, check_cancel=check_cancel, on_tile=on_tile)
        return out.add_(1).mul_(0.5).clamp_(0, 1)


def load_pasd_parts(model: InstalledModel) -> tuple[PasdUNet2DConditionModel, PasdControlNetModel]:
    """The PASD UNet and ControlNet of an installed folder, strictly loaded (every family of PASD)."""
    manifest = model.manifest
    unet = PasdUNet2DConditionModel.from_pretrained(manifest.resolve(model.root, "unet"))
    return unet, PasdControlNetModel.from_pretrained(manifest.resolve(model.root, "controlnet"))


def check_scheduler(root: Path, tasks: tuple[str, ...], config: dict[str, Any]) -> None:
    """A colour model needs its own scheduler: v-prediction on a zero-terminal-SNR schedule.

    PASD's colour model is trained that way (yangxy/PASD #37); with an epsilon scheduler (SD1.5's, a
    common mistake) it paints grey or broken pictures (#60, #75), so such a folder is refused.
    """
    if "colorize" not in tasks:
        return
    kind = config.get("prediction_type", "epsilon")
    zero_snr = bool(config.get("rescale_betas_zero_snr", False))
    if kind != "v_prediction" or not zero_snr:
        raise ModelLoadError(
            f"{root}: this colour model's scheduler is {kind}"
            f"{' with zero-terminal SNR' if zero_snr else ' without zero-terminal SNR'}, but PASD's colour "
            "model needs prediction_type 'v_prediction' and rescale_betas_zero_snr true (its own "
            "pasd_light_color/scheduler); with another it paints grey or broken colour. Download the "
            "model again (python -m backend download pasd-color), or fix scheduler_config.json."
        )


def renoise(
    latents: torch.Tensor, noise: torch.Tensor, level: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DDPM forward noising to training timestep ``level``: √ᾱ·x + √(1−ᾱ)·ε, whatever the solver's steps.

    Continuous and monotone in ``level`` (0 adds almost nothing, 999 nearly replaces the signal), and
    independent of the number of steps, as PASD's ``added_noise_level`` was meant.
    """
    if not 0 <= level < len(alphas_cumprod):
        raise ValueError(f"added_noise_level must be 0 to {len(alphas_cumprod) - 1}, got {level}")
    alpha = alphas_cumprod[level].to(device=latents.device, dtype=torch.float32)
    return (alpha.sqrt() * latents.float() + (1 - alpha).sqrt() * noise.float()).to(latents.dtype)


@dataclass(frozen=True)
class RestorationPull:
    """Restoration-guided sampling for PASD: the clean estimate x₀ of each step but the last is
    pulled towards the input's latents, ``x₀ ← x₀ − k·(x₀ − anchor)`` with ``k = w·(σ/σmax)^τ``, so
    the first steps (large σ) follow the input and the last ones are free, as SUPIR's sampler
    does. The model output is rewritten to the one that predicts the pulled x₀, so any solver runs
    it unchanged. ``weight`` is a number or a per-pixel map at latent size (0: no pull there)."""

    anchor: torch.Tensor
    strength: float
    weight: torch.Tensor | float = 1.0

    def __call__(
        self, scheduler: SchedulerMixin, latents: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        ac = scheduler.alphas_cumprod
        alpha = ac[int(t)].to(device=output.device, dtype=torch.float32)
        a, b = alpha.sqrt(), (1 - alpha).sqrt()
        sigma_max = ((1 - ac[-1]) / ac[-1]).sqrt().to(device=output.device, dtype=torch.float32)
        k = ((b / a) / sigma_max) ** self.strength * self.weight
        x = latents.float()
        kind = scheduler.config.prediction_type
        if isinstance(scheduler, EulerDiscreteScheduler):  # Euler's latents are x₀ + σ·ε
            x = x * a  # back to √ᾱ·x₀ + √(1−ᾱ)·ε
        x0 = a * x - b * output if kind == "v_prediction" else (x - b * output) / a
        x0 = x0 - k * (x0 - self.anchor)
        eps = (x - a * x0) / b
        return (a * eps - b * x0 if kind == "v_prediction" else eps).to(output.dtype)


def lcm_step(
    scheduler: LCMScheduler,
    output: torch.Tensor,
    t: torch.Tensor,
    latents: torch.Tensor,
    following: torch.Tensor | None,
    draw: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """One LCM step with our own noise: LCM's clean estimate (its boundary-condition ``denoised``), then,
    unless this is the last step, noised to the ``following`` timestep with ``draw()``.

    That is ``LCMScheduler.step``'s own formula, √ᾱ·x̂₀ + √(1−ᾱ)·ε (:func:`renoise`), with ε drawn by
    the caller: from the run's seeded generator, and over the whole image's latent for an anchored
    preview, which a step's own draw (at the crop's size) could not do.
    """
    spare = torch.Generator("cpu").manual_seed(0)  # for the draw step() makes and we do not use
    denoised = scheduler.step(output, t, latents, generator=spare, return_dict=True).denoised
    if following is None:
        return denoised
    return renoise(denoised, draw(), int(following), scheduler.alphas_cumprod)


def _noise_draw(
    generator: torch.Generator, anchor: NoiseAnchor | None, latents: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """A float32 draw shaped like ``latents`` from the run's CPU generator (anchored: the whole latent's,
    cut out), moved to the latents' device."""

    def draw() -> torch.Tensor:
        if anchor is not None:
            (noise,) = anchor.draw(generator, latents.shape[1], tuple(latents.shape[-2:]), (torch.float32,))
        else:
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        return noise.to(latents.device)

    return draw


def _clean_estimate(
    scheduler: SchedulerMixin, latents: torch.Tensor, output: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x0 from the model output at ``t``, on a copy shrunk to preview size (the formula is linear)."""
    size = (min(latents.shape[-2], 128), min(latents.shape[-1], 128))
    x, out = area_resize(latents.float(), size), area_resize(output.float(), size)
    alpha = scheduler.alphas_cumprod[int(t)].float()
    a, b = alpha.sqrt(), (1 - alpha).sqrt()
    if isinstance(scheduler, EulerDiscreteScheduler):
        x = x * a  # Euler's latents are x₀ + σ·ε with σ = b/a; back to the DDPM scale √ᾱ·x₀ + √(1−ᾱ)·ε
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return a * x - b * out
    if kind == "sample":
        return out
    return (x - b * out) / a.clamp(min=1e-3)
