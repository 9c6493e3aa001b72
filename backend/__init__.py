"""Backend of GIMP Diffusion Upscale: PASD models, pipelines and the local service."""

from __future__ import annotations

__version__ = "0.1.0"
