"""Pre-scaling: bring the input to the target size before diffusion (bicubic, or a GAN upscaler).

The diffusion starts from the pre-scaled picture, so a sharper start (ESRGAN & co.) gives it
less to invent. Both keep memory bounded: bicubic resizes one axis at a time (one intermediate,
never larger than the input or the output), a GAN runs on overlapping tiles. GAN files are read
by the optional ``spandrel`` package, imported only when one is configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

CheckCancel = Callable[[], None]
Network = Callable[[torch.Tensor], torch.Tensor]

GAN_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
REPEAT_ABOVE = 1.5  # enlargement left after a GAN pass beyond which the network runs again


class PrescalerError(RuntimeError):
    """A pre-scaler could not be set up; the message says what to change."""


class Prescaler(Protocol):
    def __call__(
        self, image: torch.Tensor, size: tuple[int, int], check_cancel: CheckCancel | None = None
    ) -> torch.Tensor:
        """[1, C, H, W] float in [0, 1] on the CPU → [1, C, height, width] float32 on the CPU."""
        ...


def _noop() -> None:
    pass


def _bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if x.shape[-1] == 1 and size[1] == 1 and size[0] != x.shape[-2]:
        # PyTorch's antialiased kernel gets a one-column picture's height change wrong (not two columns).
        return _bicubic(x.expand(*x.shape[:-1], 2), (size[0], 2))[..., :1].contiguous()
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


class BicubicPrescaler:
    """Antialiased bicubic resize, one axis at a time, in the order with the smaller intermediate.

    The one-call resize is separable internally and always changes the width first, keeping an
    ``H × width`` intermediate beside the output (3000×1000 → 1000×5000: 230 MB). Two one-axis calls
    give the same values (to float rounding) in the cheaper order, whose intermediate is never
    larger than the input or the output (88 MB there). A one-axis call needs no intermediate, so
    strips would add nothing: measured, they only cost time.
    """

    def __call__(
        self, image: torch.Tensor, size: tuple[int, int], check_cancel: CheckCancel | None = None
    ) -> torch.Tensor:
        check = check_cancel or _noop
        height, width = int(size[0]), int(size[1])
        if height < 1 or width < 1:
            raise PrescalerError(f"target size must be positive, not {height}×{width}")
        x = image.detach().to("cpu", torch.float32)
        in_h, in_w = x.shape[-2:]
        check()
        if (height, width) == (in_h, in_w):
            return x.clone().clamp_(0, 1)
        if height != in_h and width != in_w:
            x = _bicubic(x, (in_h, width) if in_h * width <= height * in_w else (height, in_w))
            check()
        return _bicubic(x, (height, width)).clamp_(0, 1)


class GanPrescaler:
    """A super-resolution network run on overlapping tiles, then resized to the exact size.

    Each tile sees ``halo`` extra input pixels on every side that has a neighbour and only its
    core is kept, so when the halo covers the network's receptive field the tiled result equals
    the whole-image one while memory stays that of one tile. ``module`` is any callable from
    [N, in_channels, h, w] in [0, 1] to [N, in_channels, h*scale, w*scale].
    """

    def __init__(
        self,
        module: torch.nn.Module | Network,
        scale: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int = 512,
        halo: int = 16,
        in_channels: int = 3,
        max_passes: int = 3,
    ) -> None:
        if scale < 1 or tile < 1 or halo < 0 or max_passes < 1:
            raise ValueError(f"bad GAN settings: scale={scale}, tile={tile}, halo={halo}")
        if isinstance(module, torch.nn.Module):
            module.eval()
        self.module = module
        self.scale = int(scale)
        self.device = torch.device(device)
        self.dtype = dtype
        self.tile = tile
        self.halo = halo
        self.in_channels = in_channels
        self.max_passes = max_passes
        self.bicubic = BicubicPrescaler()

    def __call__(
        self, image: torch.Tensor, size: tuple[int, int], check_cancel: CheckCancel | None = None
    ) -> torch.Tensor:
        check = check_cancel or _noop
        height, width = int(size[0]), int(size[1])
        x = image.detach().to("cpu", torch.float32)
        passes = 0
        if self.scale == 1 or _left(x, height, width) > 1:  # a 1× restoration model always runs
            x = self.upscale(x, check)
            passes = 1
        # Beyond the network's scale: shrink so that one more pass lands at about the target size.
        while self.scale > 1 and passes < self.max_passes and _left(x, height, width) > REPEAT_ABOVE:
            if _left(x, height, width) < self.scale:
                step = (math.ceil(height / self.scale), math.ceil(width / self.scale))
                x = self.bicubic(x, step, check)
            x = self.upscale(x, check)
            passes += 1
        if passes and tuple(x.shape[-2:]) == (height, width):
            return x  # the network's own output buffer, already clamped: no copy of a large picture
        return self.bicubic(x, (height, width), check)

    def upscale(self, image: torch.Tensor, check_cancel: CheckCancel | None = None) -> torch.Tensor:
        """One network pass at its own scale: [1, C, H, W] → [1, C, H*scale, W*scale], clamped."""
        check = check_cancel or _noop
        channels = image.shape[1]
        if channels == self.in_channels:
            return self._tiled(image, check)
        # Colour through the network, extra channels (alpha) by bicubic, into one output buffer.
        colour = 1 if channels <= 2 else 3
        rgb, extra = image[:, :colour], image[:, colour:]
        out = torch.empty((1, channels, *_scaled(image, self)), dtype=torch.float32)
        if colour == self.in_channels:
            self._tiled(rgb, check, out[:, :colour])
        elif colour == 1 and self.in_channels == 3:  # grey into an RGB network
            out[:, :1] = self._tiled(rgb.expand(-1, 3, -1, -1), check).mean(dim=1, keepdim=True)
        elif colour == 3 and self.in_channels == 1:  # RGB into a grey network: one plane at a time
            self._tiled(rgb.reshape(3, 1, *rgb.shape[-2:]), check, out[0, :3, None])
        else:
            raise PrescalerError(
                f"the GAN upscaler takes {self.in_channels}-channel images, this one has {channels}"
            )
        if extra.shape[1]:
            out[:, colour:] = self.bicubic(extra, _scaled(extra, self), check)
        return out

    def _tiled(self, x: torch.Tensor, check: CheckCancel, out: torch.Tensor | None = None) -> torch.Tensor:
        """The network over ``x`` tile by tile, written into ``out`` (a new buffer if not given)."""
        batch, channels, in_h, in_w = x.shape
        s, halo = self.scale, self.halo
        if out is None:
            out = torch.empty((batch, channels, in_h * s, in_w * s), dtype=torch.float32)
        for top, bottom in _spans(in_h, self.tile):
            for left, right in _spans(in_w, self.tile):
                check()
                y0, y1 = max(top - halo, 0), min(bottom + halo, in_h)
                x0, x1 = max(left - halo, 0), min(right + halo, in_w)
                patch = x[..., y0:y1, x0:x1].to(self.device, self.dtype)
                with torch.inference_mode():
                    result = self.module(patch)
                expected = (batch, channels, (y1 - y0) * s, (x1 - x0) * s)
                if tuple(result.shape) != expected:
                    raise PrescalerError(
                        f"the GAN upscaler returned {tuple(result.shape)} for a tile that should give "
                        f"{expected}; is its scale really {s}×?"
                    )
                core = result[..., (top - y0) * s : (bottom - y0) * s, (left - x0) * s : (right - x0) * s]
                out[..., top * s : bottom * s, left * s : right * s] = core.to("cpu", torch.float32)
                del patch, result, core
        return out.clamp_(0, 1)


def _left(x: torch.Tensor, height: int, width: int) -> float:
    """The enlargement still needed to reach ``height`` × ``width``."""
    return max(height / x.shape[-2], width / x.shape[-1])


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def _scaled(x: torch.Tensor, gan: GanPrescaler) -> tuple[int, int]:
    return x.shape[-2] * gan.scale, x.shape[-1] * gan.scale


def load_gan_prescaler(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tile: int = 512,
    halo: int = 16,
) -> GanPrescaler:
    """Read ESRGAN-family weights (any architecture spandrel knows) into a tiled pre-scaler.

    The spandrel descriptor itself is the network: its call pads each tile to the sizes the
    architecture needs (window-attention models want multiples of their window) and clamps.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PrescalerError(f"GAN upscaler file not found: {path}")
    try:
        import spandrel
    except ImportError as exc:
        raise PrescalerError(
            f"Using the GAN upscaler {path.name} needs the optional package spandrel: pip install spandrel"
        ) from exc
    except Exception as exc:  # installed but broken, e.g. a torchvision built for another torch
        raise PrescalerError(
            f"Using the GAN upscaler {path.name} needs the optional package spandrel, which is installed "
            f"but does not import ({type(exc).__name__}: {exc}); reinstall spandrel and a torchvision "
            f"that matches torch {torch.__version__}"
        ) from exc
    try:
        descriptor = spandrel.ModelLoader().load_from_file(path)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PrescalerError(f"{path.name} is not a GAN upscaler that spandrel can read ({reason})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in (
        "SR",
        "Restoration",
    ):
        raise PrescalerError(
            f"{path.name} is a {descriptor.architecture.name} model for {descriptor.purpose}, "
            "not an image super-resolution model"
        )
    if descriptor.input_channels != descriptor.output_channels:
        raise PrescalerError(
            f"{path.name} maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
            "a pre-scaler must keep them"
        )
    if (dtype == torch.float16 and not descriptor.supports_half) or (
        dtype == torch.bfloat16 and not descriptor.supports_bfloat16
    ):
        dtype = torch.float32  # the architecture is unstable in half precision
    descriptor.to(device, dtype).eval()
    return GanPrescaler(
        descriptor,
        descriptor.scale,
        device=device,
        dtype=dtype,
        tile=tile,
        halo=halo,
        in_channels=descriptor.input_channels,
    )


def make_prescaler(
    spec: str | Path | None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Prescaler:
    """``None``/"bicubic" → bicubic; a .pth/.pt/.ckpt/.safetensors file → that GAN upscaler."""
    if spec is None or str(spec).strip().lower() in ("", "bicubic"):
        return BicubicPrescaler()
    path = Path(spec).expanduser()
    if path.suffix.lower() in GAN_SUFFIXES:
        return load_gan_prescaler(path, device, dtype)
    raise PrescalerError(
        f"Unknown pre-scaler {str(spec)!r}: use 'bicubic' or the path of a GAN upscaler file "
        f"({', '.join(GAN_SUFFIXES)})"
    )
