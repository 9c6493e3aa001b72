"""Record the reference PASD implementation's outputs as test fixtures (run by a developer, not CI).

The parity tests in ``tests/test_reference_parity.py`` compare our model code with the reference
code of github.com/yangxy/PASD. That code needs diffusers 0.29.2 and cannot be installed next to
ours, so its outputs are recorded once, here, and committed as fixtures:

1. In the project's environment, write the tiny official-layout weights the fixtures use::

       python tools/make_reference_fixtures.py write-weights tests/fixtures/reference

2. In a separate environment with the reference's pinned dependencies
   (``pip install torch diffusers==0.29.2 transformers==4.44.2 huggingface_hub==0.25.2 einops``),
   with a checkout of yangxy/PASD and an unpacked basicsr 1.4.2 source archive (for its RRDB)::

       python tools/make_reference_fixtures.py record tests/fixtures/reference \
           --pasd-repo ~/src/PASD --basicsr-src ~/src/basicsr-1.4.2

``record`` loads the weights with the reference classes, runs their forward passes on seeded inputs
and writes ``outputs.safetensors`` per case, plus the full-width (SD1.5) key and shape inventories
of the reference models, built on the meta device.

Two shims are applied, neither touching the reference's code: its PASD-light blocks import
``diffusers.models.transformers.unet_2d_blocks``, a module path that does not exist in the diffusers
it pins, so that name is aliased to ``diffusers.models.unets.unet_2d_blocks``; and basicsr's
``rrdbnet_arch.py`` is loaded from its source file with its unrelated imports stubbed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

# name: (unet variant, use_rrdb)
CASES = {"full": ("full", False), "light": ("light", False), "light_rrdb": ("light", True)}
# latent sizes: one divisible by 8, one not (exercises forward_upsample_size)
LATENT_SIZES = [(16, 24), (12, 20)]
SEED = 1234


def write_weights(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backend.models.tiny import write_pasd_components

    for i, (name, (variant, rrdb)) in enumerate(CASES.items()):
        write_pasd_components(out / name, variant, rrdb, seed=100 + i)
        print("wrote", out / name)


def _install_shims(basicsr_src: Path) -> None:
    import diffusers.models.unets.unet_2d_blocks as blocks

    sys.modules["diffusers.models.transformers.unet_2d_blocks"] = blocks

    def stub(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mod.__path__ = []  # a package, so submodules can be registered under it
        sys.modules[name] = mod
        return mod

    class _Registry:
        def register(self, *a, **k):
            return (lambda obj: obj) if not a or not callable(a[0]) else a[0]

    stub("basicsr")
    stub("basicsr.utils")
    stub("basicsr.utils.registry", ARCH_REGISTRY=_Registry())
    stub("basicsr.archs")
    stub(
        "basicsr.archs.arch_util",
        default_init_weights=lambda *a, **k: None,
        make_layer=None,
        pixel_unshuffle=None,
    )
    spec = importlib.util.spec_from_file_location(
        "basicsr.archs.rrdbnet_arch", basicsr_src / "basicsr" / "archs" / "rrdbnet_arch.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["basicsr.archs.rrdbnet_arch"] = module
    spec.loader.exec_module(module)


def _reference_classes(variant: str):
    if variant == "full":
        from pasd.models.pasd.controlnet import ControlNetModel
        from pasd.models.pasd.unet_2d_condition import UNet2DConditionModel
    else:
        from pasd.models.pasd_light.controlnet import ControlNetModel
        from pasd.models.pasd_light.unet_2d_condition import UNet2DConditionModel
    return UNet2DConditionModel, ControlNetModel


def _strict_load(cls, folder: Path):
    """The reference's from_pretrained, then a check that every key was used (it only warns)."""
    from safetensors.torch import load_file

    model = cls.from_pretrained(str(folder))
    want = set(model.state_dict())
    got = set(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    if want != got:
        raise SystemExit(
            f"{folder}: reference keys differ: missing {sorted(want - got)[:5]} "
            f"unexpected {sorted(got - want)[:5]}"
        )
    return model.eval()


def record(out: Path, pasd_repo: Path, basicsr_src: Path) -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(pasd_repo))
    _install_shims(basicsr_src)
    torch.manual_seed(0)
    for name, (variant, _rrdb) in CASES.items():
        unet_cls, cn_cls = _reference_classes(variant)
        unet = _strict_load(unet_cls, out / name / "unet")
        controlnet = _strict_load(cn_cls, out / name / "controlnet")
        gen = torch.Generator().manual_seed(SEED)
        tensors: dict[str, torch.Tensor] = {}
        for s, (h, w) in enumerate(LATENT_SIZES):
            sample = torch.randn(2, 4, h, w, generator=gen)
            timestep = torch.tensor([999, 421])
            text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
            # 8-bit RGB scaled to [0, 1], as the pipeline feeds it (and small to store)
            cond_u8 = torch.randint(0, 256, (2, 3, h * 8, w * 8), generator=gen, dtype=torch.uint8)
            cond = cond_u8.float() / 255.0
            with torch.no_grad():
                _rgbs, down, mid = controlnet(
                    sample,
                    timestep,
                    encoder_hidden_states=text,
                    controlnet_cond=cond,
                    conditioning_scale=0.8,
                    return_dict=False,
                )
                out_unet = unet(
                    sample,
                    timestep,
                    encoder_hidden_states=text,
                    down_block_additional_residuals=list(down),
                    mid_block_additional_residual=mid,
                    return_dict=False,
                )[0]
            tensors.update(
                {
                    f"{s}.sample": sample,
                    f"{s}.timestep": timestep,
                    f"{s}.text": text,
                    f"{s}.cond_u8": cond_u8,
                    f"{s}.mid": mid,
                    f"{s}.unet_out": out_unet,
                }
            )
            tensors.update({f"{s}.down.{i}": d for i, d in enumerate(down)})
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(out / name / "outputs.safetensors"),
            metadata={"conditioning_scale": "0.8", "latent_sizes": json.dumps(LATENT_SIZES)},
        )
        print("recorded", name)
    record_inventories(out)


