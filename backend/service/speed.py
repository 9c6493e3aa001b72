"""How fast this machine restores, learnt from the runs it finished: the estimates shown before a run.

A run's cost is almost all denoising, which grows with the steps, the processed area and the
guidance batch; so each finished run adds one sample (work, seconds) for its model, where work is
``steps × processed megapixels × (2 with guidance, else 1)``, and an estimate is the line through
the model's recent samples. Nothing is guessed: before a model's first run there is no estimate.
The samples are kept in a small JSON file, so estimates survive a restart of the server.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLES_PER_MODEL = 20


def work_units(steps: int, process_size: tuple[int, int], guidance: float) -> float:
    """The denoising work of a run, in step-megapixels (the classifier-free batch counts twice)."""
    height, width = process_size
    return steps * height * width / 1e6 * (2.0 if guidance > 1.0 else 1.0)


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: this model has not run on this machine yet
    runs: int  # how many finished runs the estimate rests on


class SpeedBook:
    """Per model, the recent (work, seconds) samples of finished runs, and estimates from them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._samples: dict[str, list[tuple[float, float]]] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                for model, samples in data.items():
                    self._samples[str(model)] = [
                        (float(w), float(s)) for w, s in samples if float(w) > 0 and float(s) > 0
                    ][-SAMPLES_PER_MODEL:]
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring the speed records in %s: %s", path, exc)

    def record(self, model: str, work: float, seconds: float) -> None:
        if work <= 0 or seconds <= 0:
            return
        with self._lock:
            samples = self._samples.setdefault(model, [])
            samples.append((work, seconds))
            del samples[:-SAMPLES_PER_MODEL]
            self._save()

    def estimate(self, model: str, work: float) -> Estimate:
        with self._lock:
            samples = list(self._samples.get(model, []))
        if not samples:
            return Estimate(None, 0)
        return Estimate(_fit(samples, work), len(samples))

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(self._samples), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk costs the estimates, never the run
            log.warning("cannot save the speed records to %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)


def _fit(samples: list[tuple[float, float]], work: float) -> float:
    """Seconds for ``work``: a line (fixed cost + cost per unit) through the samples, both parts ≥ 0.

    One size only (or one sample): proportional to the work, which errs on the long side for
    smaller runs, as a waiting user prefers.
    """
    n = len(samples)
    mean_w = sum(w for w, _ in samples) / n
    mean_s = sum(s for _, s in samples) / n
    spread = sum((w - mean_w) ** 2 for w, _ in samples)
    if spread <= 1e-12 * max(mean_w, 1e-12) ** 2:
        return mean_s * work / mean_w
    slope = sum((w - mean_w) * (s - mean_s) for w, s in samples) / spread
    if slope <= 0:
        return mean_s * work / mean_w
    fixed = mean_s - slope * mean_w
    if fixed < 0:  # through the origin instead
        slope = sum(w * s for w, s in samples) / sum(w * w for w, _ in samples)
        fixed = 0.0
    return fixed + slope * work
