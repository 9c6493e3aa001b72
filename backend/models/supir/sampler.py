"""SUPIR's restoration-guided EDM sampler (official ``RestoreEDMSampler``), written out step by step.

diffusers' Euler scheduler cannot reproduce it: churn noise is added *before* the model call, the
network sees σ̂ re-quantised to the nearest of the 1000 training sigmas while the Euler step
divides by σ̂ itself, classifier-free guidance and the control scale follow linear schedules in σ,
and the clean estimate is pulled towards the stage-1 latent, strongest in the first steps:
``D ← D − k·(D − z_st1)``, ``k = (σ/σmax)^τ``.

Two changes make it ours, both equal to the official sampler when left at their defaults:
the control scale λ and the restoration weight may be per-pixel maps (a soft selection gives the
foreground and the background their own fidelity; a zero weight turns guidance off in a region),
and the model call is a callback, so the pipeline can run it tile by tile and blend the clean
estimates (the step itself is per pixel, so blending estimates equals blending stepped states).
The arithmetic is kept in the official order so a float32 run matches it bit for bit on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# The official samplers and guiders use this literal, not the exact largest training sigma.
SIGMA_MAX = 14.6146
TRAINING_STEPS = 1000
# Restoration guidance stops once the next sigma is this small (the official ``restore_cfg_s_tmin``).
RESTORE_MIN_SIGMA = 0.05

Scale = torch.Tensor | float
# (x, σ̂, λ, cfg weight) → the guided clean estimate D for x at noise level σ̂.
GuidedDenoiser = Callable[[torch.Tensor, torch.Tensor, Scale, torch.Tensor], torch.Tensor]


def _alphas_cumprod() -> np.ndarray:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, TRAINING_STEPS, dtype=torch.float64) ** 2
    return np.cumprod(1.0 - betas.numpy(), axis=0)


def training_sigmas() -> torch.Tensor:
    """The 1000 training sigmas, ascending (index = the network's timestep), as the official
    denoiser's float32 buffer: the ratio in float64, its square root in float32."""
    ac = _alphas_cumprod()
    return torch.tensor((1 - ac) / ac, dtype=torch.float32) ** 0.5


def sampling_sigmas(steps: int) -> torch.Tensor:
    """The official discretisation: timesteps ``linspace(999, 0, steps, endpoint=False)`` rounded
    down, their sigmas descending, then a final 0."""
    if not 1 <= steps <= TRAINING_STEPS:
        raise ValueError(f"steps must be between 1 and {TRAINING_STEPS}, not {steps}")
    ac = _alphas_cumprod()
    if steps < TRAINING_STEPS:
        ac = ac[np.linspace(TRAINING_STEPS - 1, 0, steps, endpoint=False).astype(int)[::-1]]
    sigmas = torch.flip(torch.tensor((1 - ac) / ac, dtype=torch.float32) ** 0.5, (0,))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def quantize(sigma: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest training sigma to each ``sigma`` and its index (the timestep the network sees)."""
    index = (sigma - sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
    return sigmas[index], index


def denoise(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """The official ε-denoiser: ``D = x − σ_q·ε(x·c_in, j)`` with σ quantised to training step j
    (``network(scaled x, j)`` returns ε)."""
    sigma_q, index = quantize(sigma, sigmas)
    s = sigma_q[:, None, None, None]
    return network(x * (1 / (s**2 + 1.0) ** 0.5), index) * (-s) + x


@dataclass(frozen=True)
class RestoreSampling:
    """The sampler's knobs, named as SUPIR's ``test.py`` arguments.

    ``cfg`` is the guidance at the last step and ``cfg_start`` at σmax (linear in σ̂; equal values
    give constant guidance). ``control_scale_start`` makes λ linear in σ from it (at σmax) to the
    given scale, as ``use_linear_control_scale``; None keeps λ constant. ``restoration`` is τ;
    τ ≤ 0 is off.
    """

    steps: int = 50
    cfg: float = 4.0
    cfg_start: float = 1.0
    control_scale_start: float | None = None
    restoration: float = -1.0
    churn: float = 5.0
    noise: float = 1.01

    def gamma(self) -> float:
        return min(self.churn / self.steps, 2**0.5 - 1)

    def cfg_weight(self, sigma_hat: torch.Tensor) -> torch.Tensor:
        return (self.cfg_start - self.cfg) * sigma_hat / SIGMA_MAX + self.cfg

    def control_scale(self, sigma: float, scale: Scale) -> Scale:
        if self.control_scale_start is None:
            return scale
        return (sigma / SIGMA_MAX) * (self.control_scale_start - scale) + scale


def sampler_step(
    knobs: RestoreSampling,
    denoise: GuidedDenoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    eps: torch.Tensor | None,
    x_center: torch.Tensor,
    control_scale: Scale = 1.0,
    restore_weight: Scale = 1.0,
) -> torch.Tensor:
    """One official step. ``sigma``/``next_sigma`` are [B] tensors; ``eps`` is the churn noise
    (needed when churn is on); ``restore_weight`` multiplies the pull towards ``x_center``."""
    gamma = knobs.gamma()
    sigma_hat = sigma * (gamma + 1.0)
    if gamma > 0:
        if eps is None:
            raise ValueError("churn is on, so the step needs its noise")
        x = x + (eps * knobs.noise) * (sigma_hat**2 - sigma**2)[:, None, None, None] ** 0.5
    scale = knobs.control_scale(float(sigma[0].item()), control_scale)
    denoised = denoise(x, sigma_hat, scale, knobs.cfg_weight(sigma_hat))
    if next_sigma[0] > RESTORE_MIN_SIGMA and knobs.restoration > 0:
        pull = (sigma.view(-1, 1, 1, 1) / SIGMA_MAX) ** knobs.restoration
        if not (isinstance(restore_weight, float) and restore_weight == 1.0):
            pull = pull * restore_weight
        denoised = denoised - (denoised - x_center) * pull
    d = (x - denoised) / sigma_hat[:, None, None, None]
    return x + (next_sigma - sigma_hat)[:, None, None, None] * d


def sample(
    knobs: RestoreSampling,
    denoise: GuidedDenoiser,
    noise: torch.Tensor,
    x_center: torch.Tensor,
    draw: Callable[[], torch.Tensor],
    control_scale: Scale = 1.0,
    restore_weight: Scale = 1.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The whole loop from ``noise`` (x_T); ``draw`` gives each step's churn noise, in order."""
    sigmas = sampling_sigmas(knobs.steps).to(noise.device)
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    ones = x.new_ones([x.shape[0]])
    for i in range(knobs.steps):
        eps = draw() if knobs.gamma() > 0 else None
        x = sampler_step(
            knobs,
            denoise,
            x,
            ones * sigmas[i],
            ones * sigmas[i + 1],
            eps,
            x_center,
            control_scale,
            restore_weight,
        )
        if on_step is not None:
            on_step(i, x)
    return x
