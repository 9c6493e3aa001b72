"""Which device and precision a run uses, how much memory it has, and what tile sizes fit.

Automatic by default (CUDA in half precision, else Apple MPS, else CPU in float32), with an
override, because users with two GPUs or a flaky driver must be able to choose.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import psutil
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceError(RuntimeError):
    """The requested device or precision is not available on this machine."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype  # UNet, ControlNet and text encoder
    vae_dtype: torch.dtype  # fp16 VAEs overflow on some images; see PasdPipeline's fp32 retry
    name: str
    total_memory: int  # bytes

    @property
    def is_accelerator(self) -> bool:
        return self.device.type != "cpu"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def choose_device(device: str = "auto", dtype: str = "auto") -> DeviceChoice:
    """Resolve ``auto`` / ``cuda[:N]`` / ``mps`` / ``cpu`` and ``auto`` / ``fp16`` / ``bf16`` / ``fp32``."""
    device = (device or "auto").lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r}: use auto, cuda, cuda:N, mps or cpu") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but this PyTorch build or machine has no CUDA GPU")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"there is no CUDA device {index} ({torch.cuda.device_count()} found)")
        dev = torch.device("cuda", index)
        props = torch.cuda.get_device_properties(index)
        name, total = props.name, props.total_memory
    elif dev.type == "mps":
        if not _mps_available():
            raise DeviceError("Apple MPS was requested but is not available on this machine")
        name, total = "Apple MPS", psutil.virtual_memory().total
    elif dev.type == "cpu":
        name, total = f"CPU ({os.cpu_count()} threads)", psutil.virtual_memory().total
    else:
        raise DeviceError(f"unsupported device type {dev.type!r}")

    dtype = (dtype or "auto").lower()
    if dtype == "auto":
        chosen = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    elif dtype in DTYPES:
        chosen = DTYPES[dtype]
        if dev.type == "cpu" and chosen is torch.float16:
            raise DeviceError("fp16 is not supported on the CPU; use fp32 or bf16")
        if chosen is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError("this GPU does not support bf16; use fp16 or fp32")
    else:
        raise DeviceError(f"unknown precision {dtype!r}: use auto, fp16, bf16 or fp32")
    return DeviceChoice(dev, chosen, chosen, name, total)


def free_memory(device: torch.device) -> int:
    """Bytes a run may still allocate on ``device`` (for CPU and MPS: available system memory)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = int(psutil.virtual_memory().available)
    if device.type == "mps":
        try:
            return max(0, int(torch.mps.recommended_max_memory()) - int(torch.mps.current_allocated_memory()))
        except (AttributeError, RuntimeError):
            return available
    return available


@dataclass(frozen=True)
class TileSizes:
    """Tile sides in output pixels (multiples of 64)."""

    diffusion: int
    vae: int


# Activation bytes per output pixel per unit of model width, measured for SD1.5-sized models
# (UNet + ControlNet with classifier-free guidance, fp16, scaled-dot-product attention) and
# scaled by the models' widths; a conservative estimate, since running out is worse than tiling.
_DIFFUSION_BYTES_PER_PIXEL_FP16 = 4_500.0 / 320.0  # at base width 320
_VAE_BYTES_PER_PIXEL_FP16 = 6_000.0 / 128.0  # decoder's last block width 128


def auto_tile_sizes(
    free_bytes: int,
    unet_width: int,
    vae_width: int,
    dtype: torch.dtype,
    *,
    min_tile: int = 512,
    max_tile: int = 2048,
) -> TileSizes:
    """Largest square tiles whose activations fit in a third of the free memory."""
    bytes_per = 2 if dtype in (torch.float16, torch.bfloat16) else 4
    budget = max(free_bytes, 0) / 3

    def side(per_pixel: float) -> int:
        pixels = budget / max(per_pixel * bytes_per / 2, 1e-9)
        edge = int(pixels**0.5) // 64 * 64
        return max(min_tile, min(max_tile, edge))

    return TileSizes(
        diffusion=side(_DIFFUSION_BYTES_PER_PIXEL_FP16 * unet_width),
        vae=side(_VAE_BYTES_PER_PIXEL_FP16 * vae_width),
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; MPS and the CPU allocator raise RuntimeError/MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def return_large_buffers_to_os() -> None:
    """Make glibc hand every large buffer back to the system when it is freed.

    glibc raises its mmap threshold after the first large free, so later image-sized buffers come
    from the heap and are kept after use: the process's memory then grows with the image size even
    though no more than a few buffers are alive (measured by bench/engine_memory.py: 150 MB per
    extra megapixel instead of about 25). A fixed threshold of 128 KiB stops that. Linux only.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return
