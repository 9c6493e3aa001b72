"""Stable Diffusion XL's shared pieces, for every SDXL-based family (PASD-SDXL, later SUPIR): the base
UNet configuration and the two text encoders."""

from __future__ import annotations

from .config import SDXL_UNET_CONFIG

__all__ = ["SDXL_UNET_CONFIG"]
