"""What every family's pipeline shares with the engine: the interface it implements, and the values
that cross it (tiles, noise anchors, conditioning, progress, cancel, preview and trace callbacks).

The engine (``backend/engine.py``) knows no family: it loads a model's pipeline through
:func:`backend.pipelines.families.load_pipeline` and drives it only through
:class:`RestorationPipeline`. A new family adds one pipeline module and one line there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .tiled_vae import VaeTiling

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], None]
PreviewFn = Callable[[np.ndarray], None]
# Receives named intermediate tensors (float32 copies on the CPU) of one run, for comparing the stages
# with the reference implementation; see each pipeline's ``__call__`` for the names.
TraceFn = Callable[[str, torch.Tensor], None]


def no_progress(stage: str, step: int, total: int) -> None:
    return None


def no_cancel() -> None:
    return None


@contextlib.contextmanager
def visiting(device: torch.device, offload: bool, *modules: torch.nn.Module) -> Iterator[None]:
    """With offload, ``modules`` visit ``device`` only while the stage inside runs (then back to the
    CPU, and CUDA's cache is emptied); without, nothing moves."""
    if not offload:
        yield
        return
    for module in modules:
        torch.nn.Module.to(module, device)
    try:
        yield
    finally:
        for module in modules:
            torch.nn.Module.to(module, "cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def emit(trace: TraceFn | None, name: str, tensor: torch.Tensor) -> None:
    """Hand ``trace`` a float32 CPU copy of ``tensor`` (later in-place work must not alter what it got)."""
    if trace is not None:
        trace(name, tensor.detach().to(device="cpu", dtype=torch.float32, copy=True))


@dataclass(frozen=True)
class NoiseAnchor:
    """Where an image lies in a larger one, in latent pixels: ``top``, ``left`` and the larger size.

    A preview runs a crop of the image the user will apply. Drawing the *whole* latent's noise in
    the order a whole run draws it and cutting out the crop's part gives the crop the very noise the
    whole run has there, so the preview shows the details Apply makes. For the whole image
    (``top = left = 0``, same size) the draws equal an unanchored run's exactly.
    """

    top: int
    left: int
    height: int
    width: int

    def draw(
        self,
        generator: torch.Generator,
        channels: int,
        size: tuple[int, int],
        dtypes: tuple[torch.dtype, ...],
    ) -> tuple[torch.Tensor, ...]:
        """One whole-latent draw per dtype, in order (each family draws its own sequence), cut to ``size``."""
        h, w = size
        if self.top < 0 or self.left < 0 or self.top + h > self.height or self.left + w > self.width:
            raise ValueError(
                f"a {h}x{w} latent at {self.top},{self.left} is outside {self.height}x{self.width}"
            )
        whole = (1, channels, self.height, self.width)
        part = (..., slice(self.top, self.top + h), slice(self.left, self.left + w))
        return tuple(torch.randn(whole, generator=generator, dtype=d)[part].clone() for d in dtypes)


@dataclass(frozen=True)
class DenoiseTiling:
    """Diffusion tiles in latent pixels."""

    tile: int
    overlap: int


@dataclass(frozen=True)
class SamplingKnobs:
    """Knobs only some families read (SUPIR's sampler today); a family ignores what it does not use.

    ``guidance_start``: classifier-free guidance at the first step (linear in σ to ``guidance``).
    ``fidelity_start``: the control scale at the first step (linear to the fidelity map); None keeps
    it constant. ``restoration``: strength τ of the pull towards the input's latent (≤ 0: off), and
    ``restore_map`` its per-pixel weight (a float or a [1, 1, H, W] map at image size, 0 = off).
    ``churn`` / ``churn_noise``: the EDM sampler's added noise per step. ``color_fix``: whether a
    family that fixes colour against its own reference (SUPIR's stage-1 image) does so.
    """

    guidance_start: float | None = None
    fidelity_start: float | None = None
    restoration: float | None = None
    restore_map: torch.Tensor | float = 1.0
    churn: float | None = None
    churn_noise: float | None = None
    color_fix: bool = True
    color_fix_method: str = "wavelet"


@dataclass
class TextConditioning:
    """What the denoiser is conditioned on besides the image: text states ([uncond, cond] with
    guidance, else [cond]) and a family's added conditions (SDXL: pooled text and size ids)."""

    states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.states.shape[0])


class RestorationPipeline(Protocol):
    """The interface the engine drives; one implementation per family (``backend/pipelines/<family>.py``),
    each loaded from an installed model folder by its ``from_installed`` classmethod."""

    max_prompt_tokens: int  # longer prompts are cut (the engine says so in the run's notes)
    # True when the pipeline applies the colour fix itself (against its own reference image); the
    # engine then leaves it out.
    fixes_colour: bool
    size_unit: int  # image sides (and diffusion tiles) must be multiples of this many pixels

    def prompt_token_count(self, prompt: str) -> int: ...

    def widths(self) -> tuple[int, int]:
        """Base widths of the denoiser and of the VAE decoder's last block, for tile-size estimates."""
        ...

    def __call__(
        self,
        image: torch.Tensor,
        *,
        prompt: str,
        negative_prompt: str,
        steps: int,
        guidance: float,
        seed: int,
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
        """Restore a pre-scaled [1, 3, H, W] image in [0, 1]; returns [1, 3, H, W] float32 on the CPU."""
        ...