def record_inventories(out: Path) -> None:
    import torch

    # sd15.py is plain data: load it by path, since our package itself needs a newer diffusers.
    path = Path(__file__).resolve().parents[1] / "backend" / "models" / "sd15.py"
    spec = importlib.util.spec_from_file_location("sd15", path)
    sd15 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sd15)
    SD15_UNET_CONFIG, sd15_controlnet_config = sd15.SD15_UNET_CONFIG, sd15.sd15_controlnet_config

    unet_cfg = {k: v for k, v in SD15_UNET_CONFIG.items() if not k.startswith("_")}
    inventories = {}
    for variant in ("full", "light"):
        unet_cls, cn_cls = _reference_classes(variant)
        with torch.device("meta"):
            inventories[f"unet_{variant}"] = _inventory(unet_cls(**unet_cfg))
    _, cn_cls = _reference_classes("full")
    for rrdb in (False, True):
        cn_cfg = {k: v for k, v in sd15_controlnet_config(rrdb).items() if not k.startswith("_")}
        with torch.device("meta"):
            inventories[f"controlnet{'_rrdb' if rrdb else ''}"] = _inventory(cn_cls(**cn_cfg))
    (out / "sd15_inventory.json").write_text(json.dumps(inventories, indent=0, sort_keys=True))
    print("recorded inventories", {k: len(v) for k, v in inventories.items()})


def _inventory(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-weights")
    w.add_argument("out", type=Path)
    r = sub.add_parser("record")
    r.add_argument("out", type=Path)
    r.add_argument("--pasd-repo", type=Path, required=True)
    r.add_argument("--basicsr-src", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "write-weights":
        write_weights(args.out)
    else:
        record(args.out, args.pasd_repo, args.basicsr_src)


if __name__ == "__main__":
    main()
