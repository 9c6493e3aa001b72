"""How well a Preview predicts Apply: the previewed crop against the same part of the applied image.

The dialog's preview runs only its frame. Framed (``RestoreParams.frame``), the crop is processed at
the whole image's scale with the whole run's noise at its place, and Apply keeps the seed. This
prints, for a few frames of a test picture, the mean absolute difference (8-bit levels) between the
applied image's part and: the framed preview, the same crop unframed (processed at its own scale
with its own noise: what the dialog did before), and the framed crop with another seed. Lower is
better; "inner" leaves out a 16-pixel border, where the whole run saw more context.

    python bench/preview_fidelity.py

Tiny random-weight model on the CPU: the differences are of that model (which paints noise); the
ratio between the rows is what carries over.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.engine import Engine  # noqa: E402
from backend.models.tiny import write_tiny_model  # noqa: E402
from backend.pipelines.params import RestoreParams  # noqa: E402

FRAMES = ((48, 30, 48, 42), (48, 32, 48, 40), (0, 0, 64, 48), (64, 48, 64, 48))  # x, y, w, h


def picture(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    base = 127 + 60 * np.sin(x / 7.0)[..., None] + 40 * np.cos(y / 5.0)[..., None]
    return (base + rng.normal(0, 10, (h, w, 3))).clip(0, 255).astype(np.uint8)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        write_tiny_model(Path(folder) / "tiny-full", "full", seed=1)
        engine = Engine(Path(folder), device="cpu")
        image = picture(96, 128)
        params = RestoreParams(steps=4, seed=7, process_size=256, prompt="a test", scale=2.0)
        whole = engine.restore(image, params, model="tiny-full").image.astype(float)
        print(f"whole image 128×96 ×2, process size {params.process_size}, {params.steps} steps, seed 7")
        print(f"{'frame (x, y, w, h)':<22}{'framed':>14}{'unframed':>14}{'other seed':>14}   (all / inner)")
        for x, y, w, h in FRAMES:
            crop = image[y : y + h, x : x + w]
            target = whole[2 * y : 2 * (y + h), 2 * x : 2 * (x + w)]
            framed = params.with_(frame=(x, y, 128, 96))
            rows = {
                "framed": engine.restore(crop, framed, model="tiny-full").image,
                "unframed": engine.restore(crop, params, model="tiny-full").image,
                "other seed": engine.restore(crop, framed.with_(seed=8), model="tiny-full").image,
            }
            cells = []
            for result in rows.values():
                d = np.abs(result.astype(float) - target)
                cells.append(f"{d.mean():5.1f} / {d[16:-16, 16:-16].mean():4.1f}")
            print(f"{(x, y, w, h)!s:<22}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
