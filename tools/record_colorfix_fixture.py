"""Record the reference PASD wavelet colour fix as a test fixture (run by a developer, not CI).

``tests/test_image_ops.py`` compares ``backend.image_ops.wavelet_color_fix`` with the reference's
``wavelet_reconstruction`` (``pasd/myutils/wavelet_color_fix.py`` of github.com/yangxy/PASD). Run this in
an environment with torch and safetensors and a checkout of the reference::

    python tools/record_colorfix_fixture.py --pasd-repo ~/src/PASD \
        tests/fixtures/reference/colorfix.safetensors

The reference module imports torchvision only for its PIL wrappers, which are not called here, so a stub
stands in for it when torchvision is missing. The module is loaded from its file, nothing else of the
reference is imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

# name: (height, width): an ordinary size, and one smaller than the blurs' reach (pad > size).
CASES = {"medium": (37, 53), "tiny": (5, 3), "dot": (1, 1)}
SEED = 4321


def _load_reference(pasd_repo: Path) -> types.ModuleType:
    try:
        import torchvision.transforms  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision.transforms")
        stub.ToTensor = stub.ToPILImage = object
        sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
        sys.modules["torchvision.transforms"] = stub
    path = pasd_repo / "pasd" / "myutils" / "wavelet_color_fix.py"
    spec = importlib.util.spec_from_file_location("reference_wavelet_color_fix", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--pasd-repo", type=Path, required=True)
    args = parser.parse_args()
    reference = _load_reference(args.pasd_repo)
    generator = torch.Generator().manual_seed(SEED)
    tensors: dict[str, torch.Tensor] = {}
    for name, (height, width) in CASES.items():
        content = torch.rand(1, 3, height, width, generator=generator)
        style = torch.rand(1, 3, height, width, generator=generator)
        tensors[f"{name}.content"] = content
        tensors[f"{name}.style"] = style
        tensors[f"{name}.output"] = reference.wavelet_reconstruction(content.clone(), style.clone())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors,
        str(args.out),
        metadata={"source": "PASD pasd/myutils/wavelet_color_fix.py", "seed": str(SEED)},
    )
    print("wrote", args.out, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
