"""Tiled VAE encode and decode whose memory depends on the tile size, not on the image size.

Cutting a VAE pass into tiles is easy for the convolutions (a halo of context around each tile's core
covers most of their receptive field), but GroupNorm normalises with statistics over the *whole*
image: per-tile statistics give every tile its own brightness and contrast, and the seams show. Here
every GroupNorm uses statistics aggregated over all tiles, without ever holding more than one tile's
activations:

* the GroupNorm layers are handled in the order they run; for GroupNorm ``k`` every tile (with its
  halo) runs from the input up to that layer, using the already aggregated statistics of GroupNorm
  ``0..k-1``, and merges the per-group mean and variance of its *core* (so every pixel counts once)
  into running float64 totals before the pass stops there;
* a final pass runs every tile through the whole network with all statistics fixed and writes its
  core into the output, the only image-sized buffer besides the input.

That costs ``number of GroupNorms + 1`` partial passes: about 12 tiled passes' worth of compute for the
SD1.5 decoder (30 GroupNorms), about 14 for the encoder (22); the memory stays one tile's. Two
approximations remain: the halo covers most, not all, of the convolutions' receptive field, and the
self-attention in the mid block attends only within its tile (with halo). Without that attention the
result equals untiled decoding to float rounding once the halo is wide enough. An image that fits in one
tile takes the plain ``vae.encode`` / ``vae.decode`` path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

LATENT_FACTOR = 8  # image pixels per latent pixel (three 2x down/up-samplings)


@dataclass(frozen=True)
class VaeTiling:
    """Tile geometry in latent pixels; the encoder uses ``tile * 8`` and ``halo * 8`` image pixels."""

    tile: int  # core size: each tile owns (writes) at most tile x tile latent pixels
    halo: int = 8  # extra context on every side that is computed but not written

    def __post_init__(self) -> None:
        if self.tile < 1 or self.halo < 0:
            raise ValueError(f"VaeTiling needs tile >= 1 and halo >= 0, not {self}")


@dataclass(frozen=True)
class _Span:
    """One tile along one axis, in latent pixels: the core it owns and the padded range it computes."""

    core0: int
    core1: int
    pad0: int
    pad1: int


def _spans(n: int, tile: int, halo: int) -> list[_Span]:
    """Split ``n`` into near-equal cores of at most ``tile`` (no sliver at the end), each with a halo."""
    m = -(-n // tile)
    cuts = [i * n // m for i in range(m + 1)]
    return [_Span(a, b, max(0, a - halo), min(n, b + halo)) for a, b in itertools.pairwise(cuts)]


@dataclass(frozen=True)
class _Tile:
    """A tile of the latent grid (rows ``ys``, columns ``xs``)."""

    ys: _Span
    xs: _Span

    def padded(self, factor: int = 1) -> tuple[slice, slice]:
        """The computed window, at ``factor`` times latent resolution."""
        return (
            slice(self.ys.pad0 * factor, self.ys.pad1 * factor),
            slice(self.xs.pad0 * factor, self.xs.pad1 * factor),
        )

    def core(self, factor: int = 1) -> tuple[slice, slice]:
        """The owned window in the whole image, at ``factor`` times latent resolution."""
        return (
            slice(self.ys.core0 * factor, self.ys.core1 * factor),
            slice(self.xs.core0 * factor, self.xs.core1 * factor),
        )

    def core_in(self, height: int, width: int) -> tuple[slice, slice]:
        """The owned window inside an activation of ``height`` x ``width`` computed over the padded window."""
        ph, pw = self.ys.pad1 - self.ys.pad0, self.xs.pad1 - self.xs.pad0
        if height % ph or width % pw or height // ph != width // pw:
            raise RuntimeError(f"activation {height}x{width} is not a whole multiple of the tile {ph}x{pw}")
        f = height // ph
        return (
            slice((self.ys.core0 - self.ys.pad0) * f, (self.ys.core1 - self.ys.pad0) * f),
            slice((self.xs.core0 - self.xs.pad0) * f, (self.xs.core1 - self.xs.pad0) * f),
        )

    def spatial_shape(self, numel: int) -> tuple[int, int]:
        """Height and width of a flattened activation (attention's GroupNorm sees ``[B, C, H*W]``)."""
        ph, pw = self.ys.pad1 - self.ys.pad0, self.xs.pad1 - self.xs.pad0
        f = math.isqrt(numel // (ph * pw))
        if f * f * ph * pw != numel:
            raise RuntimeError(f"{numel} positions are no whole multiple of the tile {ph}x{pw}")
        return ph * f, pw * f


def _tiles(height: int, width: int, tiling: VaeTiling) -> list[_Tile]:
    return [
        _Tile(ys, xs)
        for ys in _spans(height, tiling.tile, tiling.halo)
        for xs in _spans(width, tiling.tile, tiling.halo)
    ]


class _PassDone(Exception):
    """Ends a tile's statistics pass at the GroupNorm being measured: nothing after it is needed."""


@dataclass
class _Moments:
    """Running per-sample, per-group count, mean and sum of squared deviations over the tile cores.

    Tiles are merged with Chan's parallel update in float64, which equals summing values and squares
    in float64 but does not cancel when the mean is large against the spread.
    """

    count: int = 0
    mean: torch.Tensor | None = None  # [B, G] float64, CPU
    m2: torch.Tensor | None = None  # [B, G] float64, CPU
    device: torch.device | None = None

    def add(self, values: torch.Tensor) -> None:
        """Merge ``values`` of shape ``[B, G, N]`` (one tile's core)."""
        # MPS has no float64; a single tile's centred sums are still accurate in float32.
        wide = torch.float32 if values.device.type == "mps" else torch.float64
        values = values.to(wide)
        n = values.shape[-1]
        mean = values.mean(-1)
        m2 = (values - mean.unsqueeze(-1)).square().sum(-1)
        mean, m2 = mean.to("cpu", torch.float64), m2.to("cpu", torch.float64)
        self.device = values.device
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total


@dataclass(frozen=True)
class _Stats:
    """One GroupNorm call with fixed statistics folded into a per-channel affine map ``x * scale + shift``."""

    scale: torch.Tensor  # [B, C] float32, on the activations' device
    shift: torch.Tensor  # [B, C]

    @classmethod
    def fold(cls, module: nn.GroupNorm, moments: _Moments) -> _Stats:
        assert moments.mean is not None and moments.m2 is not None and moments.device is not None
        per_group = module.num_channels // module.num_groups
        mean = moments.mean.repeat_interleave(per_group, dim=1)
        var = (moments.m2 / moments.count).clamp_min(0.0).repeat_interleave(per_group, dim=1)
        scale = torch.rsqrt(var + module.eps)
        shift = torch.zeros_like(scale)
        if module.weight is not None:
            scale = scale * module.weight.detach().to("cpu", torch.float64)
        if module.bias is not None:
            shift = shift + module.bias.detach().to("cpu", torch.float64)
        shift = shift - mean * scale
        return cls(scale.to(moments.device, torch.float32), shift.to(moments.device, torch.float32))


class _SharedGroupNorm:
    """Replaces the GroupNorm layers of one VAE half: measure one layer, or apply fixed statistics.

    Layers are identified by the order in which they are *called* in one forward (registration order
    differs: ``UNetMidBlock2D`` registers its attentions before its resnets).
    """

    def __init__(self, root: nn.Module) -> None:
        self.layers = [m for m in root.modules() if isinstance(m, nn.GroupNorm)]
        self.order: list[nn.GroupNorm] = []  # call order, learnt in the first pass
        self.stats: list[_Stats] = []  # for calls 0 .. len(stats)-1
        self.measuring: _Moments | None = None
        self.tile: _Tile | None = None
        self.calls = 0

    @property
    def count(self) -> int:
        return len(self.layers)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route every GroupNorm's forward through this object while the context is open."""
        saved = [(m, m.__dict__.get("forward")) for m in self.layers]
        try:
            for m in self.layers:
                m.forward = self._bind(m)
            yield
        finally:
            for m, forward in saved:
                if forward is None:
                    del m.forward
                else:
                    m.forward = forward

    def _bind(self, module: nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: self._forward(module, x)

    def start_tile(self, tile: _Tile, measure: bool) -> None:
        self.tile, self.calls = tile, 0
        if measure and self.measuring is None:
            self.measuring = _Moments()

    def finish_measurement(self) -> None:
        """Turn the sums of the layer just measured into its fixed statistics."""
        moments, self.measuring = self.measuring, None
        assert moments is not None and moments.count > 0
        self.stats.append(_Stats.fold(self.order[len(self.stats)], moments))

    def check_complete(self) -> None:
        """After a full tile forward: every layer ran once, so its statistics were all used."""
        if self.calls != self.count or len(self.stats) != self.count:
            raise RuntimeError(f"expected {self.count} GroupNorm calls per forward, saw {self.calls}")

    def _forward(self, module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        index, self.calls = self.calls, self.calls + 1
        if index == len(self.order):
            self.order.append(module)
        if self.order[index] is not module:
            raise RuntimeError("GroupNorm layers ran in a different order than in the first pass")
        if index < len(self.stats):
            return self._apply(x, self.stats[index])
        if index == len(self.stats) and self.measuring is not None:
            self._measure(module, x)
            raise _PassDone
        raise RuntimeError(f"GroupNorm call {index} has no statistics yet")

    def _as_4d(self, x: torch.Tensor) -> torch.Tensor:
        assert self.tile is not None
        if x.ndim == 4:
            return x
        if x.ndim == 3:
            return x.reshape(*x.shape[:2], *self.tile.spatial_shape(x.shape[2]))
        raise RuntimeError(f"GroupNorm input of shape {tuple(x.shape)} is not an image activation")

    def _measure(self, module: nn.GroupNorm, x: torch.Tensor) -> None:
        assert self.tile is not None and self.measuring is not None
        x4 = self._as_4d(x)
        rows, cols = self.tile.core_in(x4.shape[2], x4.shape[3])
        self.measuring.add(x4[:, :, rows, cols].reshape(x4.shape[0], module.num_groups, -1))

    @staticmethod
    def _apply(x: torch.Tensor, stats: _Stats) -> torch.Tensor:
        """GroupNorm with fixed statistics, computed in at least float32 so half precision stays accurate."""
        view = (*stats.scale.shape, *(1,) * (x.ndim - 2))
        compute = torch.promote_types(x.dtype, stats.scale.dtype)
        return torch.addcmul(stats.shift.view(view), x.to(compute), stats.scale.view(view)).to(x.dtype)


Progress = Callable[[int, int], None]


def _device_dtype(vae: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(vae.parameters())
    return p.device, p.dtype


def _run_tiles(
    root: nn.Module,
    tiles: list[_Tile],
    forward: Callable[[_Tile], torch.Tensor],
    emit: Callable[[_Tile, torch.Tensor], None],
    check_cancel: Callable[[], None] | None,
    on_tile: Progress | None,
) -> None:
    """Statistics passes for every GroupNorm of ``root``, then the output pass (see the module doc)."""
    norms = _SharedGroupNorm(root)
    total = (norms.count + 1) * len(tiles)
    done = 0
    with norms.installed():
        for layer in range(norms.count + 1):
            measure = layer < norms.count
            for tile in tiles:
                if check_cancel is not None:
                    check_cancel()
                norms.start_tile(tile, measure)
                try:
                    result = forward(tile)
                except _PassDone:
                    pass
                else:
                    if measure:
                        raise RuntimeError(f"GroupNorm {layer} never ran; the VAE is not the expected layout")
                    norms.check_complete()
                    emit(tile, result)
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
            if measure:
                norms.finish_measurement()


def _single_tile(height: int, width: int, tiling: VaeTiling | None) -> bool:
    return tiling is None or (height <= tiling.tile and width <= tiling.tile)


@torch.no_grad()
def tiled_decode(
    vae: nn.Module,
    latents: torch.Tensor,
    tiling: VaeTiling | None,
    *,
    out: torch.Tensor | None = None,
    check_cancel: Callable[[], None] | None = None,
    on_tile: Progress | None = None,
) -> torch.Tensor:
    """Decode *scaled* latents ``[B, 4, h, w]`` (as the UNet sees them) to an image ``[B, 3, 8h, 8w]``.

    The image is in about [-1, 1] (not clamped, so NaN/inf from a half-precision VAE stay visible to
    the caller), float32, written into ``out`` when given (any device/dtype, e.g. a CPU buffer),
    otherwise into a new tensor on the latents' device.
    """
    device, dtype = _device_dtype(vae)
    b, _, h, w = latents.shape
    shape = (b, vae.config.out_channels, h * LATENT_FACTOR, w * LATENT_FACTOR)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=latents.device)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    scaling = vae.config.scaling_factor
    shift = vae.config.get("shift_factor") or 0.0

    def unscale(z: torch.Tensor) -> torch.Tensor:
        return z.to(device, dtype) / scaling + shift

    if _single_tile(h, w, tiling):
        if check_cancel is not None:
            check_cancel()
        out.copy_(vae.decode(unscale(latents)).sample)
        if on_tile is not None:
            on_tile(1, 1)
        return out
    assert tiling is not None

    def forward(tile: _Tile) -> torch.Tensor:
        z = unscale(latents[(..., *tile.padded())])
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return vae.decoder(z)

    def emit(tile: _Tile, image: torch.Tensor) -> None:
        rows, cols = tile.core_in(image.shape[2], image.shape[3])
        out[(..., *tile.core(LATENT_FACTOR))] = image[:, :, rows, cols].to(out.device, out.dtype)

    _run_tiles(vae.decoder, _tiles(h, w, tiling), forward, emit, check_cancel, on_tile)
    return out


@torch.no_grad()
def _vae_input(x: torch.Tensor, from_unit: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return (x * 2 - 1 if from_unit else x).to(device, dtype)


def tiled_encode(
    vae: nn.Module,
    image: torch.Tensor,
    tiling: VaeTiling | None,
    *,
    generator: torch.Generator | None = None,
    sample: bool = True,
    check_cancel: Callable[[], None] | None = None,
    on_tile: Progress | None = None,
    from_unit: bool = False,
    noise: torch.Tensor | None = None,
    encoder: nn.Module | None = None,
) -> torch.Tensor:
    """Encode an image ``[B, 3, H, W]`` in [-1, 1] to *scaled* latents ``[B, 4, H/8, W/8]``.

    ``encoder`` replaces the VAE's own encoder (keeping its ``quant_conv``): SUPIR's
    degradation-robust encoder is used that way.

    ``noise`` (``[B, C, H/8, W/8]``), when given, is the sample's noise instead of a draw (a preview
    takes the part of the whole image's noise where its crop lies).

    With ``from_unit`` the image is in [0, 1] and each tile is mapped to [-1, 1] on its way to the
    VAE, so a large image needs no image-sized temporary.

    The latents are the distribution's mean, or a sample of it whose noise is drawn once for the whole
    latent (exactly as ``latent_dist.sample(generator)`` draws it), so tiling never changes the noise. H and
    W must be multiples of 8. The latents come back float32 on the VAE's device; the image may stay on
    another device (e.g. the CPU).
    """
    device, dtype = _device_dtype(vae)
    b, _, height, width = image.shape
    if height % LATENT_FACTOR or width % LATENT_FACTOR:
        raise ValueError(f"image size {height}x{width} is not a multiple of {LATENT_FACTOR}")
    h, w = height // LATENT_FACTOR, width // LATENT_FACTOR
    scaling = vae.config.scaling_factor
    shift = vae.config.get("shift_factor") or 0.0

    encoder = vae.encoder if encoder is None else encoder

    def moments_of(x: torch.Tensor) -> torch.Tensor:
        moments = encoder(x)
        return vae.quant_conv(moments) if vae.quant_conv is not None else moments

    if _single_tile(h, w, tiling):
        if check_cancel is not None:
            check_cancel()
        dist = DiagonalGaussianDistribution(moments_of(_vae_input(image, from_unit, device, dtype)))
        if sample and noise is not None:
            z = dist.mean + dist.std * noise.to(device=device, dtype=dist.mean.dtype)
        else:
            z = dist.sample(generator) if sample else dist.mean
        if on_tile is not None:
            on_tile(1, 1)
        return ((z - shift) * scaling).float()
    assert tiling is not None

    channels = vae.config.latent_channels
    latents = torch.empty((b, channels, h, w), dtype=torch.float32, device=device)
    if not sample:
        noise = None
    elif noise is None:
        noise = randn_tensor((b, channels, h, w), generator=generator, device=device, dtype=dtype)
    else:
        noise = noise.to(device=device, dtype=dtype)

    def forward(tile: _Tile) -> torch.Tensor:
        return moments_of(_vae_input(image[(..., *tile.padded(LATENT_FACTOR))], from_unit, device, dtype))

    def emit(tile: _Tile, moments: torch.Tensor) -> None:
        rows, cols = tile.core_in(moments.shape[2], moments.shape[3])
        # The same arithmetic as DiagonalGaussianDistribution, on the core only.
        mean, logvar = moments[:, :, rows, cols].chunk(2, dim=1)
        z = mean
        if noise is not None:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            z = mean + std * noise[(..., *tile.core())]
        latents[(..., *tile.core())] = ((z - shift) * scaling).float()

    _run_tiles(encoder, _tiles(h, w, tiling), forward, emit, check_cancel, on_tile)
    return latents
