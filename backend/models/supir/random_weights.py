"""Seeded random weights for a key and shape inventory: the tiny SUPIR models of tests and benchmarks.

Most of SUPIR's output projections are zero-initialised, so a parity test on default weights would
compare zeros. Every parameter is therefore refilled from one generator, key by key in sorted order,
which makes the weights a pure function of (inventory, seed): the reference harness
(``tools/make_supir_fixtures.py``, in its own environment) and our tests build the very same tensors
without a weights file in the repository. Only torch is imported, so the harness can load this file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def random_tensor(key: str, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor that keeps activations of order one: norm scales near 1, small biases,
    matrices and kernels scaled by 1/sqrt(fan-in)."""
    shape = tuple(int(s) for s in shape)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if len(shape) <= 1:
        return 1.0 + 0.1 * noise if key.endswith("weight") else 0.02 * noise
    fan_in = math.prod(shape[1:])
    return noise / math.sqrt(fan_in)


def random_state(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
    """Fill every key of ``shapes`` from one generator seeded with ``seed``, in sorted key order."""
    generator = torch.Generator().manual_seed(seed)
    return {key: random_tensor(key, shapes[key], generator) for key in sorted(shapes)}
