"""The restoration engine: numpy image in, numpy image out, everything in between.

It owns what a user-facing run needs around the diffusion pipeline: checking input, choosing
sizes, tiles and device, the prompt, pre-scaling, region fidelity, the colour fix, colorization's
luminance transfer, alpha and bit depth, progress, cancellation and out-of-memory messages.
The CLI and the HTTP service both call :meth:`Engine.restore`.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from . import image_ops
from .devices import (
    DeviceChoice,
    auto_tile_sizes,
    choose_device,
    empty_cache,
    free_memory,
    is_out_of_memory,
    return_large_buffers_to_os,
)
from .faces import Face, FaceDetectionError, clip_faces, detect_faces, faces_mask
from .faces import describe as faces_describe
from .models.loading import ModelLoadError
from .models.pasd.styles import Style, StyleError, StyleReport, apply_style, resolve_style
from .models.registry import DEFAULT_MODEL_FOR_TASK, get_spec
from .models.store import InstalledModel, installed_models, resolve_model
from .pipelines.base import (
    DenoiseTiling,
    NoiseAnchor,
    PreviewFn,
    RestorationPipeline,
    SamplingKnobs,
    TraceFn,
    emit,
)
from .pipelines.captioner import SOURCE_MODEL_IDS, Captioner, Describer, WordSource, find_describer
from .pipelines.families import load_pipeline
from .pipelines.fast import FastModeError, enable_fast_mode
from .pipelines.params import RestoreParams
from .pipelines.prescale import make_prescaler
from .pipelines.preview import to_preview
from .pipelines.prompt import colorize_words, join_prompt
from .pipelines.tiled_vae import VaeTiling
from .pipelines.tiling import plan_tiles

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
MIN_PROCESS_SIDE = 64  # pixels; smaller sides leave the UNet's deepest level without room
COLORFIX_BAND = 256  # rows per band of the in-place colour fix


class EngineError(RuntimeError):
    """A run failed for a reason the user can act on; the message says how."""


class InputError(EngineError, ValueError):
    """The image, the mask or a parameter is unusable."""


class OutOfMemory(EngineError):
    """The device ran out of memory; the message suggests a smaller tile."""


class Canceled(Exception):
    """The run was canceled through its CancelToken."""


class CancelToken:
    """Cooperative cancellation: the engine checks it before every model call."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Canceled("canceled")


@dataclass(frozen=True)
class RunPlan:
    """Sizes and tiles of one run, decided before any model runs (also shown to users)."""

    input_size: tuple[int, int]  # (height, width)
    output_size: tuple[int, int]
    process_size: tuple[int, int]  # multiples of 8
    tile: int  # diffusion tile, process pixels
    vae_tile: int
    tiles: int  # number of diffusion tiles
    anchor: NoiseAnchor | None = None  # a framed crop: its place in the whole image's latent


@dataclass(frozen=True)
class RestoreResult:
    image: np.ndarray
    seed: int
    prompt: str
    negative_prompt: str
    model: str
    plan: RunPlan
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    params: RestoreParams | None = None  # what the run used: every unset parameter as the model's default
    faces: tuple[Face, ...] = ()  # the faces that were part of the foreground (input pixels)
    foreground: np.ndarray | None = None  # with faces: the soft foreground used (H×W float32, input size)


def plan_process_size(out_h: int, out_w: int, process_size: int, task: str) -> tuple[int, int]:
    """Size the diffusion runs at, before rounding to multiples of 8.

    Upscale: the output size, with the short side brought up to ``process_size`` (PASD works at
    768 and up), but for extreme aspect ratios never past the area of a 1:4 strip at that size.
    Colorize: the short side at ``process_size``, the long side at most twice that (colour is
    low-frequency; the luminance keeps full resolution anyway).
    """
    short, long_ = min(out_h, out_w), max(out_h, out_w)
    if task == "colorize":
        factor = process_size / short
        factor = min(factor, 2 * process_size / long_)
    else:
        factor = max(1.0, process_size / short)
        area_cap = math.sqrt(max(out_h * out_w, 4 * process_size**2) / (out_h * out_w))
        factor = min(factor, area_cap)
    factor = max(factor, MIN_PROCESS_SIDE / short)
    return out_h * factor, out_w * factor


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pth")


