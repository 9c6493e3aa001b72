"""Strict loading of official diffusers-layout component folders (``config.json`` + weights).

diffusers' own loader warns and carries on when keys are missing or unexpected; for PASD that
silently yields a model that draws garbage. Here every mismatch is an error that names the keys.
Models are built on the meta device and the checkpoint tensors are assigned in, so a 1.1 B
parameter UNet is never randomly initialised first.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CONFIG_FILE = "config.json"
_MAX_LISTED = 12

M = TypeVar("M", bound=nn.Module)


class ModelLoadError(RuntimeError):
    """A model folder could not be loaded; the message says what is wrong and where."""


@dataclass
class StateDictMismatch:
    """The ways a checkpoint's keys differ from what the model expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def listed(title: str, items: Sequence[str]) -> list[str]:
            if not items:
                return []
            lines = [f"{title} ({len(items)}):"] + [f"  {k}" for k in items[:_MAX_LISTED]]
            if len(items) > _MAX_LISTED:
                lines.append(f"  … and {len(items) - _MAX_LISTED} more")
            return lines

        shapes = [f"{k}: checkpoint {list(got)} vs model {list(want)}" for k, got, want in self.mismatched]
        return "\n".join(
            listed("missing keys", self.missing)
            + listed("unexpected keys", self.unexpected)
            + listed("keys with the wrong shape", shapes)
        )


class StateDictMismatchError(ModelLoadError):
    """The checkpoint's keys or shapes do not match the architecture its config describes."""

    def __init__(self, source: str, mismatch: StateDictMismatch) -> None:
        self.mismatch = mismatch
        super().__init__(f"{source} does not match the model architecture:\n{mismatch.describe()}")


def build_on_meta(factory: Callable[[], M]) -> M:
    """Construct a module without allocating (or randomly initialising) its weights."""
    with torch.device("meta"):
        return factory()


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: a model component folder needs its config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return config


def find_weights(folder: Path) -> Path:
    """The component's weights file; safetensors is preferred when both are present."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"No weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.bin`` checkpoint to CPU tensors (``.bin`` without pickle code)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt or truncated download, wrong format
        raise ModelLoadError(f"Could not read weights from {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a flat state dict of tensors")
    return dict(state)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def compare_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], optional: Sequence[str] = ()
) -> StateDictMismatch:
    """Keys missing from / unexpected in ``state_dict`` and shape mismatches, ignoring ``optional``."""
    expected = model.state_dict()
    return StateDictMismatch(
        missing=sorted(k for k in expected if k not in state_dict and not _matches(k, optional)),
        unexpected=sorted(k for k in state_dict if k not in expected and not _matches(k, optional)),
        mismatched=[
            (k, tuple(v.shape), tuple(expected[k].shape))
            for k, v in state_dict.items()
            if k in expected and tuple(v.shape) != tuple(expected[k].shape)
        ],
    )


def assign_state_dict(
    model: M, state_dict: Mapping[str, torch.Tensor], source: str, optional: Sequence[str] = ()
) -> M:
    """Strictly load ``state_dict`` into a (meta-built) model; optional keys may be absent or extra.

    Optional tensors the checkpoint lacks are zero-filled (they are training-only heads).
    """
    mismatch = compare_state_dict(model, state_dict, optional)
    if mismatch:
        raise StateDictMismatchError(source, mismatch)
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False, assign=True)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            filled = torch.zeros(tensor.shape, dtype=tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                filled = nn.Parameter(filled, requires_grad=tensor.requires_grad)
            setattr(module, attr, filled)
    return model


def load_component(
    folder: str | Path,
    subfolder: str | None,
    build: Callable[[dict[str, Any], Sequence[str]], M],
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    optional: Sequence[str] = (),
) -> M:
    """Load one diffusers-layout component folder with a builder that sees its config and keys."""
    path = Path(folder).expanduser()
    if subfolder:
        path = path / subfolder
    if not path.is_dir():
        raise ModelLoadError(f"Model folder not found: {path}")
    config = read_config(path)
    weights = find_weights(path)
    state_dict = read_state_dict(weights)
    model = build(config, list(state_dict))
    assign_state_dict(model, state_dict, str(weights), optional)
    # nn.Module.to: diffusers' ModelMixin.to warns about fp32-pinned modules that PASD has none of.
    nn.Module.to(model, device=device or "cpu", dtype=torch_dtype or torch.float32)
    return model.eval()
