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

The whole-pipeline fixtures of ``tests/test_pipeline_parity.py`` are made the same way, in two steps:

1. In the project's environment, write the tiny models, the inputs and what our engine feeds its
   pipeline (the pre-scaled image, the fidelity map, the prompts)::

       python tools/make_reference_fixtures.py write-pipeline-weights tests/fixtures/reference_pipeline

2. In the reference environment (as above, plus ``accelerate safetensors opencv-python-headless
   pillow``; basicsr is not needed; torchvision is optional, see :func:`_torchvision_stand_in`), run
   the reference pipeline (``pipeline_pasd.py``, called as its ``test_pasd.py`` calls it) on those
   inputs and record every stage (``--pasd-commit`` names the commit of a checkout without ``.git``)::

       python tools/make_reference_fixtures.py record-pipeline tests/fixtures/reference_pipeline \
           --pasd-repo ~/src/PASD [--pasd-commit SHA]

See :func:`record_pipeline` for the shims that step applies and why.

PASD-SDXL's whole-pipeline fixtures (the reference's ``pipeline_pasd_sdxl.py``, called as its
``test_pasd_sdxl.py`` calls it) are made in the same two steps, their cases beside the SD1.5 ones::

    python tools/make_reference_fixtures.py write-sdxl-pipeline tests/fixtures/reference_pipeline
    python tools/make_reference_fixtures.py record-sdxl-pipeline tests/fixtures/reference_pipeline \
        --pasd-repo ~/src/PASD [--pasd-commit SHA]

See :func:`record_sdxl_pipeline` for what is recorded.

PASD-SDXL's module fixtures (``write-weights`` also writes its tiny weights,
``tests/fixtures/reference/sdxl``) need the reference environment only, without basicsr: module
outputs and the full-width key and shape inventory (``tests/test_reference_parity.py``,
``tests/test_inventory.py``)::

    python tools/make_reference_fixtures.py record-sdxl tests/fixtures/reference --pasd-repo ~/src/PASD
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

# name: (unet variant, use_rrdb)
CASES = {"full": ("full", False), "light": ("light", False), "light_rrdb": ("light", True)}
# latent sizes: one divisible by 8, one not (exercises forward_upsample_size)
LATENT_SIZES = [(16, 24), (12, 20)]
SEED = 1234