def weights_parameters(model: InstalledModel) -> int:
    """Roughly how many parameters a model folder's run loads: every weights file under it, its base
    folder and the files its manifest links (SUPIR's live in other entries' folders). Safetensors
    headers give exact counts; other files count as float32."""
    m, root = model.manifest, model.root
    places = {root.resolve(), (root / m.base_dir).resolve()}
    places |= {m.resolve(root, name) for name in m.extra}
    files: set[Path] = set()
    for place in places:
        if place.is_file():
            files.add(place)
        elif place.is_dir():
            files |= {p.resolve() for p in place.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()}
    total = 0
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
                continue
            except Exception:  # unreadable: count its bytes like the others
                pass
        total += path.stat().st_size // 4
    return total


def _round_to(value: float, unit: int) -> int:
    return max(unit, round(value / unit) * unit)


class Engine:
    """Loads models on demand (keeping the last one) and runs restorations one at a time."""

    def __init__(
        self,
        models_dir: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        offload: bool | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.choice: DeviceChoice = choose_device(device, dtype)
        return_large_buffers_to_os()
        self._offload = offload
        self._pipeline: RestorationPipeline | None = None
        self._loaded: Path | None = None
        self._describers: dict[WordSource, Describer] = {}
        self._key: tuple[Any, ...] | None = None  # what the loaded pipeline's weights are (pipeline_for)
        self._notes: list[str] = []  # what loading it did to them (styles, fast mode), for each run
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models
    def find_model(self, name: str | Path | None, task: str) -> InstalledModel:
        """The named model, or the task's default, or any installed model that can do the task."""
        if name:
            model = resolve_model(name, self.models_dir)
        else:
            candidates = [m for m in installed_models(self.models_dir) if task in m.manifest.tasks]
            preferred = [m for m in candidates if m.root.name == DEFAULT_MODEL_FOR_TASK[task]]
            if not candidates:
                default = DEFAULT_MODEL_FOR_TASK[task]
                raise ModelLoadError(
                    f"No model for {task} is installed. Install one with `python -m backend download "
                    f"{default}`, or name a model folder with --model."
                )
            model = (preferred or candidates)[0]
        if task not in model.manifest.tasks:
            raise ModelLoadError(
                f"Model {model.root.name!r} does not do {task} (it does {', '.join(model.manifest.tasks)})"
            )
        return model

    def resolved(self, params: RestoreParams, model: str | Path | None = None) -> RestoreParams:
        """``params`` with every unset model parameter as the chosen model's default (the task's
        default model's where no model can be found: the run itself then says what is missing)."""
        try:
            defaults = self.find_model(model, params.task).manifest.defaults(params.task)
        except ModelLoadError:
            defaults = get_spec(DEFAULT_MODEL_FOR_TASK[params.task]).defaults(params.task)
        return params.resolved(defaults)

    @property
    def loaded_model(self) -> str | None:
        return self._loaded.name if self._loaded else None

    def pipeline_for(self, model: InstalledModel, params: RestoreParams | None = None) -> RestorationPipeline:
        """The model's pipeline, loaded once and kept while the next run wants the same weights: the
        same model, style (with its strength) and fast mode. Styles and the fast mode change the
        weights themselves, so another choice loads the model afresh."""
        style = None
        if params is not None and params.style is not None:
            if model.manifest.family != "pasd":
                raise InputError(
                    f"Styles are personalized SD1.5 bases: they work with the PASD SD1.5 models, not with "
                    f"{model.root.name} ({model.manifest.family}). Choose a PASD model or no style."
                )
            try:
                style = resolve_style(params.style, self.models_dir)
            except StyleError as exc:
                raise InputError(str(exc)) from exc
        fast = bool(params is not None and params.fast)
        key = (
            model.root,
            (str(style.path), params.style_strength, params.style_lora_scaling) if style and params else None,
            fast,
        )
        if self._pipeline is not None and self._key == key:
            return self._pipeline
        self.unload()
        offload = self._offload
        if offload is None:
            offload = self._should_offload(model)
        log.info(
            "loading %s on %s (%s, offload=%s)", model.root, self.choice.name, self.choice.dtype, offload
        )
        pipeline = load_pipeline(model, self.choice, offload=offload)
        self._notes = []
        try:
            builtin = model.manifest.extra.get("style")
            if builtin:  # a ModelScope snapshot's own checkpoint, over its UNet and VAE as ModelScope does
                path = model.manifest.resolve(model.root, "style")
                report = apply_style(
                    Style(path.stem, path, "checkpoint"), pipeline.unet, pipeline.vae,  # type: ignore[attr-defined]
                    pipeline.text_encoder, 1.0, keep_text_encoder=True,  # type: ignore[attr-defined]
                )  # fmt: skip
                self._notes.append(f"its own checkpoint {path.name} is loaded over the UNet and the VAE")
            if style is not None and params is not None:
                report = apply_style(
                    style, pipeline.unet, pipeline.vae, pipeline.text_encoder,  # type: ignore[attr-defined]
                    params.style_strength, params.style_lora_scaling,  # type: ignore[arg-type]
                )  # fmt: skip
                self._notes.append(_style_note(report))
            if fast:
                layers = enable_fast_mode(pipeline, self.models_dir)
                self._notes.append(f"fast mode: the LCM-LoRA is fused into {layers} UNet layers")
        except (StyleError, FastModeError) as exc:
            del pipeline
            empty_cache(self.choice.device)
            raise InputError(str(exc)) from exc
        self._pipeline = pipeline
        self._loaded = model.root
        self._key = key
        return self._pipeline

    def _should_offload(self, model: InstalledModel) -> bool:
        """Offload when the weights would take more than half of the accelerator's free memory."""
        if not self.choice.is_accelerator:
            return False
        bytes_per = 2 if self.choice.dtype != torch.float32 else 4
        return weights_parameters(model) * bytes_per > free_memory(self.choice.device) / 2

    def describer(self, source: WordSource) -> Describer | None:
        """The model behind automatic prompt words (BLIP captions or the ImageNet classifier), loaded
        once; None while its weights are not installed (installing it later takes effect)."""
        if source not in self._describers:
            found = find_describer(source, self.models_dir, self.choice.device, self.choice.dtype)
            if found is None:
                return None
            self._describers[source] = found
        return self._describers[source]

    def captioner(self) -> Captioner | None:
        found = self.describer("caption")
        return found if isinstance(found, Captioner) else None

    def unload(self) -> None:
        self._pipeline = None
        self._loaded = None
        self._key = None
        empty_cache(self.choice.device)

    # ------------------------------------------------------------------ planning
    def plan(
        self, height: int, width: int, params: RestoreParams, pipeline: RestorationPipeline | None
    ) -> RunPlan:
        """Sizes and tiles for ``params`` as resolved for its model (:meth:`resolved`)."""
        if params.process_size is None:
            raise ValueError("plan() needs resolved parameters: call Engine.resolved first")
        out_h = max(1, round(height * params.scale))
        out_w = max(1, round(width * params.scale))
        unit = getattr(pipeline, "size_unit", 8)  # the sides a family's pipeline accepts
        anchor = None
        if params.frame is None:
            fh, fw = plan_process_size(out_h, out_w, params.process_size, params.task)
            ph, pw = _round_to(fh, unit), _round_to(fw, unit)
        else:  # a crop, processed as the whole image would be: same scale, same noise at its place
            x, y, whole_w, whole_h = params.frame
            if x + width > whole_w or y + height > whole_h:
                raise InputError(
                    f"the {width}x{height} crop at {x},{y} does not fit in the {whole_w}x{whole_h} frame"
                )
            wh, ww = max(1, round(whole_h * params.scale)), max(1, round(whole_w * params.scale))
            fh, fw = plan_process_size(wh, ww, params.process_size, params.task)
            ratio = fh / wh  # process pixels per output pixel, as for the whole image
            ph, pw = _round_to(out_h * ratio, unit), _round_to(out_w * ratio, unit)
            lh, lw = _round_to(fh, unit) // 8, _round_to(fw, unit) // 8
            top = min(max(0, round(y * params.scale * ratio / 8)), max(0, lh - ph // 8))
            left = min(max(0, round(x * params.scale * ratio / 8)), max(0, lw - pw // 8))
            anchor = NoiseAnchor(top, left, max(lh, top + ph // 8), max(lw, left + pw // 8))
        tile, vae_tile = params.tile, params.vae_tile
        if tile is None or vae_tile is None:
            widths = pipeline.widths() if pipeline is not None else (320, 128)
            auto = auto_tile_sizes(free_memory(self.choice.device), *widths, self.choice.dtype)
            tile = tile or auto.diffusion
            vae_tile = vae_tile or auto.vae
        tile = max(unit, min(tile, max(ph, pw)) // unit * unit)
        lt = tile // 8
        overlap = round(lt * params.tile_overlap)
        count = len(plan_tiles(ph // 8, pw // 8, lt, overlap))
        return RunPlan((height, width), (out_h, out_w), (ph, pw), tile, vae_tile, count, anchor)

    # ------------------------------------------------------------------ running
    def restore(
        self,
        image: np.ndarray,
        params: RestoreParams,
        mask: np.ndarray | None = None,
        model: str | Path | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        preview: PreviewFn | None = None,
        trace: TraceFn | None = None,
    ) -> RestoreResult:
        """Restore (upscale) or colorize ``image`` (H×W or H×W×C, C in 1–4, uint8/uint16/float32).

        The result has the input's dtype and its channels (grey stays grey when upscaling; colorize
        turns grey into RGB); alpha is resized separately and kept. ``preview`` receives small
        H×W×3 uint8 pictures as the run goes: the pre-scaled input, each step's estimate, the result.
        ``trace`` (for the parity test against the reference) receives float32 copies of the stages:
        ``cond`` (the pre-scaled input), ``scale_map`` (with a mask), the pipeline's stages (see
        :meth:`PasdPipeline.__call__`), ``color_fixed`` (upscale with the colour fix) and ``final``
        (the result before alpha and bit depth); it does not change the result.
        """
        with self._lock, torch.inference_mode():
            return self._restore(
                image, params, mask, model, progress, cancel or CancelToken(), preview, trace
            )

    def _restore(
        self,
        image: np.ndarray,
        params: RestoreParams,
        mask: np.ndarray | None,
        model_name: str | Path | None,
        progress: ProgressFn | None,
        cancel: CancelToken,
        preview: PreviewFn | None = None,
        trace: TraceFn | None = None,
    ) -> RestoreResult:
        started = time.perf_counter()
        try:
            params = params.validate()
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        pixels = check_image(image)
        height, width, _ = pixels.shape
        soft = check_mask(mask, (height, width)) if mask is not None else None
        stage = ["load"]

        def report(name: str, step: int, total: int) -> None:
            stage[0] = name
            if progress is not None:
                progress(name, step, total)

        report("load", 0, 1)
        model = self.find_model(model_name, params.task)
        params = params.resolved(model.manifest.defaults(params.task))
        foreground, faces, face_notes = self._foreground(pixels, soft, params)
        pipeline = self.pipeline_for(model, params)
        plan = self.plan(height, width, params, pipeline)
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        try:
            out, prompt, negative, notes = self._run(
                pixels, soft, params, plan, pipeline, seed, report, cancel, preview, trace, foreground
            )
        except Canceled:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                empty_cache(self.choice.device)
                where = "the GPU" if self.choice.is_accelerator else "memory"
                smaller = max(64, plan.tile // 2 // 64 * 64)
                smaller_vae = max(64, plan.vae_tile // 2 // 64 * 64)
                raise OutOfMemory(
                    f"Ran out of memory on {self.choice.name} while in stage '{stage[0]}' with "
                    f"{plan.tile}px diffusion tiles and {plan.vae_tile}px VAE tiles. Try smaller tiles "
                    f"(for example {smaller}px diffusion tiles and {smaller_vae}px VAE tiles), close other "
                    f"programs that use {where}, or use a smaller scale."
                ) from exc
            raise
        report("done", 1, 1)
        return RestoreResult(
            image=out,
            seed=seed,
            prompt=prompt,
            negative_prompt=negative,
            model=model.root.name,
            plan=plan,
            seconds=time.perf_counter() - started,
            notes=(*self._notes, *face_notes, *notes),
            params=params,
            faces=faces,
            foreground=foreground if faces else None,
        )

    def _foreground(
        self, pixels: np.ndarray, soft: np.ndarray | None, params: RestoreParams
    ) -> tuple[np.ndarray | None, tuple[Face, ...], list[str]]:
        """The mask that gets ``fidelity_fg``: the user's, faces (chosen or found), or both.

        The colorize region stays the user's mask alone: faces change fidelity, not where colour goes.
        """
        height, width = pixels.shape[:2]
        if params.faces == "off":
            return soft, (), []
        if params.face_boxes is not None:
            dx, dy = (params.frame[0], params.frame[1]) if params.frame is not None else (0, 0)
            chosen = [Face.from_box(list(box)).moved(-dx, -dy) for box in params.face_boxes]
            faces = clip_faces(chosen, (height, width))
            notes = [f"{len(faces)} chosen face{'s' if len(faces) != 1 else ''} as the foreground"]
        elif params.faces == "on" or (
            params.faces == "auto" and soft is None and params.fidelity_fg != params.fidelity_bg
        ):
            try:
                faces = detect_faces(pixels)
            except FaceDetectionError as exc:
                if params.faces == "on":
                    raise InputError(str(exc)) from exc
                return soft, (), [f"faces were not looked for: {exc}"]
            notes = [
                faces_describe(faces)
                + ("" if faces else "; the background fidelity applies everywhere" if soft is None else "")
            ]
        else:
            return soft, (), []
        if not faces:
            return soft, (), notes
        mask = faces_mask((height, width), faces)
        if soft is not None:
            np.maximum(mask, soft, out=mask)
        return mask, tuple(faces), notes

    def _run(
        self,
        pixels: np.ndarray,
        soft: np.ndarray | None,
        params: RestoreParams,
        plan: RunPlan,
        pipeline: RestorationPipeline,
        seed: int,
        report: ProgressFn,
        cancel: CancelToken,
        preview: PreviewFn | None = None,
        trace: TraceFn | None = None,
        foreground: np.ndarray | None = None,
    ) -> tuple[np.ndarray, str, str, list[str]]:
        """``soft`` is the user's mask (the colorize region); ``foreground`` the fidelity mask (the
        user's mask with any faces)."""
        notes: list[str] = []
        height, width, channels = pixels.shape
        has_alpha = channels in (2, 4)
        colour_channels = 1 if channels <= 2 else 3
        rgb = image_ops.to_float(pixels[..., :colour_channels])
        original = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        if colour_channels == 1:
            original = original.expand(1, 3, height, width)
        process = plan.process_size

        report("prescale", 0, 1)
        if params.task == "colorize":
            grey = image_ops.to_grey(original)
            cond = image_ops.resize(grey.expand(1, 3, height, width), process)
        else:
            prescaler = make_prescaler(params.prescaler, self.choice.device, self.choice.dtype)
            cond = prescaler(original.contiguous(), process, check_cancel=cancel.check).clamp_(0, 1)
        report("prescale", 1, 1)
        emit(trace, "cond", cond)
        if preview is not None:
            preview(to_preview(cond))

        restore: torch.Tensor | float = float(params.restoration_bg)
        if foreground is not None:
            m = image_ops.resize(torch.from_numpy(foreground)[None, None], process, kind="mask")
            if params.restoration_fg != params.restoration_bg:
                restore = m * (params.restoration_fg - params.restoration_bg) + params.restoration_bg
            # not in place: at the input's own size the resized mask is the caller's array
            scale: torch.Tensor | float = m * (params.fidelity_fg - params.fidelity_bg) + params.fidelity_bg
            emit(trace, "scale_map", scale)
        else:
            scale = float(params.fidelity_bg)
        knobs = SamplingKnobs(
            guidance_start=params.guidance_start,
            fidelity_start=params.fidelity_start,
            restoration=params.restoration,
            restore_map=restore,
            churn=params.churn,
            churn_noise=params.churn_noise,
            color_fix=params.color_fix,
            color_fix_method=params.color_fix_method,
        )

        auto_words = ""
        if params.auto_prompt:
            source = params.auto_prompt_source
            describer = self.describer(source)  # type: ignore[arg-type]
            if describer is None:
                notes.append(
                    f"automatic description is off: its model ({SOURCE_MODEL_IDS[source]}) is not installed"
                )
            else:
                cancel.check()
                report("describe", 0, 1)
                small = image_ops.resize(cond, _fit(process, 384))
                auto_words = describer.describe(small)
                if source == "classify" and not auto_words:
                    label, p = describer.classify(small)  # type: ignore[union-attr]
                    notes.append(f"no class words: the classifier is not sure ({label}, p={p:.2f} < 0.1)")
                if params.task == "colorize":
                    auto_words = colorize_words(auto_words)
        prompt = join_prompt(params.prompt, auto_words, params.quality_prompt or "")
        negative = join_prompt(params.negative_prompt or "")
        if pipeline.prompt_token_count(prompt) > pipeline.max_prompt_tokens:
            notes.append(f"the prompt is longer than {pipeline.max_prompt_tokens} tokens; the end is cut")

        lt = plan.tile // 8
        tiling = DenoiseTiling(lt, round(lt * params.tile_overlap))
        vae_tiling = None
        if max(process) > plan.vae_tile:
            vae_tiling = VaeTiling(tile=plan.vae_tile // 8, halo=max(4, plan.vae_tile // 64))
        restored = pipeline(
            cond,
            prompt=prompt,
            negative_prompt=negative,
            steps=int(params.steps or 0),
            guidance=float(params.guidance or 0.0),
            seed=seed,
            scale_map=scale,
            added_noise_level=params.added_noise_level,
            tiling=tiling,
            vae_tiling=vae_tiling,
            progress=report,
            check_cancel=cancel.check,
            preview=preview,
            trace=trace,
            anchor=plan.anchor,
            knobs=knobs,
        )
        del scale, knobs, restore
        cancel.check()
        report("finish", 0, 1)
        if params.task == "upscale":
            if params.color_fix and not pipeline.fixes_colour and params.color_fix_method == "adain":
                restored = image_ops.adain_color_fix(restored, cond).clamp_(0, 1)
            elif params.color_fix and not pipeline.fixes_colour:
                restored = image_ops.wavelet_color_fix(restored, cond, tile=COLORFIX_BAND, in_place=True)
                emit(trace, "color_fixed", restored)
            del cond
            result = image_ops.resize(restored, plan.output_size)
            del restored
            if colour_channels == 1:
                result = image_ops.to_grey(result)
        else:
            del cond
            colour = image_ops.resize(restored, (height, width))
            del restored
            mask_t = torch.from_numpy(soft)[None, None] if soft is not None else None
            result = image_ops.transfer_colour(original, colour, mask_t)
            colour_channels = 3
        emit(trace, "final", result)
        out = result[0].permute(1, 2, 0).numpy()
        if has_alpha:
            alpha = torch.from_numpy(image_ops.to_float(pixels[..., -1:])).permute(2, 0, 1)[None]
            alpha = image_ops.resize(alpha, plan.output_size, kind="alpha")[0].permute(1, 2, 0).numpy()
            out = np.concatenate([out, alpha], axis=2)
        if preview is not None:
            preview(to_preview(result if colour_channels == 3 else result.expand(1, 3, -1, -1)))
        report("finish", 1, 1)
        return np.ascontiguousarray(image_ops.from_float(out, pixels.dtype)), prompt, negative, notes


def _style_note(report: StyleReport) -> str:
    if report.kind == "lora":
        return f"style {report.style}: a LoRA merged into {report.lora_layers} layers at {report.strength:g}"
    parts = [f"style {report.style}: its UNet blended in at {report.strength:g}"]
    if report.vae_replaced:
        parts.append("its VAE")
    if report.text_encoder_replaced:
        parts.append("its text encoder")
    return ", ".join(parts)


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    h, w = size
    f = min(1.0, longest / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def check_image(image: np.ndarray) -> np.ndarray:
    """H×W×C view of a valid image, or InputError saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"the image must be a numpy array, not {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InputError(
            "the image must be H×W with 1 to 4 channels (grey, grey+alpha, RGB, RGBA), "
            f"got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"the image is empty ({image.shape[1]}×{image.shape[0]} pixels)")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"the image must be 8-bit, 16-bit or float32, not {image.dtype}")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise InputError("the image holds NaN or infinite values")
    return image


def check_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float32 H×W mask in [0, 1] from an 8/16-bit or float mask of the image's size."""
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"the mask must be a single channel, got shape {mask.shape}")
    if mask.shape != size:
        raise InputError(
            f"the mask is {mask.shape[1]}×{mask.shape[0]} but the image is {size[1]}×{size[0]}; "
            "they must be the same size"
        )
    if mask.dtype in (np.uint8, np.uint16):
        return image_ops.to_float(mask)
    mask = mask.astype(np.float32, copy=False)
    if not np.isfinite(mask).all():
        raise InputError("the mask holds NaN or infinite values")
    if mask.min() < 0 or mask.max() > 1:
        raise InputError(f"mask values must lie in [0, 1], found {mask.min():g} to {mask.max():g}")
    return np.ascontiguousarray(mask)
