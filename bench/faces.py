"""How long finding faces takes, and what it finds, by picture size.

The detector looks at pictures at most ``backend.faces.MAX_SIDE`` (640) pixels large, so its time
levels off above that; the rest is reading the picture into grey and scaling it down. Pictures are
scikit-image's astronaut portrait and grey cameraman, scaled to each size (bicubic).

    python bench/faces.py [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.faces import detect_faces, faces_mask  # noqa: E402

SIZES = (256, 512, 1024, 2048, 4096)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per size (the median is shown)")
    args = parser.parse_args()
    print(f"{'picture':<10} {'size':>11} {'detect s':>9} {'mask s':>7}  faces (boxes at that size)")
    for name in ("astronaut", "camera"):
        source = Image.fromarray(getattr(data, name)())
        for side in SIZES:
            pixels = np.asarray(source.resize((side, side), Image.BICUBIC))
            times, found = [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                found = detect_faces(pixels)
                times.append(time.perf_counter() - start)
            start = time.perf_counter()
            faces_mask(pixels.shape[:2], found)
            mask_s = time.perf_counter() - start
            boxes = ", ".join(f"{f.width}×{f.height} at {f.x},{f.y} ({f.kind})" for f in found) or "none"
            print(f"{name:<10} {side:>5}×{side:<5} {float(np.median(times)):9.3f} {mask_s:7.3f}  {boxes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
