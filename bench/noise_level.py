"""What PASD's noise level does: the signal of the encoded input kept by the second noising.

PASD noises the encoded input to the sampler's first timestep, then again to ``added_noise_level``.
Ours is a DDPM step to that training timestep (√ᾱ of the signal kept), as the authors wrote it on
diffusers 0.21.4. Today's diffusers ``UniPCMultistepScheduler.add_noise`` looks the level up in the
sampler's schedule and falls back to the last step when it is not on it. This prints, for the SD1.5
schedule and a few step counts, the signal kept by each, and what our pipeline actually keeps
(a regression of its noised start on the input, tiny model, 256×256 latent).

    python bench/noise_level.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.devices import choose_device  # noqa: E402
from backend.models.store import resolve_model  # noqa: E402
from backend.models.tiny import write_tiny_model  # noqa: E402
from backend.pipelines.pasd import PasdPipeline  # noqa: E402

LEVELS = (0, 100, 300, 500, 700, 899, 900, 999)


def diffusers_kept(config: dict, steps: int, level: int) -> float:
    """Signal kept by today's ``add_noise`` at ``level`` (what the reference does on its pinned diffusers)."""
    scheduler = UniPCMultistepScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    x = torch.ones(1, 4, 2, 2)
    return float(scheduler.add_noise(x, torch.zeros_like(x), torch.tensor([level])).mean())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_model(Path(tmp) / "tiny", "full", seed=1)
        pipe = PasdPipeline.from_installed(resolve_model(folder), choose_device("cpu"))
    config = pipe.scheduler.config
    ac = pipe.scheduler.alphas_cumprod
    init = torch.randn(1, 4, 256, 256, generator=torch.Generator().manual_seed(1))
    print("Signal of the encoded input kept by the second noising (SD1.5 schedule)\n")
    print(
        "| level | ours: √ᾱ (any steps) | diffusers add_noise, 20 steps | 7 steps "
        "| both noisings, expected | measured |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for level in LEVELS:
        scheduler = UniPCMultistepScheduler.from_config(config)
        scheduler.set_timesteps(20)
        first = scheduler.timesteps[:1]
        start = pipe._noised_start(scheduler, init, first, level, torch.Generator().manual_seed(2))
        kept = float((start * init).sum() / (init * init).sum())
        expected = float((ac[int(first)] * ac[level]).sqrt())
        print(
            f"| {level} | {float(ac[level].sqrt()):.3f} | {diffusers_kept(config, 20, level):.3f} | "
            f"{diffusers_kept(config, 7, level):.3f} | {expected:.4f} | {kept:.4f} |"
        )
    print(
        "\n'both noisings': what our pipeline's start keeps of the input after the first noising (to "
        "t=999) and the second;\n'measured' regresses the start on the input (256×256×4 latent, "
        "so ±0.002)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
