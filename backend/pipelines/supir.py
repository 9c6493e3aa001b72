"""The SUPIR pipeline: degradation-robust encoding, restoration-guided EDM sampling with a control
model, decoding and the colour fix against the stage-1 image.

Covered by SUPIR's non-commercial terms (``backend/models/supir/NOTICE.md``); imported only when a
SUPIR model runs. It follows the official ``SUPIRModel.batchify_sample`` (github.com/Fanghua-Yu/SUPIR):

1. ``z_LQ`` = the denoise encoder's mean latent of the input (the control model's hint);
2. ``x_st1`` = its decoding (the "stage-1" image) and ``z_st1`` = the regular encoder's *sample* of
   it (the anchor restoration guidance pulls towards);
3. sampling from noise with :mod:`backend.models.supir.sampler`;
4. decoding, then the wavelet colour fix against ``x_st1``.

What it adds: any image size (latent tiles whose clean estimates are blended every step, so there
are no seams and one tile equals the untiled run exactly; the tiled VAE for all three VAE passes),
per-pixel control scale and restoration weight (the selection or faces get their own fidelity),
offload by stage, and previews whose noise is the whole image's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from ..devices import DeviceChoice
from ..image_ops import adain_color_fix, area_resize, wavelet_color_fix
from ..models.loading import ModelLoadError
from ..models.sdxl.text import SdxlText
from ..models.store import InstalledModel
from ..models.supir.configs import SupirConfigs, full_configs, tiny_configs
from ..models.supir.loading import (
    SDXL_PARTS,
    SUPIR_PARTS,
    LoadReport,
    SupirModel,
    build,
    finish,
    load_base_folders,
    load_parts,
    read_checkpoint,
)
from ..models.supir.sampler import RestoreSampling, denoise, sample, training_sigmas
from ..models.supir.unet import conditioning_vector
from .base import (
    CancelFn,
    DenoiseTiling,
    NoiseAnchor,
    PreviewFn,
    ProgressFn,
    SamplingKnobs,
    TraceFn,
    emit,
    no_cancel,
    no_progress,
    visiting,
)
from .preview import LatentPreview
from .tiled_vae import VaeTiling, tiled_decode, tiled_encode
from .tiling import blend_weights, plan_tiles

# SUPIR conditions on these sizes whatever the image (official ``prepare_condition``).
SIZE_IDS = (1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0)


class SupirPipeline:
    """SUPIR's parts on one device; callable on a pre-scaled RGB image."""

    fixes_colour = True
    size_unit = 32  # the latent is halved twice inside the UNet
    supports_fast = False  # no LCM-LoRA fast mode (fast.enable_fast_mode refuses it)

    def __init__(
        self,
        model: SupirModel,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        choice: DeviceChoice,
        offload: bool = False,
        report: LoadReport | None = None,
    ) -> None:
        self.model = model
        self.text = SdxlText(model.text_encoder, model.text_encoder_2, tokenizer, tokenizer_2)
        self.choice = choice
        self.offload = offload
        self.report = report or LoadReport()
        self.vae_scale_factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
        self.max_prompt_tokens = self.text.max_tokens
        self.sigmas = training_sigmas().to(self._home)
        for name, module in model.modules().items():
            # The VAE never runs in float16 (SDXL's VAE overflows; the official code refuses it).
            dtype = choice.vae_dtype if name in ("vae", "denoise_encoder") else choice.dtype
            if dtype == torch.float16 and name in ("vae", "denoise_encoder"):
                dtype = torch.bfloat16 if choice.device.type == "cuda" else torch.float32
            torch.nn.Module.to(module, device=self._home, dtype=dtype).eval().requires_grad_(False)

    @property
    def _home(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.choice.device

    def widths(self) -> tuple[int, int]:
        return int(self.model.unet.config.block_out_channels[0]), int(
            self.model.vae.config.block_out_channels[0]
        )

    def prompt_token_count(self, prompt: str) -> int:
        return self.text.token_count(prompt)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_installed(
        cls, model: InstalledModel, choice: DeviceChoice, offload: bool = False
    ) -> SupirPipeline:
        """SUPIR's own file plus the SDXL base: its official single file when the manifest names
        one (``base_file``), else the diffusers folders under the base folder."""
        root, manifest = model.root, model.manifest
        tokenizers = {n: manifest.resolve(root, n) for n in ("tokenizer", "tokenizer_2")}
        try:
            tok = {n: CLIPTokenizer.from_pretrained(str(p)) for n, p in tokenizers.items()}
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{root}: the SDXL tokenizers could not be loaded: {exc}") from exc
        configs = _configs(manifest.tiny, tok["tokenizer"])
        supir_file = manifest.resolve(root, "supir")
        base_file = manifest.resolve(root, "base_file") if "base_file" in manifest.extra else None
        parts = load_supir(
            configs, supir_file, base_file, {n: manifest.resolve(root, n) for n in _BASE_FOLDERS}
        )
        return cls(parts[0], tok["tokenizer"], tok["tokenizer_2"], choice, offload=offload, report=parts[1])

    def _on_device(self, *modules: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """With offload, a component visits the accelerator only while its stage runs."""
        return visiting(self.choice.device, self.offload, *modules)

    # ------------------------------------------------------------------ run
    def conditioning(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[uncond, cond] text states and the added-condition ``vector`` (pooled text and the constant
        sizes), as the official conditioner makes them."""
        m = self.model
        with self._on_device(m.text_encoder, m.text_encoder_2):
            states, pooled = self.text.encode([negative_prompt, prompt], self.choice.device)
        ids = torch.tensor([SIZE_IDS, SIZE_IDS], device=self.choice.device)
        vector = conditioning_vector(m.unet, pooled.float(), ids)
        return states.to(self.choice.dtype), {"vector": vector.to(self.choice.dtype)}

    def __call__(
        self,
        image: torch.Tensor,
        *,
        prompt: str,
        negative_prompt: str,
        steps: int = 50,
        guidance: float = 4.0,
        seed: int = 0,
        scale_map: torch.Tensor | float = 1.0,
        added_noise_level: int | None = None,
        tiling: DenoiseTiling | None = None,
        vae_tiling: VaeTiling | None = None,
        progress: ProgressFn = no_progress,
        check_cancel: CancelFn = no_cancel,
        preview: PreviewFn | None = None,
        trace: TraceFn | None = None,
        anchor: NoiseAnchor | None = None,
        knobs: SamplingKnobs | None = None,
    ) -> torch.Tensor:
        """Restore ``image`` ([1, 3, H, W] in [0, 1], sides multiples of 32) → [1, 3, H, W] in [0, 1].

        ``scale_map`` is the control scale λ (a float or a [1, 1, H, W] map); ``knobs`` the
        sampler's other settings (:class:`SamplingKnobs`; unset ones take SUPIR's ``test.py``
        defaults). ``trace`` gets ``z_lq``, ``x_stage1``, ``z_stage1``, ``noise``, ``step_{i}``,
        ``samples`` and ``decoded`` (before the colour fix); ``added_noise_level`` is unused.
        """
        knobs = knobs or SamplingKnobs()
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image must be [1, 3, H, W], got {list(image.shape)}")
        height, width = image.shape[-2:]
        unit = self.vae_scale_factor * 4  # the UNet halves the latent twice
        if height % unit or width % unit:
            raise ValueError(f"image sides must be multiples of {unit}, got {height}x{width}")
        for name, value in (("scale map", scale_map), ("restoration map", knobs.restore_map)):
            if torch.is_tensor(value) and value.shape[-2:] != image.shape[-2:]:
                raise ValueError(f"{name} is {list(value.shape)}, image is {list(image.shape)}")
        f = self.vae_scale_factor
        lh, lw = height // f, width // f
        device = self.choice.device
        m = self.model
        sampling = RestoreSampling(
            steps=steps,
            cfg=guidance,
            cfg_start=guidance if knobs.guidance_start is None else knobs.guidance_start,
            control_scale_start=knobs.fidelity_start,
            restoration=-1.0 if knobs.restoration is None else knobs.restoration,
            churn=5.0 if knobs.churn is None else knobs.churn,
            noise=1.01 if knobs.churn_noise is None else knobs.churn_noise,
        )
        generator = torch.Generator("cpu").manual_seed(seed)
        vae_dtype = next(m.vae.parameters()).dtype

        def draw() -> torch.Tensor:
            if anchor is not None:
                return anchor.draw(generator, 4, (lh, lw), (torch.float32,))[0].to(device)
            return torch.randn((1, 4, lh, lw), generator=generator, dtype=torch.float32).to(device)

        check_cancel()
        states, added = self.conditioning(prompt, negative_prompt)
        emit(trace, "prompt_embeds", states)
        emit(trace, "vector", added["vector"])

        with self._on_device(m.vae, m.denoise_encoder):
            z_lq = self._encode(image, vae_tiling, None, "encode", progress, check_cancel, denoise=True)
            emit(trace, "z_lq", z_lq)
            x_stage1 = self._decode(z_lq, vae_tiling, "stage 1", progress, check_cancel)
            emit(trace, "x_stage1", x_stage1)
            anchor_noise = draw().to(vae_dtype)
            z_stage1 = self._encode(x_stage1, vae_tiling, anchor_noise, "encode", progress, check_cancel)
            emit(trace, "z_stage1", z_stage1)
        del anchor_noise

        noise = draw()
        emit(trace, "noise", noise)
        lam = _latent_map(scale_map, (lh, lw), device)
        restore = _latent_map(knobs.restore_map, (lh, lw), device)
        plan = tiling or DenoiseTiling(max(lh, lw), 0)
        tiles = plan_tiles(lh, lw, plan.tile, plan.overlap)
        weights = [w.to(device) for w in blend_weights(tiles, lh, lw)]
        sigmas = self.sigmas.to(device)
        previewer = LatentPreview(z_lq, x_stage1.add(1).mul(0.5)) if preview is not None else None
        estimate: list[torch.Tensor] = []

        def guided(
            x: torch.Tensor, sigma_hat: torch.Tensor, scale: torch.Tensor | float, w: torch.Tensor
        ) -> torch.Tensor:
            out = torch.zeros_like(x)
            for tile, weight in zip(tiles, weights, strict=True):
                check_cancel()
                rows, cols = tile.slices()
                part, hint = x[..., rows, cols], z_lq[..., rows, cols]
                tile_scale = scale[..., rows, cols] if torch.is_tensor(scale) else scale
                network = self._network(states, added, torch.cat([hint, hint]), tile_scale)
                d = denoise(network, torch.cat([part, part]), torch.cat([sigma_hat, sigma_hat]), sigmas)
                uncond, cond = d.chunk(2)
                out[..., rows, cols] += (uncond + w.view(-1, 1, 1, 1) * (cond - uncond)) * weight
            estimate[:] = [out]
            return out

        def on_step(i: int, x: torch.Tensor) -> None:
            progress("denoise", i + 1, steps)
            emit(trace, f"step_{i}", x)
            if previewer is not None and preview is not None:
                preview(previewer(estimate[0]))

        progress("denoise", 0, steps)
        with self._on_device(m.unet, m.control):
            latents = sample(
                sampling,
                guided,
                noise,
                z_stage1,
                draw,
                control_scale=lam,
                restore_weight=restore,
                on_step=on_step,
            )
        emit(trace, "samples", latents)
        with self._on_device(m.vae):
            decoded = self._decode(latents, vae_tiling, "decode", progress, check_cancel)
        emit(trace, "decoded", decoded)
        if knobs.color_fix and knobs.color_fix_method == "adain":  # in [-1, 1], as SUPIR does
            decoded = adain_color_fix(decoded, x_stage1)
        out = decoded.add_(1).mul_(0.5)
        if knobs.color_fix and knobs.color_fix_method != "adain":
            out = wavelet_color_fix(out, x_stage1.add_(1).mul_(0.5), in_place=True)
        return out.clamp_(0, 1)

    def _network(
        self,
        states: torch.Tensor,
        added: dict[str, torch.Tensor],
        hint: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """ε(x, t) of the UNet fed by the control model (official ``ControlWrapper``), float32 out."""
        m, dtype = self.model, self.choice.dtype
        hint = hint.to(dtype)
        if torch.is_tensor(scale):
            scale = scale.to(dtype)

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = x.to(dtype)
            control = m.control(hint, x, t, states, added)
            return m.unet(x, t, states, added, control, scale).float()

        return eps

    def _encode(
        self,
        image: torch.Tensor,
        tiling: VaeTiling | None,
        noise: torch.Tensor | None,
        stage: str,
        progress: ProgressFn,
        check_cancel: CancelFn,
        denoise: bool = False,
    ) -> torch.Tensor:
        """Scaled latents: the denoise encoder's mean of a [0, 1] input, or the VAE's sample (with
        ``noise``) of a [-1, 1] one."""

        def on_tile(done: int, total: int) -> None:
            progress(stage, done, total)

        latents = tiled_encode(
            self.model.vae,
            image,
            tiling,
            sample=noise is not None,
            noise=noise,
            check_cancel=check_cancel,
            on_tile=on_tile,
            from_unit=denoise,
            encoder=self.model.denoise_encoder if denoise else None,
        )
        return latents.to(device=self.choice.device, dtype=torch.float32)

    def _decode(
        self,
        latents: torch.Tensor,
        tiling: VaeTiling | None,
        stage: str,
        progress: ProgressFn,
        check_cancel: CancelFn,
    ) -> torch.Tensor:
        """The decoded image in [-1, 1], unclamped (the stage-1 image is re-encoded as it is)."""

        def on_tile(done: int, total: int) -> None:
            progress(stage, done, total)

        f = self.vae_scale_factor
        out = torch.empty(1, 3, latents.shape[-2] * f, latents.shape[-1] * f, dtype=torch.float32)
        tiled_decode(self.model.vae, latents, tiling, out=out, check_cancel=check_cancel, on_tile=on_tile)
        return out


def _latent_map(
    value: torch.Tensor | float, size: tuple[int, int], device: torch.device
) -> torch.Tensor | float:
    if not torch.is_tensor(value):
        return float(value)
    return area_resize(value.float(), size).to(device)


_BASE_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _configs(tiny: bool, tokenizer: CLIPTokenizer) -> SupirConfigs:
    if tiny:
        return tiny_configs(len(tokenizer), int(tokenizer.eos_token_id))
    return full_configs()


def load_supir(
    configs: SupirConfigs, supir_file: Path, base_file: Path | None, base_folders: dict[str, Path]
) -> tuple[SupirModel, LoadReport]:
    """Build SUPIR on the meta device and load it strictly: SUPIR's parts from ``supir_file``,
    the SDXL base from ``base_file`` (official single file) or else from ``base_folders``."""
    if not supir_file.is_file():
        raise ModelLoadError(f"SUPIR's weights are missing: no file {supir_file}")
    model = build(configs)
    report = LoadReport()
    if base_file is not None:
        if not base_file.is_file():
            raise ModelLoadError(f"The SDXL base file is missing: {base_file}")
        load_parts(model, configs, read_checkpoint(base_file), SDXL_PARTS, str(base_file), report)
    else:
        load_base_folders(model, base_folders)
    load_parts(model, configs, read_checkpoint(supir_file), SUPIR_PARTS, str(supir_file), report)
    return finish(model), report
