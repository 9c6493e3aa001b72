"""Inference pipelines: tiled denoising, tiled VAE, and the PASD upscaling and colorization runs."""
