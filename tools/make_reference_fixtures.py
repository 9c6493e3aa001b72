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

PASD-SDXL's fixtures (``write-weights`` also writes its tiny weights, ``tests/fixtures/reference/sdxl``)
need the reference environment only, without basicsr: module outputs and the full-width key and
shape inventory (``tests/test_reference_parity.py``, ``tests/test_inventory.py``)::

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

    PASD-SDXL uses the full (non-light) classes with SDXL's config (``backend/models/sdxl.py``, plain
    data, loaded by path). Call after :func:`_rrdb_free_shims`.
    """
    import inspect

    import torch

    path = Path(__file__).resolve().parents[1] / "backend" / "models" / "sdxl.py"
    spec = importlib.util.spec_from_file_location("sdxl", path)
    sdxl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sdxl)

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


def _pipeline_inputs(name: str, task: str, with_mask: bool):
    """Seeded 8-bit values as float32 (so the reference's 8-bit views of them are exact), and a
    feathered disc as the soft mask."""
    import numpy as np

    rng = np.random.default_rng(SEED + sorted(PIPELINE_CASES).index(name))
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backend.models.tiny import write_tiny_model

    for i, (name, case) in enumerate(PIPELINE_CASES.items()):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if case["model"] == name:
            write_tiny_model(folder / "model", case["variant"], seed=200 + i)
        _write_pipeline_case(out, name, case)
        print("wrote", folder)


def _write_pipeline_case(out: Path, name: str, case: dict[str, Any]) -> None:
    import diffusers
    import torch
    from safetensors.torch import save_file

    from backend.engine import Engine, RunPlan
    from backend.pipelines.params import RestoreParams

    folder = out / name
    image, mask = _pipeline_inputs(name, case["task"], case.get("mask", False))
    colorize = case["task"] == "colorize"
    params = RestoreParams(
        task=case["task"],
        scale=1.0 if colorize else 2.0,
        prompt="a house" if colorize else "old photo",
        steps=PIPELINE_STEPS,
        guidance=7.5,
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
    import diffusers
    import huggingface_hub
    import torch
    import transformers

    _torchvision_stand_in()
    import diffusers.models.unets.unet_2d_blocks as blocks

    sys.modules["diffusers.models.transformers.unet_2d_blocks"] = blocks
    sys.path.insert(0, str(pasd_repo))
    versions = {
        "repository": "github.com/yangxy/PASD",
        "commit": _commit(pasd_repo, commit),
        "pipeline": "pasd/pipelines/pipeline_pasd.py StableDiffusionControlNetPipeline",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "torchvision": "stand-in" if sys.modules["torchvision"].__spec__.origin is None else "installed",
    }
    for name, case in PIPELINE_CASES.items():
        stages, timesteps = _record_pipeline_case(out / name, case)
        print("recorded", name, sorted(stages))
        meta = json.loads((out / name / "metadata.json").read_text())
        meta["reference"] = {
            **versions,
            "timesteps": timesteps,
            "stages": sorted(stages),
            "u8": "color_fixed_u8 / final_u8 are the reference's own 8-bit images (the pipeline's PIL "
            "output, the colour fix with its to_pil_image truncation, cv2's YUV transfer); color_fixed / "
            "final are the float colour fix before that conversion",
        }
        (out / name / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def _spy(obj: Any, attr: str, seen: Any) -> Any:
    """Replace ``obj.attr`` by a call that hands its result to ``seen``; returns the original."""
    original = getattr(obj, attr)

    def spied(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen(result)
        return result

    setattr(obj, attr, spied)
    return original


def _record_pipeline_case(folder: Path, case: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    from argparse import Namespace

    import accelerate.utils
    import cv2
    import numpy as np
    import pasd.pipelines.pipeline_pasd as pipeline_module
    import PIL.Image
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from pasd.myutils.wavelet_color_fix import wavelet_color_fix, wavelet_reconstruction
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

    postprocess = pipe.image_processor.postprocess

    def postprocess_kept(image: torch.Tensor, output_type: str = "pil", do_denormalize: Any = None) -> Any:
        keep("decoded", postprocess(image, output_type="pt", do_denormalize=do_denormalize))
        return postprocess(image, output_type=output_type, do_denormalize=do_denormalize)

    pipe.image_processor.postprocess = postprocess_kept

    conditioning_scale = meta["conditioning_scale"]
    if conditioning_scale is None:
        scale_map = inputs["scale_map"]
        controlnet_forward = controlnet.forward

        def forward_with_map(*args: Any, **kwargs: Any) -> Any:
            assert kwargs.get("return_dict") is False
            rgbs, down, mid = controlnet_forward(*args, **kwargs)
            down = [d * F.adaptive_avg_pool2d(scale_map, d.shape[-2:]) for d in down]
            mid = mid * F.adaptive_avg_pool2d(scale_map, mid.shape[-2:])
            return rgbs, down, mid

        controlnet.forward = forward_with_map
        conditioning_scale = 1.0

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

    height, width = meta["plan"]["output_size"]
    if case["task"] == "upscale":
        fixed_float = wavelet_reconstruction(stages["decoded"], cond).clamp_(0.0, 1.0)
        stages["color_fixed"] = fixed_float
        stages["final"] = fixed_float.clone()
        u8 = (cond[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        fixed = wavelet_color_fix(image, PIL.Image.fromarray(u8))  # test_pasd.py's image is 8-bit
        assert fixed.size == (width, height)  # so test_pasd.py's resize to ori×rscale is the identity
        stages["color_fixed_u8"] = torch.from_numpy(np.asarray(fixed).copy())
        stages["final_u8"] = torch.from_numpy(np.asarray(fixed.resize((width, height))).copy())
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
    return stages, [int(t) for t in scheduler.timesteps]


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
    args = parser.parse_args()
    if args.command == "write-weights":
        write_weights(args.out)
    elif args.command == "record":
        record(args.out, args.pasd_repo, args.basicsr_src)
    elif args.command == "write-pipeline-weights":
        write_pipeline_weights(args.out)
    elif args.command == "record-sdxl":
        record_sdxl(args.out, args.pasd_repo)
    else:
        record_pipeline(args.out, args.pasd_repo, args.pasd_commit)


if __name__ == "__main__":
    main()