def write_weights(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backend.models.tiny import write_pasd_components, write_pasd_sdxl_components

    for i, (name, (variant, rrdb)) in enumerate(CASES.items()):
        write_pasd_components(out / name, variant, rrdb, seed=100 + i)
        print("wrote", out / name)
    write_pasd_sdxl_components(out / "sdxl", seed=200)
    print("wrote", out / "sdxl")


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


def _plain_configs() -> types.ModuleType:
    """``backend/models/pasd/configs.py`` (plain data) without importing our package, whose modules need
    a newer diffusers than the reference's: its parent packages are registered as bare namespaces."""
    root = Path(__file__).resolve().parents[1] / "backend"
    for name, folder in (
        ("backend", root),
        ("backend.models", root / "models"),
        ("backend.models.pasd", root / "models" / "pasd"),
        ("backend.models.sdxl", root / "models" / "sdxl"),
    ):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    configs = importlib.import_module("backend.models.pasd.configs")
    configs.SD15_UNET_CONFIG = importlib.import_module("backend.models.sd15").SD15_UNET_CONFIG
    return configs


def record_inventories(out: Path) -> None:
    import torch

    configs = _plain_configs()
    SD15_UNET_CONFIG, sd15_controlnet_config = configs.SD15_UNET_CONFIG, configs.sd15_controlnet_config

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


def _rrdb_free_shims(pasd_repo: Path) -> None:
    """The reference importable without basicsr (its RRDB is off in PASD-SDXL) on diffusers 0.29.2."""
    sys.path.insert(0, str(pasd_repo))
    rrdb = types.ModuleType("basicsr.archs.rrdbnet_arch")
    rrdb.RRDB = None  # never built: use_rrdb is false
    for name in ("basicsr", "basicsr.archs"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["basicsr.archs.rrdbnet_arch"] = rrdb
    import diffusers.models.unets.unet_2d_blocks as blocks

    sys.modules["diffusers.models.transformers.unet_2d_blocks"] = blocks


def record_sdxl(out: Path, pasd_repo: Path) -> None:
    """PASD-SDXL module parity: the tiny ``out/sdxl`` weights through the reference classes.

    Inputs as the SDXL pipeline feeds them: text states of the two encoders (concatenated width),
    the pooled text embeds and the six size ids, both as ``added_cond_kwargs``.
    """
    import torch
    from safetensors.torch import save_file

    _rrdb_free_shims(pasd_repo)
    unet_cls, cn_cls = _reference_classes("full")
    folder = out / "sdxl"
    unet = _strict_load(unet_cls, folder / "unet")
    controlnet = _strict_load(cn_cls, folder / "controlnet")
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    gen = torch.Generator().manual_seed(SEED)
    tensors: dict[str, torch.Tensor] = {}
    for s, (h, w) in enumerate(LATENT_SIZES):
        sample = torch.randn(2, 4, h, w, generator=gen)
        timestep = torch.tensor([999, 421])
        text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
        text_embeds = torch.randn(2, pooled, generator=gen)
        time_ids = torch.tensor([[h * 8, w * 8, 0, 0, h * 8, w * 8]] * 2, dtype=torch.float32)
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        cond_u8 = torch.randint(0, 256, (2, 3, h * 8, w * 8), generator=gen, dtype=torch.uint8)
        with torch.no_grad():
            _rgbs, down, mid = controlnet(
                sample,
                timestep,
                encoder_hidden_states=text,
                controlnet_cond=cond_u8.float() / 255.0,
                conditioning_scale=0.8,
                added_cond_kwargs=added,
                return_dict=False,
            )
            out_unet = unet(
                sample,
                timestep,
                encoder_hidden_states=text,
                added_cond_kwargs=added,
                down_block_additional_residuals=list(down),
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0]
        tensors.update(
            {
                f"{s}.sample": sample,
                f"{s}.timestep": timestep,
                f"{s}.text": text,
                f"{s}.text_embeds": text_embeds,
                f"{s}.time_ids": time_ids,
                f"{s}.cond_u8": cond_u8,
                f"{s}.mid": mid,
                f"{s}.unet_out": out_unet,
            }
        )
        tensors.update({f"{s}.down.{i}": d for i, d in enumerate(down)})
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(folder / "outputs.safetensors"),
        metadata={
            "conditioning_scale": "0.8",
            "latent_sizes": json.dumps(LATENT_SIZES),
            "residuals": str(len(down)),
        },
    )
    print("recorded sdxl")
    record_sdxl_inventory(out)


def record_sdxl_inventory(out: Path) -> None:
    """Keys and shapes of the reference PASD-SDXL UNet and ControlNet at full width (meta device).

    PASD-SDXL uses the full (non-light) classes with SDXL's config (``backend/models/pasd/configs.py``,
    plain data, see :func:`_plain_configs`). Call after :func:`_rrdb_free_shims`.
    """
    import inspect

    import torch

    sdxl = _plain_configs()

    def accepted(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        params = set(inspect.signature(cls.__init__).parameters)
        return {k: v for k, v in cfg.items() if k in params}

    unet_cls, cn_cls = _reference_classes("full")
    with torch.device("meta"):
        inventories = {
            "unet_full": _inventory(unet_cls(**accepted(unet_cls, sdxl.pasd_sdxl_unet_config()))),
            "controlnet": _inventory(cn_cls(**accepted(cn_cls, sdxl.pasd_sdxl_controlnet_config()))),
        }
    (out / "sdxl_inventory.json").write_text(json.dumps(inventories, indent=0, sort_keys=True))
    print("recorded SDXL inventories", {k: len(v) for k, v in inventories.items()})


def _inventory(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- whole-pipeline fixtures
# The cases of tests/test_pipeline_parity.py. "model" names the case folder whose model/ a case uses
# (the mask case reuses the full model). Inputs are small: upscale 32×40 → ×2 → 64×80, colorize 64×80,
# so every case diffuses one 8×10 latent tile with the VAE untiled.
PIPELINE_CASES: dict[str, dict[str, Any]] = {
    "upscale_full": {"model": "upscale_full", "variant": "full", "task": "upscale", "fidelity_bg": 0.8},
    "upscale_light": {"model": "upscale_light", "variant": "light", "task": "upscale"},
    "colorize": {"model": "colorize", "variant": "color", "task": "colorize"},
    "upscale_mask": {
        "model": "upscale_full",
        "variant": "full",
        "task": "upscale",
        "mask": True,
        "fidelity_fg": 1.2,
        "fidelity_bg": 0.6,
    },
}
PIPELINE_OUTPUT = (64, 80)  # = the process size: the final resize is the identity on both sides
PIPELINE_STEPS = 4
# test_pasd.py's tiled-VAE and latent-tile settings (none of them tiles at these sizes)
REFERENCE_VAE_TILES = {"encoder_tile_size": 1024, "decoder_tile_size": 224}
REFERENCE_LATENT_TILE = {"latent_tiled_size": 320, "latent_tiled_overlap": 8}

# The cases of the PASD-SDXL pipeline fixtures, at the same sizes (one 8×10 latent tile, the VAE
# untiled). test_pasd_sdxl.py's defaults: conditioning scale 0.8, guidance 7.0; the mask case reuses
# sdxl_upscale's model.
SDXL_PIPELINE_CASES: dict[str, dict[str, Any]] = {
    "sdxl_upscale": {
        "model": "sdxl_upscale",
        "variant": "sdxl",
        "task": "upscale",
        "fidelity_bg": 0.8,
        "guidance": 7.0,
    },
    "sdxl_mask": {
        "model": "sdxl_upscale",
        "variant": "sdxl",
        "task": "upscale",
        "mask": True,
        "fidelity_fg": 1.2,
        "fidelity_bg": 0.6,
        "guidance": 7.0,
    },
}
# test_pasd_sdxl.py's latent tile (it never inits the tiled VAE); 8×10 latents are one tile
REFERENCE_SDXL_LATENT_TILE = {"latent_tiled_size": 180, "latent_tiled_overlap": 8}


def _pipeline_inputs(name: str, task: str, with_mask: bool, cases: dict[str, dict[str, Any]]):
    """Seeded 8-bit values as float32 (so the reference's 8-bit views of them are exact), and a
    feathered disc as the soft mask. The seed is the case's place in its own table (``cases``)."""
    import numpy as np

    rng = np.random.default_rng(SEED + sorted(cases).index(name))
    h, w = PIPELINE_OUTPUT if task == "colorize" else (PIPELINE_OUTPUT[0] // 2, PIPELINE_OUTPUT[1] // 2)
    channels = 1 if task == "colorize" else 3
    image = (rng.integers(0, 256, size=(h, w, channels)).astype(np.float32) / np.float32(255)).astype(
        np.float32
    )
    mask = None
    if with_mask:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.hypot((yy - h * 0.45) / h, (xx - w * 0.55) / w)
        mask = np.clip((0.3 - d) / 0.15, 0, 1).astype(np.float32)
    return image, mask


def write_pipeline_weights(out: Path) -> None:
    """Our side of the pipeline fixtures: tiny models, inputs, and what our engine feeds its pipeline."""
    _write_pipeline_cases(out, PIPELINE_CASES, seed=200)


def write_sdxl_pipeline(out: Path) -> None:
    """Our side of the PASD-SDXL pipeline fixtures (:data:`SDXL_PIPELINE_CASES`), as
    :func:`write_pipeline_weights` does for SD1.5: the tiny PASD-SDXL model (SDXL base's two text
    encoders and tokenizers, VAE and Euler scheduler beside the PASD ``unet/`` and ``controlnet/``), the
    inputs, and what our engine feeds its pipeline."""
    _write_pipeline_cases(out, SDXL_PIPELINE_CASES, seed=300)


def _write_pipeline_cases(out: Path, cases: dict[str, dict[str, Any]], seed: int) -> None:
    """Each case's tiny model (a case that names another case's model reuses it) and its inputs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backend.models.tiny import write_tiny_model

    for i, (name, case) in enumerate(cases.items()):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if case["model"] == name:
            write_tiny_model(folder / "model", case["variant"], seed=seed + i)
        _write_pipeline_case(out, name, case, cases)
        print("wrote", folder)


def _write_pipeline_case(
    out: Path, name: str, case: dict[str, Any], cases: dict[str, dict[str, Any]]
) -> None:
    """Run our engine on the case's inputs and keep what it feeds its pipeline (``trace``): the
    pre-scaled image ``cond`` and, with a mask, the fidelity map ``scale_map``; the prompts it built go
    to ``metadata.json``. The reference is then run on exactly these, so the pre-scaling filter and
    the prompt assembly are out of the comparison."""
    import diffusers
    import torch
    from safetensors.torch import save_file

    from backend.engine import Engine, RunPlan
    from backend.pipelines.params import RestoreParams

    folder = out / name
    image, mask = _pipeline_inputs(name, case["task"], case.get("mask", False), cases)
    colorize = case["task"] == "colorize"
    params = RestoreParams(
        task=case["task"],
        scale=1.0 if colorize else 2.0,
        prompt="a house" if colorize else "old photo",
        steps=PIPELINE_STEPS,
        guidance=case.get("guidance", 7.5),
        seed=SEED,
        fidelity_fg=case.get("fidelity_fg", 1.0),
        fidelity_bg=case.get("fidelity_bg", 1.0),
        added_noise_level=900,
        tile=max(PIPELINE_OUTPUT),
        vae_tile=max(PIPELINE_OUTPUT),
    )
    plan = RunPlan(
        input_size=image.shape[:2],
        output_size=PIPELINE_OUTPUT,
        process_size=PIPELINE_OUTPUT,
        tile=max(PIPELINE_OUTPUT),
        vae_tile=max(PIPELINE_OUTPUT),
        tiles=1,
    )

    class FixedPlanEngine(Engine):
        """RestoreParams refuses process sizes under 256 px (a floor for users); fixtures stay small."""

        def plan(self, height: int, width: int, params: RestoreParams, pipeline: Any) -> RunPlan:
            return plan

    seen: dict[str, torch.Tensor] = {}
    engine = FixedPlanEngine(device="cpu", dtype="fp32")
    model = out / case["model"] / "model"
    result = engine.restore(image, params, mask=mask, model=model, trace=seen.setdefault)
    tensors = {"image": torch.from_numpy(image), "cond": seen["cond"]}
    if mask is not None:
        tensors.update(mask=torch.from_numpy(mask), scale_map=seen["scale_map"])
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "inputs.safetensors"))
    metadata = {
        "case": name,
        "task": case["task"],
        "variant": case["variant"],
        "model": f"../{case['model']}/model",
        "params": params.to_dict(),
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.__dict__.items()},
        "prompt": result.prompt,
        "negative_prompt": result.negative_prompt,
        "conditioning_scale": None if mask is not None else params.fidelity_bg,
        "ours": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def _torchvision_stand_in() -> None:
    """Stand-ins for the two torchvision transforms the reference's colour fix uses, if no torchvision.

    The reference imports ``torchvision.utils.save_image`` (never called) and uses ``ToTensor`` /
    ``ToPILImage`` in ``wavelet_color_fix``. The registry's torchvision wheels are CUDA builds that do not
    load next to a CPU-only torch, so without one these do torchvision's conversions: 8-bit PIL to float
    by ÷255, and float to 8 bits by truncating ``x * 255`` (what ``to_pil_image`` does, not rounding).
    """
    import importlib.machinery

    try:
        import torchvision  # noqa: F401

        return
    except ModuleNotFoundError:
        pass
    except Exception as exc:  # installed, but built for another torch
        raise SystemExit(f"torchvision does not load here ({exc}); uninstall it to use the stand-in") from exc
    import numpy as np
    import PIL.Image
    import torch

    class ToTensor:
        def __call__(self, pic: PIL.Image.Image) -> torch.Tensor:
            a = np.array(pic, dtype=np.uint8, copy=True)
            a = a[:, :, None] if a.ndim == 2 else a
            return torch.from_numpy(a.transpose(2, 0, 1)).contiguous().float().div(255)

    class ToPILImage:
        def __call__(self, pic: torch.Tensor) -> PIL.Image.Image:
            a = (pic.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            return PIL.Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)

    modules = {
        "torchvision": {},
        "torchvision.utils": {"save_image": None},
        "torchvision.transforms": {"ToTensor": ToTensor, "ToPILImage": ToPILImage},
    }
    for name, attrs in modules.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__path__ = []
        sys.modules[name] = mod


def _commit(repo: Path, given: str | None) -> str:
    if given:
        return given
    import subprocess

    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def record_pipeline(out: Path, pasd_repo: Path, commit: str | None) -> None:
    """Run the reference pipeline on each case's inputs and record its stages.

    The pipeline (``pasd/pipelines/pipeline_pasd.py``) is called as ``test_pasd.py`` calls it, on the
    image our engine feeds its own pipeline (so the pre-scaling filter is out of the comparison), with
    our prompt strings, one seeded CPU generator, float32. Stages are read by wrapping methods of the
    instances, never by editing the reference's files:

    - ``_encode_prompt`` → ``prompt_embeds``; ``prepare_latents`` → ``noised_start``;
      ``scheduler.step`` → ``step_{i}``; ``image_processor.postprocess`` also run with
      ``output_type="pt"`` → ``decoded`` (float, before the 8-bit PIL the pipeline returns);
      the module's ``randn_tensor`` → the draws ``noise`` and ``added_noise``;
      the first ``scheduler.add_noise`` → ``init_latents`` (the VAE sample, scaled).
    - The second ``add_noise`` (PASD's ``added_noise_level``) is computed as diffusers 0.21.4 did,
      ``√ᾱ[t]·x + √(1−ᾱ[t])·ε``, the version the feature was written on; 0.29.2 looks the level up
      in the solver's steps and, 900 not being one of them, noises to the last step instead.
    - ``upscale_mask``: the reference ControlNet takes only a scalar scale, so its ``forward`` is
      wrapped to multiply every residual by the fidelity map area-averaged to the residual's size
      (what our ControlNet does with a map) and is called with scale 1.0.
    - After the call, as ``test_pasd.py`` goes on: ``wavelet_color_fix`` on the 8-bit images →
      ``color_fixed_u8`` / ``final_u8`` (upscale), the YUV luminance transfer with cv2 → ``final_u8``
      (colorize, RGB order); and the float colour fix, ``wavelet_reconstruction`` on the float decoded
      image clamped to [0, 1] as ``wavelet_color_fix`` does before its 8-bit conversion →
      ``color_fixed``, which is also ``final`` (the output size is the fed image's, so the reference's
      final resize is the identity).
    """
    versions = _reference_setup(
        pasd_repo, commit, "pasd/pipelines/pipeline_pasd.py StableDiffusionControlNetPipeline"
    )
    _record_cases(out, PIPELINE_CASES, versions, _record_pipeline_case, U8_NOTE)


U8_NOTE = (
    "color_fixed_u8 / final_u8 are the reference's own 8-bit images (the pipeline's PIL "
    "output, the colour fix with its to_pil_image truncation, cv2's YUV transfer); color_fixed / "
    "final are the float colour fix before that conversion"
)


def _reference_setup(pasd_repo: Path, commit: str | None, pipeline: str) -> dict[str, str]:
    """What both pipeline recorders need before importing the reference (the torchvision stand-in, the
    ``unet_2d_blocks`` alias, the checkout on ``sys.path``); returns the versions block of the metadata."""
    import diffusers
    import huggingface_hub
    import torch
    import transformers

    _torchvision_stand_in()
    import diffusers.models.unets.unet_2d_blocks as blocks

    sys.modules["diffusers.models.transformers.unet_2d_blocks"] = blocks
    sys.path.insert(0, str(pasd_repo))
    return {
        "repository": "github.com/yangxy/PASD",
        "commit": _commit(pasd_repo, commit),
        "pipeline": pipeline,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "torchvision": "stand-in" if sys.modules["torchvision"].__spec__.origin is None else "installed",
    }


def _record_cases(
    out: Path,
    cases: dict[str, dict[str, Any]],
    versions: dict[str, str],
    record_case: Any,
    u8_note: str,
) -> None:
    """Record each case with ``record_case(folder, case) -> (stages, facts)`` and add the ``reference``
    block (versions, the case's facts such as its timesteps, the stage names) to its metadata."""
    for name, case in cases.items():
        stages, facts = record_case(out / name, case)
        print("recorded", name, sorted(stages))
        meta = json.loads((out / name / "metadata.json").read_text())
        meta["reference"] = {**versions, **facts, "stages": sorted(stages), "u8": u8_note}
        (out / name / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def _spy(obj: Any, attr: str, seen: Any) -> Any:
    """Replace ``obj.attr`` by a call that hands its result to ``seen``; returns the original. The
    replacement keeps the original's signature (``functools.wraps``): pipelines inspect it, e.g. whether
    ``scheduler.step`` takes a ``generator``."""
    import functools

    original = getattr(obj, attr)

    @functools.wraps(original)
    def spied(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen(result)
        return result

    setattr(obj, attr, spied)
    return original


def _record_pipeline_case(folder: Path, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from argparse import Namespace

    import accelerate.utils
    import cv2
    import numpy as np
    import pasd.pipelines.pipeline_pasd as pipeline_module
    import PIL.Image
    import torch
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    meta = json.loads((folder / "metadata.json").read_text())
    inputs = load_file(str(folder / "inputs.safetensors"))
    params = meta["params"]
    model = (folder / meta["model"]).resolve()
    unet_cls, cn_cls = _reference_classes("full" if case["variant"] == "full" else "light")
    unet = _strict_load(unet_cls, model / "unet")
    controlnet = _strict_load(cn_cls, model / "controlnet")
    # test_pasd.py reads the scheduler from the SD base (realisr) or from the PASD model's parent
    # folder (grayscale); both are the tiny model's own scheduler/ here.
    scheduler = UniPCMultistepScheduler.from_pretrained(str(model), subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(str(model), subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer")
    vae = AutoencoderKL.from_pretrained(str(model), subfolder="vae")
    for module in (vae, text_encoder, unet, controlnet):
        module.requires_grad_(False).to("cpu", dtype=torch.float32)
    pipe = pipeline_module.StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        feature_extractor=None,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe._init_tiled_vae(**REFERENCE_VAE_TILES)

    stages: dict[str, torch.Tensor] = {}
    draws: list[torch.Tensor] = []

    def keep(key: str, value: torch.Tensor) -> None:
        stages[key] = value.detach().float().cpu().clone()

    _spy(pipe, "_encode_prompt", lambda r: keep("prompt_embeds", r))
    _spy(pipe, "prepare_latents", lambda r: keep("noised_start", r))
    _spy(scheduler, "step", lambda r: keep(f"step_{sum(k.startswith('step_') for k in stages)}", r[0]))
    randn_tensor = _spy(pipeline_module, "randn_tensor", lambda r: draws.append(r.detach().float().clone()))

    add_noise = scheduler.add_noise
    add_noise_calls: list[int] = []

    def add_noise_as_in_0_21_4(
        original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        add_noise_calls.append(int(timesteps[0]))
        if len(add_noise_calls) == 1:
            keep("init_latents", original_samples)
            return add_noise(original_samples, noise, timesteps)
        # diffusers 0.21.4's UniPCMultistepScheduler.add_noise, for PASD's added noise
        alphas_cumprod = scheduler.alphas_cumprod.to(
            device=original_samples.device, dtype=original_samples.dtype
        )
        timesteps = timesteps.to(original_samples.device)
        sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten()
        sqrt_one_minus = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten()
        while sqrt_alpha_prod.ndim < original_samples.ndim:
            sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)
            sqrt_one_minus = sqrt_one_minus.unsqueeze(-1)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus * noise

    scheduler.add_noise = add_noise_as_in_0_21_4

    _keep_decoded(pipe, keep)
    conditioning_scale = _conditioning_scale(controlnet, meta, inputs)

    args = Namespace(
        init_latent_with_noise=False,
        offset_noise_scale=0.0,
        num_inference_steps=params["steps"],
        added_noise_level=params["added_noise_level"],
        **REFERENCE_LATENT_TILE,
    )
    accelerate.utils.set_seed(params["seed"])
    generator = torch.Generator(device="cpu").manual_seed(params["seed"])
    cond = inputs["cond"]
    try:
        image = pipe(
            args,
            meta["prompt"],
            cond,
            num_inference_steps=params["steps"],
            generator=generator,
            guidance_scale=params["guidance"],
            negative_prompt=meta["negative_prompt"],
            conditioning_scale=conditioning_scale,
        ).images[0]
    finally:
        pipeline_module.randn_tensor = randn_tensor
    if len(draws) != 2 or add_noise_calls != [int(scheduler.timesteps[0]), params["added_noise_level"]]:
        raise SystemExit(f"{folder.name}: unexpected draws {len(draws)} / add_noise calls {add_noise_calls}")
    stages["noise"], stages["added_noise"] = draws

    if case["task"] == "upscale":
        _upscale_color_fix(stages, image, cond, meta["plan"]["output_size"])
    else:
        grey_u8 = (inputs["image"][..., 0].numpy() * 255).round().astype(np.uint8)
        orig_img = PIL.Image.fromarray(grey_u8).convert("L").convert("RGB")
        # test_pasd.py's grayscale post-processing, step by step
        np_image = np.asarray(image)[:, :, ::-1]
        color_np = cv2.resize(np_image, orig_img.size)
        orig_np = np.asarray(orig_img)
        color_yuv = cv2.cvtColor(color_np, cv2.COLOR_BGR2YUV)
        orig_yuv = cv2.cvtColor(orig_np, cv2.COLOR_BGR2YUV)
        hires = np.copy(orig_yuv)
        hires[:, :, 1:3] = color_yuv[:, :, 1:3]
        np_image = cv2.cvtColor(hires, cv2.COLOR_YUV2BGR)
        stages["final_u8"] = torch.from_numpy(np.ascontiguousarray(np_image[:, :, ::-1]))
    save_file({k: v.contiguous() for k, v in stages.items()}, str(folder / "outputs.safetensors"))
    return stages, {"timesteps": [int(t) for t in scheduler.timesteps]}


def _strict_text_encoder(cls: Any, model: Path, subfolder: str) -> Any:
    """transformers' ``from_pretrained``, refusing what it only warns about: keys it did not use or did
    not find (a file written under other key names would leave the encoder silently random)."""
    encoder, info = cls.from_pretrained(str(model), subfolder=subfolder, output_loading_info=True)
    bad = {k: list(info[k])[:5] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[k]}
    if bad:
        raise SystemExit(f"{model / subfolder}: reference keys differ: {bad}")
    return encoder.eval()


def _keep_decoded(pipe: Any, keep: Any) -> None:
    """Also run the pipeline's ``image_processor.postprocess`` with ``output_type="pt"`` and keep that as
    ``decoded``: the float image (denormalised, clamped to [0, 1]) before the 8-bit PIL conversion."""
    postprocess = pipe.image_processor.postprocess

    def postprocess_kept(image: Any, output_type: str = "pil", do_denormalize: Any = None) -> Any:
        keep("decoded", postprocess(image, output_type="pt", do_denormalize=do_denormalize))
        return postprocess(image, output_type=output_type, do_denormalize=do_denormalize)

    pipe.image_processor.postprocess = postprocess_kept


def _conditioning_scale(controlnet: Any, meta: dict[str, Any], inputs: dict[str, Any]) -> float:
    """The scale to call the pipeline with. With a fidelity map (``conditioning_scale`` null) the
    reference ControlNet, which takes only a scalar, gets its ``forward`` wrapped to multiply every
    residual by the map area-averaged to the residual's size (what our ControlNet does with a map), and
    the scale is 1.0."""
    import torch.nn.functional as F

    if meta["conditioning_scale"] is not None:
        return meta["conditioning_scale"]
    scale_map = inputs["scale_map"]
    controlnet_forward = controlnet.forward

    def forward_with_map(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("return_dict") is False
        rgbs, down, mid = controlnet_forward(*args, **kwargs)
        down = [d * F.adaptive_avg_pool2d(scale_map, d.shape[-2:]) for d in down]
        mid = mid * F.adaptive_avg_pool2d(scale_map, mid.shape[-2:])
        return rgbs, down, mid

    controlnet.forward = forward_with_map
    return 1.0


def _upscale_color_fix(stages: dict[str, Any], image: Any, cond: Any, output_size: list[int]) -> None:
    """The upscale scripts' post-processing after the pipeline: ``wavelet_color_fix`` of the 8-bit output
    against the fed image (8-bit in the scripts) → ``color_fixed_u8`` / ``final_u8``, the final resize to
    the output size being the identity here; and the same colour fix on the float ``decoded`` image,
    clamped to [0, 1] as ``wavelet_color_fix`` does before its 8-bit conversion → ``color_fixed`` /
    ``final``."""
    import numpy as np
    import PIL.Image
    import torch
    from pasd.myutils.wavelet_color_fix import wavelet_color_fix, wavelet_reconstruction

    height, width = output_size
    fixed_float = wavelet_reconstruction(stages["decoded"], cond).clamp_(0.0, 1.0)
    stages["color_fixed"] = fixed_float
    stages["final"] = fixed_float.clone()
    u8 = (cond[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    fixed = wavelet_color_fix(image, PIL.Image.fromarray(u8))
    assert fixed.size == (width, height)  # so the scripts' resize to ori×rscale is the identity
    stages["color_fixed_u8"] = torch.from_numpy(np.asarray(fixed).copy())
    stages["final_u8"] = torch.from_numpy(np.asarray(fixed.resize((width, height))).copy())


def record_sdxl_pipeline(out: Path, pasd_repo: Path, commit: str | None) -> None:
    """Run the reference PASD-SDXL pipeline on each :data:`SDXL_PIPELINE_CASES` case and record its stages.

    ``pasd/pipelines/pipeline_pasd_sdxl.py`` (``StableDiffusionXLControlNetPipeline``) is built and called
    as ``test_pasd_sdxl.py`` does: the full PASD classes, ``CLIPTextModel`` + ``CLIPTextModelWithProjection``
    and their tokenizers, the VAE, ``EulerDiscreteScheduler`` from the model's ``scheduler/``, no tiled
    VAE, latent tile 180 / 8 (one tile here), ``guess_mode=False``, one seeded CPU generator, float32.
    It is fed what our engine feeds its pipeline: the pre-scaled float image (the control image processor
    does not normalise, and resizing a tensor to its own size is the identity, so it reaches the
    ControlNet unchanged; checked) and our prompt strings. Stages, read by wrapping methods of the
    instances, never by editing the reference's files:

    - the UNet's inputs at the first step → ``prompt_embeds`` ([negative, positive] on the batch axis),
      ``pooled_prompt_embeds`` (``text_embeds``, [negative, positive]) and ``time_ids`` (as fed:
      ``[H, W, 0, 0, H, W]`` of the processed image, both halves); at every step, ``model_input_{i}``
      (the CFG-doubled latents after the Euler ``scale_model_input``) and ``noise_pred_{i}`` (after CFG,
      as given to ``scheduler.step``); the ControlNet's inputs are checked to be the UNet's at every step
      (latents, text states, ``text_embeds``, ``time_ids``), its conditioning image kept once as
      ``controlnet_cond``;
    - the pipeline module's ``randn_tensor``, drawn exactly once → ``noise``; ``prepare_latents`` →
      ``start`` (``noise × init_noise_sigma``); ``scheduler.step`` → ``step_{i}``; ``decoded`` as in
      :func:`record_pipeline`;
    - ``sdxl_mask``: the fidelity map through the wrapped ControlNet ``forward``, scale 1.0, as for
      ``upscale_mask``;
    - after the call, as ``test_pasd_sdxl.py`` goes on (the same as ``test_pasd.py``'s upscale):
      ``color_fixed`` / ``final`` and ``color_fixed_u8`` / ``final_u8``.

    Euler's ``step`` gets the generator and draws a noise tensor from it at every step, but uses it only
    when ``s_churn > 0`` (the pipeline never passes it, so it is 0): the draws advance the generator after
    the start latents were drawn and change nothing. An implementation need not draw them; the count is
    recorded (``euler_step_draws``) to show they happened and were ignored.
    """
    versions = _reference_setup(
        pasd_repo, commit, "pasd/pipelines/pipeline_pasd_sdxl.py StableDiffusionXLControlNetPipeline"
    )
    u8_note = (
        "color_fixed_u8 / final_u8 are the reference's own 8-bit images (the pipeline's PIL output, the "
        "colour fix with its to_pil_image truncation); color_fixed / final are the float colour fix "
        "before that conversion"
    )
    _record_cases(out, SDXL_PIPELINE_CASES, versions, _record_sdxl_pipeline_case, u8_note)


def _record_sdxl_pipeline_case(folder: Path, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import functools
    from argparse import Namespace

    import accelerate.utils
    import diffusers.schedulers.scheduling_euler_discrete as euler_module
    import pasd.pipelines.pipeline_pasd_sdxl as pipeline_module
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    meta = json.loads((folder / "metadata.json").read_text())
    inputs = load_file(str(folder / "inputs.safetensors"))
    params = meta["params"]
    model = (folder / meta["model"]).resolve()
    unet_cls, cn_cls = _reference_classes("full")  # PASD-SDXL is released with the full classes only
    unet = _strict_load(unet_cls, model / "unet")
    controlnet = _strict_load(cn_cls, model / "controlnet")
    scheduler = EulerDiscreteScheduler.from_pretrained(str(model), subfolder="scheduler")
    text_encoder = _strict_text_encoder(CLIPTextModel, model, "text_encoder")
    text_encoder_2 = _strict_text_encoder(CLIPTextModelWithProjection, model, "text_encoder_2")
    # test_pasd_sdxl.py: AutoTokenizer(use_fast=False), i.e. the slow CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer_2")
    vae = AutoencoderKL.from_pretrained(str(model), subfolder="vae")
    for module in (vae, text_encoder, text_encoder_2, unet, controlnet):
        module.requires_grad_(False).to("cpu", dtype=torch.float32)
    pipe = pipeline_module.StableDiffusionXLControlNetPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
    )

    stages: dict[str, torch.Tensor] = {}
    draws: list[torch.Tensor] = []
    euler_draws: list[torch.Tensor] = []
    unet_calls: list[dict[str, torch.Tensor]] = []
    controlnet_calls: list[dict[str, torch.Tensor]] = []

    def keep(key: str, value: torch.Tensor) -> None:
        stages[key] = value.detach().float().cpu().clone()

    def seen_inputs(calls: list[dict[str, torch.Tensor]], forward: Any) -> Any:
        """``forward``, keeping copies of the inputs the UNet and the ControlNet have in common."""

        @functools.wraps(forward)
        def forward_seen(sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
            added = kwargs["added_cond_kwargs"]
            seen = {
                "sample": sample,
                "timestep": torch.as_tensor(timestep),
                "text": kwargs["encoder_hidden_states"],
                "text_embeds": added["text_embeds"],
                "time_ids": added["time_ids"],
            }
            if "controlnet_cond" in kwargs:
                seen["cond"] = kwargs["controlnet_cond"]
            calls.append({k: v.detach().clone() for k, v in seen.items()})
            return forward(sample, timestep, **kwargs)

        return forward_seen

    _spy(pipe, "prepare_latents", lambda r: keep("start", r))
    _spy(scheduler, "step", lambda r: keep(f"step_{sum(k.startswith('step_') for k in stages)}", r[0]))
    step = scheduler.step
    step_generators: list[Any] = []

    @functools.wraps(step)
    def step_seen(model_output: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        keep(f"noise_pred_{sum(k.startswith('noise_pred_') for k in stages)}", model_output)
        step_generators.append(kwargs.get("generator"))
        return step(model_output, *args, **kwargs)

    scheduler.step = step_seen
    randn_tensor = _spy(pipeline_module, "randn_tensor", lambda r: draws.append(r.detach().float().clone()))
    euler_randn = _spy(euler_module, "randn_tensor", euler_draws.append)
    _keep_decoded(pipe, keep)
    conditioning_scale = _conditioning_scale(controlnet, meta, inputs)
    # outermost, so what is kept is the call's own arguments
    unet.forward = seen_inputs(unet_calls, unet.forward)
    controlnet.forward = seen_inputs(controlnet_calls, controlnet.forward)

    args = Namespace(**REFERENCE_SDXL_LATENT_TILE)
    accelerate.utils.set_seed(params["seed"])
    generator = torch.Generator(device="cpu").manual_seed(params["seed"])
    cond = inputs["cond"]
    try:
        image = pipe(
            args,
            prompt=meta["prompt"],
            image=cond,
            num_inference_steps=params["steps"],
            generator=generator,
            guidance_scale=params["guidance"],
            negative_prompt=meta["negative_prompt"],
            controlnet_conditioning_scale=float(conditioning_scale),
            guess_mode=False,
        ).images[0]
    finally:
        pipeline_module.randn_tensor = randn_tensor
        euler_module.randn_tensor = euler_randn

    steps = params["steps"]
    if len(draws) != 1 or len(unet_calls) != steps or len(controlnet_calls) != steps:
        raise SystemExit(
            f"{folder.name}: {len(draws)} draws, {len(unet_calls)} UNet / {len(controlnet_calls)} ControlNet "
            f"calls for {steps} steps (tiled, or a changed pipeline?)"
        )
    stages["noise"] = draws[0]
    for i, (u, c) in enumerate(zip(unet_calls, controlnet_calls, strict=True)):
        for key in ("sample", "timestep", "text", "text_embeds", "time_ids"):
            if not torch.equal(u[key], c[key]):
                raise SystemExit(f"{folder.name}: step {i}: the ControlNet's {key} is not the UNet's")
        keep(f"model_input_{i}", u["sample"])
    if not all(torch.equal(c["cond"], controlnet_calls[0]["cond"]) for c in controlnet_calls):
        raise SystemExit(f"{folder.name}: the ControlNet's conditioning image changes between steps")
    keep("prompt_embeds", unet_calls[0]["text"])
    keep("pooled_prompt_embeds", unet_calls[0]["text_embeds"])
    keep("time_ids", unet_calls[0]["time_ids"])
    keep("controlnet_cond", controlnet_calls[0]["cond"])
    if not torch.equal(stages["controlnet_cond"], torch.cat([cond, cond])):
        raise SystemExit(f"{folder.name}: the control image processor changed the conditioning image")
    _upscale_color_fix(stages, image, cond, meta["plan"]["output_size"])
    save_file({k: v.contiguous() for k, v in stages.items()}, str(folder / "outputs.safetensors"))
    return stages, {
        "timesteps": [float(t) for t in scheduler.timesteps],
        "sigmas": [float(s) for s in scheduler.sigmas],
        "init_noise_sigma": float(scheduler.init_noise_sigma),
        "euler_step_draws": len(euler_draws),
        "euler_step_generator": all(g is generator for g in step_generators),
        "controlnet_inputs": "the UNet's at every step (latents, timestep, text, text_embeds, time_ids)",
    }


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
    wp = sub.add_parser("write-pipeline-weights")
    wp.add_argument("out", type=Path)
    rp = sub.add_parser("record-pipeline")
    rp.add_argument("out", type=Path)
    rp.add_argument("--pasd-repo", type=Path, required=True)
    rp.add_argument("--pasd-commit", help="the checkout's commit, when it is not a git work tree")
    rs = sub.add_parser("record-sdxl")
    rs.add_argument("out", type=Path)
    rs.add_argument("--pasd-repo", type=Path, required=True)
    wsp = sub.add_parser("write-sdxl-pipeline")
    wsp.add_argument("out", type=Path)
    rsp = sub.add_parser("record-sdxl-pipeline")
    rsp.add_argument("out", type=Path)
    rsp.add_argument("--pasd-repo", type=Path, required=True)
    rsp.add_argument("--pasd-commit", help="the checkout's commit, when it is not a git work tree")
    args = parser.parse_args()
    if args.command == "write-weights":
        write_weights(args.out)
    elif args.command == "record":
        record(args.out, args.pasd_repo, args.basicsr_src)
    elif args.command == "write-pipeline-weights":
        write_pipeline_weights(args.out)
    elif args.command == "record-sdxl":
        record_sdxl(args.out, args.pasd_repo)
    elif args.command == "write-sdxl-pipeline":
        write_sdxl_pipeline(args.out)
    elif args.command == "record-sdxl-pipeline":
        record_sdxl_pipeline(args.out, args.pasd_repo, args.pasd_commit)
    else:
        record_pipeline(args.out, args.pasd_repo, args.pasd_commit)


if __name__ == "__main__":
    main()
