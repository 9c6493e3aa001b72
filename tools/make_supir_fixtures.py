"""Record the official SUPIR code's outputs on tiny random weights as test fixtures (run by a developer).

Our SUPIR (``backend/models/supir/``, ``backend/pipelines/supir.py``) is a re-implementation on
diffusers blocks; its parity tests compare it with the official code of github.com/Fanghua-Yu/SUPIR
(the ``sgm`` and ``SUPIR`` packages of a checkout, used unmodified). That code needs its own
environment, so its outputs are recorded once, here, and committed under ``tests/fixtures/supir/``.
No weight file is committed: the weights are a pure function of the key and shape inventory and a
seed (``backend/models/supir/random_weights.py``), which both sides compute.

1. In the project's environment, write the two tiny tokenizers (``tokenizer/``, and ``tokenizer_2/``
   padding with ``!``, from ``backend.models.tiny.write_tokenizer``)::

       .venv/bin/python tools/make_supir_fixtures.py write-tokenizers tests/fixtures/supir

2. Build the reference environment (a CPU torch; every other package pinned or ``--no-deps`` so
   that pip never replaces torch; ``torchvision`` stays uninstalled, see below)::

       python3 -m venv /tmp/supirvenv
       /tmp/supirvenv/bin/pip install torch==2.13.0
       /tmp/supirvenv/bin/pip install transformers==4.44.2 diffusers==0.29.2 huggingface_hub==0.25.2 \\
           tokenizers==0.19.1 omegaconf==2.4.0 einops==0.8.2 scipy==1.17.1 safetensors==0.8.0 \\
           numpy==2.4.6 Pillow fsspec tqdm requests packaging ftfy regex
       /tmp/supirvenv/bin/pip install --no-deps open-clip-torch==2.24.0 pytorch_lightning==2.6.6 \\
           lightning_utilities==0.15.3 torchmetrics==1.9.0

   (open-clip-torch must stay below 2.26, whose batch-first attention breaks sgm's text forward;
   ``--no-deps`` keeps open_clip's torchvision/timm and lightning's torch requirements out.)

3. With a checkout of Fanghua-Yu/SUPIR (``--supir-commit`` names the commit of a checkout without
   ``.git``), record::

       /tmp/supirvenv/bin/python tools/make_supir_fixtures.py record tests/fixtures/supir \\
           --supir-repo ~/src/SUPIR [--supir-commit SHA]

What ``record`` writes (float32 on the CPU, token ids / timesteps / indices int64; seeded inputs
are saved beside the outputs; about 8 s on two cores):

- ``tiny_config.json``: the tiny widths both implementations build (UNet and control model, the
  ``project_modules`` channel lists, VAE, both text encoders, size embedders), and the whole official
  model config the harness instantiated.
- ``inventory_tiny.json`` / ``inventory_full.json``: ``{"seed", "files": {"supir": {key: shape},
  "sdxl": {key: shape}}, "buffers": [key]}``. ``supir`` holds what the official ``SUPIR-v0Q.ckpt``
  holds (``model.control_model.``, ``model.diffusion_model.project_modules.``,
  ``first_stage_model.denoise_encoder.``); ``sdxl`` holds every other key (what the SDXL checkpoint
  holds), including the buffers, which are also listed under ``buffers``. The full inventory is the
  real ``options/SUPIR_v0.yaml`` built on the meta device (nothing downloaded, no seed).
- ``buffers.safetensors``: the non-parameter entries of the tiny state dict (``denoiser.sigmas``),
  the model's own values. Every parameter is ``random_state({key: shape for every non-buffer key of
  both files}, seed)``; the harness loads parameters plus buffers with ``strict=True``.
- ``modules.safetensors`` and ``modules.json`` (metadata, scalars, a description of every entry),
  following the ladder of the research brief (§4.5):

  - ``zerosft.{0,8,10,11}.*``: ``c`` (control feature), ``h`` (decoder state), ``s`` (skip; none for
    11), ``out.lam0`` / ``out.lam0.5`` / ``out.lam1`` / ``out.spatial`` with ``lam_spatial``
    (B,1,h,w); ``zerocrossattn.{3,7}.*``: ``c`` (control feature = context), ``x``, the same outputs.
  - ``glv.*``: inputs ``x`` (LQ latent), ``xt``, ``timesteps``, ``context``, ``y``; ``hint`` (the
    hint conv on ``x``) and ``out.0`` … ``out.9``.
  - ``unet.eps.lam1`` / ``unet.eps.lam0.5``: LightGLVUNet on ``glv.xt``, ``glv.timesteps``,
    ``glv.context``, ``glv.y`` with ``glv.out.*`` as the control list.
  - ``denoiser.*``: ``x``, ``sigma`` (σ̂ between training sigmas), ``idx`` / ``sigma_q`` (quantised),
    the doubled conditioning ``crossattn`` / ``vector`` / ``control`` (cat([uc, c]), as the sampler
    builds it), ``out`` = D(x, σ̂).
  - ``cond.*``: ``tokens_l`` / ``tokens_g`` (both tokenizers' ids), ``c.crossattn``, ``c.vector``,
    ``uc.crossattn``, ``uc.vector`` for the prompts of ``modules.json``.
  - ``vae.*``: ``x``, ``z_denoise`` (denoise encoder, mode, scaled), ``decoded`` (decode of
    ``z_denoise``), ``mean`` / ``std`` / ``noise`` / ``z_sample`` (regular encoder, sampled, scaled).
  - ``step.*``: one ``RestoreEDMSampler.sampler_step``: ``x``, ``sigma``, ``next_sigma``, ``eps``,
    ``x_center``, ``control`` (c's and uc's), ``c.*`` / ``uc.*``, ``out``; knobs in ``modules.json``.
  - ``sample.*`` (``batchify_sample``, Wavelet colour fix) and ``tiled.*`` (the same with
    ``TiledRestoreEDMSampler``): ``x``, ``z_lq``, ``x_st1``, ``z_st1``, ``c.*`` / ``uc.*``,
    ``draw.{i}`` (every ``torch.randn`` / ``randn_like`` result in order), ``x_T``, ``sigmas``,
    ``step.{i}`` (the sampler's state after step i; ``tiled.step.{i}.tile.{j}`` per tile),
    ``z0``, ``decoded``, ``color_fixed``; ``tiled.tile_weights`` (float64 in the sampler, stored
    as float32). ``modules.json`` has the knobs, the draw order and the tile coordinates.
  - ``colorfix.*``: ``content``, ``style``, ``wavelet``, ``adain``.

Shims, all on the harness side (the checkout's files are never edited):

- Stubs for imports the exercised code never calls: ``k_diffusion.sampling`` (only the DPM++
  samplers use it; the package drags wandb, clean-fid, …), ``kornia`` (imported, unused), and a
  ``torchvision`` stand-in (:func:`_torchvision_stand_in`: the registry's torchvision does not load
  next to a CPU torch; open_clip imports its transforms, lpips its models, ``colorfix.py``
  ``ToTensor``/``ToPILImage``, none of which run here).
- ``LightGLVUNet`` hard-codes SDXL's channel lists, so ``TinyLightGLVUNet`` (a subclass) rebuilds
  ``project_modules`` with ``c = model_channels`` in place of 320 exactly as the official
  ``XL-base`` branch does; its forward is inherited unchanged.
- CUDA defaults switched off through the config (``device: cpu`` for the sampler and both text
  embedders, ``ae_dtype``/``diffusion_dtype: fp32``, VAE ``attn_type: vanilla``, attention
  ``softmax``) and ``gaussian_weights`` (tiled sampler) run with ``torch.tensor`` kept on the CPU.
- Text encoders: ``FrozenCLIPEmbedder`` reads a temporary folder (the tiny ``tokenizer`` plus a
  tiny ``CLIPTextModel``) through the module global ``SDXL_CLIP1_PATH``;
  ``FrozenOpenCLIPEmbedder2`` builds a tiny open_clip config registered with
  ``open_clip.add_model_config``, unpretrained (``version: null``, ``SDXL_CLIP2_CKPT_PTH = None``),
  through ``open_clip.create_model`` (the transforms ``create_model_and_transforms`` also builds are
  discarded by the embedder and need torchvision). ``open_clip.tokenize`` is replaced by the
  ``tokenizer_2`` folder (HF ``CLIPTokenizer``, max_length 77, padding to max_length, truncation):
  semantically what ``open_clip.tokenize`` does with the real vocabulary (start token, text, end
  token, padded with id 0, which is ``!``).
- The full-width inventory builds ``CLIPTextModel`` from CLIP-L's config and the open_clip model on
  the meta device instead of loading them, and computes the DDPM schedule (numpy) on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 1234
HARNESS_MODULE = "supir_fixture_harness"  # where the config's target finds TinyLightGLVUNet
SUPIR_PREFIXES = (
    "model.control_model.",
    "model.diffusion_model.project_modules.",
    "first_stage_model.denoise_encoder.",
)

# The tiny widths (tiny_config.json). UNet and control model share them, as in SUPIR_v0.yaml.
TINY_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": 2,
    "attention_resolutions": [4, 2],
    "transformer_depth": [1, 1, 2],
    "num_head_channels": 32,
    "context_dim": 64,  # CLIP-L hidden 32 + OpenCLIP width 32
    "adm_in_channels": 128,  # OpenCLIP embed_dim 32 + 3 size embedders x 2 x 16
    "use_linear_in_transformer": True,
    "use_checkpoint": False,
    "spatial_transformer_attn_type": "softmax",
}
TINY_VAE: dict[str, Any] = {
    "ch": 32,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "z_channels": 4,
    "double_z": True,
    "attn_type": "vanilla",
}
SIZE_OUTDIM = 16
CLIP_L_LAYER_IDX = 1  # hidden_states[1] of 2 layers = the penultimate, as layer_idx 11 of 12
TINY_CLIP_L: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}
# openai/clip-vit-large-patch14's text config (for the full-width inventory)
FULL_CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
TINY_OPEN_CLIP_NAME = "SUPIR-tiny-bigG"
TINY_OPEN_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    # open_clip builds a vision tower with every CLIP; the embedder deletes it
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": None, "width": 32, "heads": 2, "layers": 2},
}

# module-fixture sizes: batch 2, a non-square latent (levels 8x12, 4x6, 2x3)
BATCH = 2
LATENT = (8, 12)
PROMPTS = ["a photo of an old man", "a dog in the street, colorful sky"]  # "an", "in" are not in the vocab
A_PROMPT = ", clean, high resolution, 8k, detailed, sharp."
N_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over smoothed"
# batchify_sample runs: test.py's knobs (s_churn 5, s_noise 1.01, linear CFG 1 -> 4, Wavelet) with
# restoration guidance on (tau 4) and a linear control scale whose start differs from its end
SAMPLE_KNOBS: dict[str, Any] = {
    "num_steps": 5,
    "restoration_scale": 4.0,
    "s_churn": 5,
    "s_noise": 1.01,
    "cfg_scale": 4.0,
    "use_linear_CFG": True,
    "cfg_scale_start": 1.0,
    "control_scale": 0.9,
    "use_linear_control_scale": True,
    "control_scale_start": 0.3,
    "color_fix_type": "Wavelet",
    "seed": 1234,
}
SAMPLE_IMAGE = (64, 96)
# the tiled run: latent 12x14, tiles of 8 with stride 6 -> rows [0, 4] (last snapped), cols [0, 6]
TILED_KNOBS: dict[str, Any] = {**SAMPLE_KNOBS, "num_steps": 4, "s_churn": 0.8, "seed": 4321}
TILED_IMAGE = (96, 112)
TILE = {"tile_size": 8, "tile_stride": 6}


# --------------------------------------------------------------------------- our environment
def write_tokenizers(out: Path) -> None:
    """The two tiny CLIP tokenizers (same vocabulary; ``tokenizer_2`` pads with ``!`` like SDXL's)."""
    sys.path.insert(0, str(REPO_ROOT))
    from backend.models.tiny import write_tokenizer

    size = write_tokenizer(out / "tokenizer")
    size_2 = write_tokenizer(out / "tokenizer_2", pad_token="!")
    print("wrote", out / "tokenizer", size, out / "tokenizer_2", size_2)


# --------------------------------------------------------------------------- shims
def _stub(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__path__ = []  # a package, so submodules can be registered under it
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, mod)
    return mod


def _unavailable(name: str) -> type:
    """A class standing in for ``name``: importable, but building one says it is not here."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{name} is a stand-in in the SUPIR fixture harness and cannot be used")

    return _Unavailable(name.rpartition(".")[2], (), {"__init__": refuse, "__call__": refuse})


class _Unavailable(type):
    """Class attributes of a stand-in (``InterpolationMode.BICUBIC``, used as a default) are names."""

    def __getattr__(cls, attr: str) -> str:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return f"{cls.__name__}.{attr}"


def _torchvision_stand_in() -> None:
    """Importable stand-ins for the torchvision names that open_clip, lpips and ``colorfix.py`` import.

    None of them runs in the recorded code: open_clip's image transforms are skipped (see
    :func:`_install_shims`), lpips is never built, and ``colorfix.py`` uses ``ToTensor`` /
    ``ToPILImage`` only in its PIL wrappers, not in ``wavelet_reconstruction`` /
    ``adaptive_instance_normalization``. The registry's torchvision wheels do not load next to a
    CPU-only torch, so a real one is refused rather than half-used.
    """
    if importlib.util.find_spec("torchvision") is not None:
        raise SystemExit("uninstall torchvision from this environment: the harness uses its stand-in")

    def names(module: str) -> Callable[[str], Any]:
        def getattr_(attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _unavailable(f"{module}.{attr}")

        return getattr_

    for name in (
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.ops",
        "torchvision.ops.misc",
        "torchvision.models",
        "torchvision.utils",
    ):
        _stub(name, __getattr__=names(name))


def _install_shims(supir_repo: Path, tokenizer_2: Path) -> None:
    """Stubs, the checkout on ``sys.path``, TinyLightGLVUNet, open_clip and gaussian_weights shims."""
    import torch

    _stub("k_diffusion")
    _stub(
        "k_diffusion.sampling",
        get_sigmas_karras=_unavailable("k_diffusion.sampling.get_sigmas_karras"),
        BrownianTreeNoiseSampler=_unavailable("k_diffusion.sampling.BrownianTreeNoiseSampler"),
    )
    _stub("kornia")
    _torchvision_stand_in()
    sys.path.insert(0, str(supir_repo))

    import open_clip
    import sgm.modules.diffusionmodules.sampling as sampling
    import sgm.modules.encoders.modules as encoders

    def create_model_and_transforms(
        name: str, device: Any = "cpu", pretrained: Any = None, **kw: Any
    ) -> tuple[Any, None, None]:
        # the embedder keeps only the model; it is built on the default device (meta for the
        # full-width inventory) and is unpretrained here
        assert pretrained is None, pretrained
        model = open_clip.create_model(name, device=torch.get_default_device(), **kw)
        return model, None, None

    open_clip.create_model_and_transforms = create_model_and_transforms
    open_clip.tokenize = _tokenize_with(tokenizer_2)
    encoders.SDXL_CLIP2_CKPT_PTH = None

    original = sampling.gaussian_weights

    class _CpuTorch:
        """``torch`` for ``gaussian_weights``: its ``torch.tensor(..., device='cuda')`` stays on the CPU."""

        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

        @staticmethod
        def tensor(data: Any, device: Any = None, **kw: Any) -> Any:
            return torch.tensor(data, **kw)

    sampling.gaussian_weights = types.FunctionType(
        original.__code__,
        {**original.__globals__, "torch": _CpuTorch()},
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )
    _register_tiny_unet()


def _tokenize_with(folder: Path) -> Callable[..., Any]:
    """``open_clip.tokenize`` on the tiny vocabulary: sot, text, eot, padded with id 0 (``!``)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0

    def tokenize(texts: str | list[str], context_length: int = 77) -> Any:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return tokenizer(
            texts, padding="max_length", max_length=context_length, truncation=True, return_tensors="pt"
        ).input_ids

    return tokenize


def _register_tiny_unet() -> None:
    """``TinyLightGLVUNet``: the official ``XL-base`` channel lists with c = model_channels (not 320)."""
    import torch.nn as nn
    from sgm.modules.diffusionmodules.openaimodel import UNetModel
    from SUPIR.modules.SUPIR_v0 import LightGLVUNet, ZeroCrossAttn, ZeroSFT

    class TinyLightGLVUNet(LightGLVUNet):
        """LightGLVUNet with its hard-coded lists scaled to ``model_channels``; forward inherited."""

        def __init__(
            self, mode: str = "", project_type: str = "ZeroSFT", project_channel_scale: float = 1, **kwargs
        ) -> None:
            UNetModel.__init__(self, **kwargs)
            assert mode == "XL-base" and project_type == "ZeroSFT", (mode, project_type)
            c = self.model_channels
            cond_output_channels = [c] * 4 + [2 * c] * 3 + [4 * c] * 3
            project_channels = [c // 2] * 4 + [c] * 3 + [2 * c] * 3
            concat_channels = [c] * 2 + [2 * c] * 3 + [4 * c] * 4 + [0]
            self.progressive_mask_nums = [0, 3, 7, 11]
            project_channels = [int(p * project_channel_scale) for p in project_channels]
            self.project_modules = nn.ModuleList(
                ZeroSFT(project_channels[i], cond_output_channels[i], concat_channels=concat_channels[i])
                for i in range(len(cond_output_channels))
            )
            for i in (6, 3):
                self.project_modules.insert(i, ZeroCrossAttn(cond_output_channels[i], concat_channels[i]))

    module = types.ModuleType(HARNESS_MODULE)
    module.TinyLightGLVUNet = TinyLightGLVUNet
    sys.modules[HARNESS_MODULE] = module


# --------------------------------------------------------------------------- model configs
def _model_config(supir_repo: Path, tiny: bool) -> Any:
    """``options/SUPIR_v0.yaml``'s model config with the CUDA defaults off; tiny widths if ``tiny``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(supir_repo / "options" / "SUPIR_v0.yaml").model
    p = cfg.params
    p.ae_dtype = "fp32"
    p.diffusion_dtype = "fp32"
    p.sampler_config.params.device = "cpu"
    emb = p.conditioner_config.params.emb_models
    emb[0].params.device = "cpu"
    emb[1].params.device = "cpu"
    emb[1].params.version = None  # unpretrained: nothing to download
    if tiny:
        for key in ("network_config", "control_stage_config"):
            for name, value in TINY_UNET.items():
                p[key].params[name] = value
        p.network_config.target = f"{HARNESS_MODULE}.TinyLightGLVUNet"
        for name, value in TINY_VAE.items():
            p.first_stage_config.params.ddconfig[name] = value
        emb[0].params.layer_idx = CLIP_L_LAYER_IDX
        emb[1].params.arch = TINY_OPEN_CLIP_NAME
        for e in emb[2:]:
            e.params.outdim = SIZE_OUTDIM
    return cfg


def _tiny_text_setup(work: Path, tokenizers: Path) -> int:
    """The tiny CLIP-L folder (``SDXL_CLIP1_PATH``) and open_clip config; returns the vocab size."""
    import shutil

    import open_clip
    import sgm.modules.encoders.modules as encoders
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizers / "tokenizer"))
    vocab = len(tokenizer)
    clip_dir = work / "clip_l"
    shutil.copytree(tokenizers / "tokenizer", clip_dir)
    config = CLIPTextConfig(
        **TINY_CLIP_L,
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModel(config).save_pretrained(str(clip_dir))
    encoders.SDXL_CLIP1_PATH = str(clip_dir)
    cfg = copy.deepcopy(TINY_OPEN_CLIP)
    cfg["text_cfg"]["vocab_size"] = vocab
    config_dir = work / "open_clip"
    config_dir.mkdir()
    (config_dir / f"{TINY_OPEN_CLIP_NAME}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(config_dir)
    return vocab


def _load_random_weights() -> types.ModuleType:
    path = REPO_ROOT / "backend" / "models" / "supir" / "random_weights.py"
    spec = importlib.util.spec_from_file_location("supir_random_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inventory(model: Any, seed: int | None) -> dict[str, Any]:
    state = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    assert params <= set(state), sorted(params - set(state))[:5]
    files: dict[str, dict[str, list[int]]] = {"supir": {}, "sdxl": {}}
    for key, value in state.items():
        files["supir" if key.startswith(SUPIR_PREFIXES) else "sdxl"][key] = list(value.shape)
    return {"seed": seed, "files": files, "buffers": sorted(set(state) - params)}


def build_tiny_model(supir_repo: Path, work: Path, tokenizers: Path) -> tuple[Any, dict[str, Any], Any]:
    """The official SUPIRModel at tiny widths, every parameter refilled from ``random_state``."""
    import torch
    from sgm.util import instantiate_from_config

    vocab = _tiny_text_setup(work, tokenizers)
    cfg = _model_config(supir_repo, tiny=True)
    model = instantiate_from_config(cfg).eval()
    inventory = _inventory(model, SEED)
    state = model.state_dict()
    shapes = {
        k: v for f in inventory["files"].values() for k, v in f.items() if k not in inventory["buffers"]
    }
    weights = _load_random_weights().random_state(shapes, SEED)
    buffers = {k: state[k].detach().clone() for k in inventory["buffers"]}
    model.load_state_dict({**weights, **buffers}, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key] if key in weights else buffers[key]), key
    return model, {"inventory": inventory, "buffers": buffers, "vocab": vocab}, cfg


def full_inventory(supir_repo: Path, tokenizers: Path) -> dict[str, Any]:
    """Keys and shapes of the real SUPIR_v0.yaml model (full widths) built on the meta device."""
    import sgm.modules.diffusionmodules.discretizer as discretizer
    import sgm.modules.encoders.modules as encoders
    import torch
    from sgm.modules.diffusionmodules.util import make_beta_schedule
    from sgm.util import instantiate_from_config
    from transformers import CLIPTextConfig, CLIPTextModel

    class ConfigOnlyCLIPTextModel:
        @staticmethod
        def from_pretrained(path: str) -> Any:
            return CLIPTextModel(CLIPTextConfig(**FULL_CLIP_L))

    def on_cpu(*args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):  # the schedule goes through numpy
            return make_beta_schedule(*args, **kwargs)

    encoders.SDXL_CLIP1_PATH = str(tokenizers / "tokenizer")  # only its tokenizer is read
    saved = encoders.CLIPTextModel, discretizer.make_beta_schedule
    encoders.CLIPTextModel, discretizer.make_beta_schedule = ConfigOnlyCLIPTextModel, on_cpu
    try:
        cfg = _model_config(supir_repo, tiny=False)
        with torch.device("meta"):
            model = instantiate_from_config(cfg)
    finally:
        encoders.CLIPTextModel, discretizer.make_beta_schedule = saved
    return _inventory(model, None)


# --------------------------------------------------------------------------- recording
class Recorder:
    """Tensors for ``modules.safetensors`` and a description of each for ``modules.json``."""

    def __init__(self) -> None:
        self.tensors: dict[str, Any] = {}
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, name: str, value: Any, what: str) -> Any:
        import torch

        assert name not in self.tensors, name
        value = value.detach().to("cpu")
        value = value.float() if value.is_floating_point() else value.long()
        self.tensors[name] = value.contiguous().clone()
        self.entries[name] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        self.entries[name]["what"] = what
        if value.is_floating_point() and value.numel():
            self.entries[name]["max_abs"] = float(value.abs().max())
            assert torch.isfinite(value).all(), name
        return value


def _gen(stage: int) -> Any:
    import torch

    return torch.Generator().manual_seed(SEED + stage)


def record_modules(model: Any, rec: Recorder) -> dict[str, Any]:
    """Ladder steps 1–3: ZeroSFT, ZeroCrossAttn, GLVControl, LightGLVUNet on seeded inputs."""
    import torch
    from SUPIR.modules.SUPIR_v0 import ZeroCrossAttn, ZeroSFT

    unet = model.model.diffusion_model
    control = model.model.control_model
    h, w = LATENT
    # project_modules index -> resolution divisor (0-2 latent, 3-6 /2, 7-11 /4)
    divisor = {k: 1 if k < 3 else 2 if k < 7 else 4 for k in range(12)}
    g = _gen(1)
    lams = (0.0, 0.5, 1.0)
    for k in (0, 8, 10, 11):
        m = unet.project_modules[k]
        assert isinstance(m, ZeroSFT)
        size = (h // divisor[k], w // divisor[k])
        label, norm = m.zero_conv.in_channels, m.zero_conv.out_channels
        concat = m.param_free_norm.num_channels - norm
        c = rec.add(f"zerosft.{k}.c", torch.randn(BATCH, label, *size, generator=g), "control feature")
        lam = rec.add(f"zerosft.{k}.lam_spatial", torch.rand(BATCH, 1, *size, generator=g), "spatial λ")
        if concat:
            hh = rec.add(f"zerosft.{k}.h", torch.randn(BATCH, concat, *size, generator=g), "decoder state")
            s = rec.add(f"zerosft.{k}.s", torch.randn(BATCH, norm, *size, generator=g), "skip")
            args: tuple[Any, ...] = (c, s, hh)  # the UNet's call: (control, skip, decoder state)
            plain = torch.cat([hh, s], 1)
        else:
            hh = rec.add(f"zerosft.{k}.h", torch.randn(BATCH, norm, *size, generator=g), "mid-block output")
            args = (c, hh)
            plain = hh
        with torch.no_grad():
            for lam_value in lams:
                out = m(*args, control_scale=lam_value)
                rec.add(
                    f"zerosft.{k}.out.lam{lam_value:g}", out, f"ZeroSFT output, control_scale {lam_value}"
                )
            rec.add(f"zerosft.{k}.out.spatial", m(*args, control_scale=lam), "ZeroSFT, λ = lam_spatial")
            assert torch.equal(m(*args, control_scale=0.0), plain), f"zerosft {k}: λ=0 is not the concat"
            assert m.zero_conv(c).abs().max() > 0 and m.zero_mul(m.mlp_shared(c)).abs().max() > 0
    for k in (3, 7):
        m = unet.project_modules[k]
        assert isinstance(m, ZeroCrossAttn)
        size = (h // divisor[k], w // divisor[k])
        c = rec.add(
            f"zerocrossattn.{k}.c",
            torch.randn(BATCH, m.norm2.num_channels, *size, generator=g),
            "control feature (the attention's context)",
        )
        x = rec.add(f"zerocrossattn.{k}.x", torch.randn(BATCH, m.norm1.num_channels, *size, generator=g), "x")
        lam = rec.add(f"zerocrossattn.{k}.lam_spatial", torch.rand(BATCH, 1, *size, generator=g), "spatial λ")
        with torch.no_grad():
            for lam_value in lams:
                rec.add(
                    f"zerocrossattn.{k}.out.lam{lam_value:g}",
                    m(c, x, control_scale=lam_value),
                    f"ZeroCrossAttn output, control_scale {lam_value}",
                )
            rec.add(f"zerocrossattn.{k}.out.spatial", m(c, x, control_scale=lam), "λ = lam_spatial")
            assert torch.equal(m(c, x, control_scale=0.0), x)

    g = _gen(2)
    ctx_dim, adm = TINY_UNET["context_dim"], TINY_UNET["adm_in_channels"]
    x_lq = rec.add("glv.x", torch.randn(BATCH, 4, h, w, generator=g), "LQ latent (cond['control'])")
    xt = rec.add("glv.xt", torch.randn(BATCH, 4, h, w, generator=g), "x_noisy * c_in")
    t = rec.add("glv.timesteps", torch.tensor([999, 421]), "integer timesteps")
    context = rec.add("glv.context", torch.randn(BATCH, 77, ctx_dim, generator=g), "crossattn")
    y = rec.add("glv.y", torch.randn(BATCH, adm, generator=g), "vector")
    with torch.no_grad():
        hint = rec.add("glv.hint", control.input_hint_block[0](x_lq), "input_hint_block conv on x")
        assert hint.abs().max() > 0
        outs = control(x=x_lq, timesteps=t, xt=xt, context=context, y=y)
        assert len(outs) == 10
        for i, o in enumerate(outs):
            rec.add(f"glv.out.{i}", o, f"GLVControl output {i}")
        for lam_value in (1.0, 0.5):
            eps = unet(xt, timesteps=t, context=context, y=y, control=list(outs), control_scale=lam_value)
            rec.add(
                f"unet.eps.lam{lam_value:g}", eps, f"LightGLVUNet ε, control glv.out.*, scale {lam_value}"
            )
    return {"zerosft_call": "module(c, s, h): (control feature, skip, decoder state)"}


def record_conditioner(model: Any, rec: Recorder) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Ladder step 5: both tokenizers' ids and the conditioner's crossattn / vector for c and uc."""
    import open_clip
    import torch

    z = torch.zeros(len(PROMPTS), 4, *LATENT)
    with torch.no_grad():
        c, uc = model.prepare_condition(z, PROMPTS, A_PROMPT, N_PROMPT, len(PROMPTS))
    texts = ["".join([p, A_PROMPT]) for p in PROMPTS]
    tok_l = model.conditioner.embedders[0].tokenizer
    ids_l = tok_l(
        [*texts, N_PROMPT], truncation=True, max_length=77, padding="max_length", return_tensors="pt"
    )
    rec.add("cond.tokens_l", ids_l.input_ids, "CLIP-L token ids: prompts + a_prompt, then n_prompt")
    rec.add("cond.tokens_g", open_clip.tokenize([*texts, N_PROMPT]), "OpenCLIP token ids, same texts")
    for name, d in (("c", c), ("uc", uc)):
        rec.add(
            f"cond.{name}.crossattn", d["crossattn"], f"{name} crossattn [CLIP-L hidden, OpenCLIP penult]"
        )
        rec.add(
            f"cond.{name}.vector", d["vector"], f"{name} vector [pooled G, sizes 1024,1024 | 0,0 | 1024,1024]"
        )
    facts = {"texts": texts, "negative": N_PROMPT, "prompts": PROMPTS, "a_prompt": A_PROMPT}
    return c, uc, facts


def record_denoiser(model: Any, rec: Recorder, c: dict[str, Any], uc: dict[str, Any]) -> dict[str, Any]:
    """Ladder step 4: DiscreteDenoiserWithControl through ControlWrapper, cond batched cat([uc, c])."""
    import torch

    g = _gen(4)
    den = model.denoiser
    sigmas = den.sigmas
    # σ̂ strictly between two training sigmas, one per batch element (as churned sigmas are)
    i, j = 700, 200
    s = torch.stack([0.3 * sigmas[i] + 0.7 * sigmas[i + 1], 0.6 * sigmas[j] + 0.4 * sigmas[j + 1]])
    x = rec.add("denoiser.x", torch.randn(2, 4, *LATENT, generator=g) * 3, "noisy latent (batch [uc, c])")
    sigma = rec.add("denoiser.sigma", s, "σ̂, each between two training sigmas")
    idx = rec.add("denoiser.idx", den.sigma_to_idx(sigma), "quantised index argmin |σ̂ − Σ|")
    rec.add("denoiser.sigma_q", den.idx_to_sigma(idx), "quantised σ")
    control = torch.randn(1, 4, *LATENT, generator=g)  # the LQ latent of both halves
    cond = {
        "crossattn": torch.cat([uc["crossattn"][:1], c["crossattn"][:1]]),
        "vector": torch.cat([uc["vector"][:1], c["vector"][:1]]),
        "control": torch.cat([control, control]),
    }
    for k, v in cond.items():
        source = "a seeded LQ latent, twice" if k == "control" else "rows 0 of cond.uc / cond.c"
        rec.add(f"denoiser.{k}", v, f"doubled cond {k} = cat([uc, c]) ({source})")
    lam = 0.7
    with torch.no_grad():
        out = den(model.model, x, sigma, cond, lam)
    rec.add("denoiser.out", out, "D(x, σ̂) = x − σ_q·ε(x·c_in(σ_q), idx)")
    return {"denoiser.control_scale": lam, "denoiser.sigma_between": [[i, i + 1], [j, j + 1]]}


def record_vae(model: Any, rec: Recorder) -> dict[str, Any]:
    """Ladder step 6: denoise encoder (mode), decode, regular encoder with its sample's noise."""
    import torch
    from sgm.models.autoencoder import AutoencoderKL

    g = _gen(6)
    x = rec.add("vae.x", torch.rand(1, 3, 32, 48, generator=g) * 2 - 1, "image in [-1, 1]")
    with torch.no_grad():
        z = rec.add(
            "vae.z_denoise", model.encode_first_stage_with_denoise(x, use_sample=False), "0.13025·mode"
        )
        rec.add("vae.decoded", model.decode_first_stage(z), "decode_first_stage(vae.z_denoise)")
        post = AutoencoderKL.encode(model.first_stage_model, x)
        rec.add("vae.mean", post.mean, "regular encoder posterior mean (unscaled)")
        rec.add("vae.std", post.std, "posterior std (unscaled)")
        torch.manual_seed(SEED + 6)  # sample() draws from torch's global generator
        with _spy_draws() as draws:
            z_sample = model.encode_first_stage(x)
        assert len(draws) == 1
        noise = rec.add("vae.noise", draws[0][1], "the torch.randn(mean.shape) drawn by sample()")
        rec.add("vae.z_sample", z_sample, "encode_first_stage(x) = 0.13025·(mean + std·noise)")
        assert torch.allclose(z_sample, model.scale_factor * (post.mean + post.std * noise))
    return {"scale_factor": float(model.scale_factor)}


@contextmanager
def _spy_draws() -> Iterator[list[tuple[str, Any]]]:
    """Every ``torch.randn`` / ``randn_like`` result, cloned (the sampler scales x_T in place)."""
    import torch

    draws: list[tuple[str, Any]] = []
    originals = {"randn": torch.randn, "randn_like": torch.randn_like}

    def spy(name: str) -> Callable[..., Any]:
        def drawn(*args: Any, **kwargs: Any) -> Any:
            out = originals[name](*args, **kwargs)
            draws.append((name, out.detach().clone()))
            return out

        return drawn

    torch.randn, torch.randn_like = spy("randn"), spy("randn_like")
    try:
        yield draws
    finally:
        torch.randn, torch.randn_like = originals["randn"], originals["randn_like"]


def _sampler(model: Any, knobs: dict[str, Any], tiled: bool) -> Any:
    """The sampler ``batchify_sample`` builds for ``knobs`` (its own config edits, copied)."""
    from omegaconf import OmegaConf
    from sgm.util import instantiate_from_config

    cfg = copy.deepcopy(model.sampler_config)
    if tiled:
        cfg.target = "sgm.modules.diffusionmodules.sampling.TiledRestoreEDMSampler"
        cfg.params = OmegaConf.merge(cfg.params, TILE)
    cfg.params.num_steps = knobs["num_steps"]
    cfg.params.guider_config.params.scale_min = knobs["cfg_scale"]
    cfg.params.guider_config.params.scale = (
        knobs["cfg_scale_start"] if knobs["use_linear_CFG"] else knobs["cfg_scale"]
    )
    cfg.params.restore_cfg = knobs["restoration_scale"]
    cfg.params.s_churn = knobs["s_churn"]
    cfg.params.s_noise = knobs["s_noise"]
    return instantiate_from_config(cfg), cfg


def record_step(model: Any, rec: Recorder, c: dict[str, Any], uc: dict[str, Any]) -> dict[str, Any]:
    """Ladder step 7: one RestoreEDMSampler.sampler_step, churn, linear CFG and control scale, τ > 0."""
    import torch

    knobs = {**SAMPLE_KNOBS, "num_steps": 10}
    sampler, _cfg = _sampler(model, knobs, tiled=False)
    sigmas = sampler.discretization(knobs["num_steps"], device="cpu")
    k = 2
    gamma = 0.2
    g = _gen(7)
    control = rec.add("step.control", torch.randn(1, 4, *LATENT, generator=g), "LQ latent, cond['control']")
    cond = {"crossattn": c["crossattn"][:1], "vector": c["vector"][:1], "control": control}
    ucond = {"crossattn": uc["crossattn"][:1], "vector": uc["vector"][:1], "control": control}
    for name, d in (("c", cond), ("uc", ucond)):
        for key in ("crossattn", "vector"):
            rec.add(f"step.{name}.{key}", d[key], f"{name} {key}")
    x = rec.add("step.x", torch.randn(1, 4, *LATENT, generator=g) * float(sigmas[k]), "x before the step")
    eps = rec.add(
        "step.eps", torch.randn(1, 4, *LATENT, generator=g), "eps_noise (churn noise before s_noise)"
    )
    x_center = rec.add("step.x_center", torch.randn(1, 4, *LATENT, generator=g), "x_center (z_st1)")
    s_in = x.new_ones([1])
    sigma = rec.add("step.sigma", s_in * sigmas[k], f"σ_k (sigmas[{k}] of {knobs['num_steps']} steps)")
    next_sigma = rec.add("step.next_sigma", s_in * sigmas[k + 1], "σ_{k+1}")
    with torch.no_grad():
        out = sampler.sampler_step(
            sigma,
            next_sigma,
            _denoiser(model),
            x.clone(),
            cond,
            ucond,
            gamma=gamma,
            x_center=x_center,
            eps_noise=eps,
            control_scale=knobs["control_scale"],
            use_linear_control_scale=True,
            control_scale_start=knobs["control_scale_start"],
        )
    rec.add("step.out", out, "x after the step")
    return {
        "step": {
            "gamma": gamma,
            "s_noise": knobs["s_noise"],
            "restore_cfg": knobs["restoration_scale"],
            "restore_cfg_s_tmin": sampler.restore_cfg_s_tmin,
            "sigma_max": sampler.sigma_max,
            "cfg": "LinearCFG(scale=cfg_scale_start, scale_min=cfg_scale): "
            "w = (scale − scale_min)·σ̂/14.6146 + scale_min",
            "cfg_scale": knobs["cfg_scale"],
            "cfg_scale_start": knobs["cfg_scale_start"],
            "control_scale": knobs["control_scale"],
            "control_scale_start": knobs["control_scale_start"],
            "use_linear_control_scale": True,
        }
    }


def _denoiser(model: Any) -> Callable[..., Any]:
    """What ``batchify_sample`` hands the sampler."""
    return lambda input, sigma, c, control_scale: model.denoiser(model.model, input, sigma, c, control_scale)


def record_sample(
    model: Any, rec: Recorder, prefix: str, knobs: dict[str, Any], size: tuple[int, int]
) -> dict:
    """Ladder step 8: a whole ``batchify_sample`` run, every stage and every random draw in order."""
    import torch
    from sgm.modules.diffusionmodules.sampling import RestoreEDMSampler

    tiled = prefix == "tiled"
    sampler, cfg = _sampler(model, knobs, tiled)
    saved_cfg, model.sampler_config = model.sampler_config, cfg
    g = _gen(8 if not tiled else 9)
    x = rec.add(f"{prefix}.x", torch.rand(1, 3, *size, generator=g) * 2 - 1, "LQ image in [-1, 1]")
    seen: dict[str, Any] = {}
    steps: list[Any] = []

    def spy_method(name: str, keep: Callable[[Any, tuple[Any, ...]], None]) -> None:
        original = getattr(model, name)

        def spied(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            keep(out, args)
            return out

        setattr(model, name, spied)

    spy_method("encode_first_stage_with_denoise", lambda out, a: seen.setdefault("z_lq", out.clone()))
    spy_method("encode_first_stage", lambda out, a: seen.setdefault("z_st1", out.clone()))
    decoded: list[tuple[Any, Any]] = []
    spy_method("decode_first_stage", lambda out, a: decoded.append((a[0].clone(), out.clone())))
    spy_method(
        "prepare_condition",
        lambda out, a: seen.setdefault("cond", [{k: v.clone() for k, v in d.items()} for d in out]),
    )
    original_step = RestoreEDMSampler.sampler_step

    def step_spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original_step(self, *args, **kwargs)
        steps.append(out.clone())
        return out

    RestoreEDMSampler.sampler_step = step_spy
    try:
        with _spy_draws() as draws, torch.no_grad():
            out = model.batchify_sample(x, [PROMPTS[0]], p_p=A_PROMPT, n_p=N_PROMPT, **knobs)
            state_after = torch.get_rng_state()
    finally:
        RestoreEDMSampler.sampler_step = original_step
        model.sampler_config = saved_cfg
        for name in ("encode_first_stage_with_denoise", "encode_first_stage", "decode_first_stage"):
            model.__dict__.pop(name, None)
        model.__dict__.pop("prepare_condition", None)
    # every draw from torch's global generator is one of those recorded: replaying them leaves it
    # in the same state
    torch.manual_seed(knobs["seed"])
    for _name, d in draws:
        torch.randn(d.shape)
    complete = torch.equal(torch.get_rng_state(), state_after)
    assert complete, "the run drew random numbers the spy did not see"
    assert len(decoded) == 2
    rec.add(f"{prefix}.z_lq", seen["z_lq"], "denoise encoder mode ·0.13025 (the control latent)")
    rec.add(f"{prefix}.x_st1", decoded[0][1], "decode of z_lq (stage 1)")
    rec.add(f"{prefix}.z_st1", seen["z_st1"], "regular encoder sample of x_st1 ·0.13025 (x_center)")
    c, uc = seen["cond"]
    for name, d in (("c", c), ("uc", uc)):
        for key in ("crossattn", "vector"):
            rec.add(f"{prefix}.{name}.{key}", d[key], f"{name} {key}")
        assert torch.equal(d["control"], seen["z_lq"])
    for i, (name, d) in enumerate(draws):
        rec.add(f"{prefix}.draw.{i}", d, f"draw {i}: torch.{name}")
    rec.add(f"{prefix}.x_T", draws[1][1], "= draw.1, before the sampler scales it by sqrt(1+σ0²)")
    sigmas = sampler.discretization(knobs["num_steps"], device="cpu")
    rec.add(f"{prefix}.sigmas", sigmas, "the sampler's sigmas (σ_N = 0 appended)")
    if tiled:
        from sgm.modules.diffusionmodules.sampling import _sliding_windows

        tiles = _sliding_windows(*seen["z_lq"].shape[2:], TILE["tile_size"], TILE["tile_stride"])
        assert len(steps) == knobs["num_steps"] * len(tiles)
        for i, s in enumerate(steps):
            rec.add(
                f"{prefix}.step.{i // len(tiles)}.tile.{i % len(tiles)}", s, "sampler_step output of a tile"
            )
        rec.add(f"{prefix}.tile_weights", sampler.tile_weights, "gaussian_weights(tile, tile, 1), float64")
    else:
        tiles = []
        assert len(steps) == knobs["num_steps"]
        for i, s in enumerate(steps):
            rec.add(f"{prefix}.step.{i}", s, f"x after step {i}")
    rec.add(f"{prefix}.z0", decoded[1][0], "the sampled latent")
    rec.add(f"{prefix}.decoded", decoded[1][1], "decode of z0, before the colour fix")
    rec.add(f"{prefix}.color_fixed", out, "wavelet_reconstruction(decoded, x_st1): batchify_sample's result")
    gamma = min(knobs["s_churn"] / knobs["num_steps"], 2**0.5 - 1)
    return {
        prefix: {
            "knobs": knobs,
            "prompt": PROMPTS[0],
            "a_prompt": A_PROMPT,
            "n_prompt": N_PROMPT,
            "gamma": gamma,
            "draws": [f"torch.{name}{list(d.shape)}" for name, d in draws],
            "draw_order": "draw.0 = z_st1's sample noise (torch.randn on the CPU generator), draw.1 = x_T "
            "(randn_like(z_lq)), then one randn_like(x) per step"
            + (" (always, full frame, cut per tile)" if tiled else " (when γ > 0)"),
            "rng_draws_complete": complete,
            "tiles": [list(t) for t in tiles],
            "tile": TILE if tiled else None,
        }
    }


def record_colorfix(rec: Recorder) -> None:
    """Ladder step 9: the two colour fixes of ``SUPIR/utils/colorfix.py``."""
    import torch
    from SUPIR.utils.colorfix import adaptive_instance_normalization, wavelet_reconstruction

    g = _gen(10)
    content = rec.add("colorfix.content", torch.rand(1, 3, 40, 56, generator=g) * 2 - 1, "image to fix")
    style = rec.add("colorfix.style", torch.rand(1, 3, 40, 56, generator=g) * 1.5 - 0.5, "reference")
    rec.add(
        "colorfix.wavelet", wavelet_reconstruction(content, style), "wavelet_reconstruction(content, style)"
    )
    rec.add(
        "colorfix.adain", adaptive_instance_normalization(content, style), "adaptive_instance_normalization"
    )


def _commit(repo: Path, given: str | None) -> str:
    if given:
        return given
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def record(out: Path, supir_repo: Path, commit: str | None) -> None:
    """Build the tiny official model, record every fixture and both inventories into ``out``."""
    import warnings

    import torch
    from safetensors.torch import save_file

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    torch.set_grad_enabled(False)
    supir_repo = supir_repo.resolve()
    _install_shims(supir_repo, out / "tokenizer_2")
    with tempfile.TemporaryDirectory() as tmp:
        model, built, cfg = build_tiny_model(supir_repo, Path(tmp), out)
    inventory = built["inventory"]
    (out / "inventory_tiny.json").write_text(json.dumps(inventory, indent=0, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in built["buffers"].items()}, str(out / "buffers.safetensors"))
    full = full_inventory(supir_repo, out)
    (out / "inventory_full.json").write_text(json.dumps(full, indent=0, sort_keys=True) + "\n")
    _write_tiny_config(out, model, cfg, built["vocab"])

    rec = Recorder()
    facts: dict[str, Any] = {}
    facts.update(record_modules(model, rec))
    c, uc, cond_facts = record_conditioner(model, rec)
    facts["cond"] = cond_facts
    facts.update(record_denoiser(model, rec, c, uc))
    facts.update(record_vae(model, rec))
    facts.update(record_step(model, rec, c, uc))
    facts.update(record_sample(model, rec, "sample", SAMPLE_KNOBS, SAMPLE_IMAGE))
    facts.update(record_sample(model, rec, "tiled", TILED_KNOBS, TILED_IMAGE))
    record_colorfix(rec)
    save_file(rec.tensors, str(out / "modules.safetensors"))
    meta = {
        "supir": {"repository": "github.com/Fanghua-Yu/SUPIR", "commit": _commit(supir_repo, commit)},
        "versions": _versions(),
        "seed": SEED,
        "input_seeds": "stage n draws its inputs from torch.Generator().manual_seed(seed + n)",
        "weights": "random_state({non-buffer key: shape of inventory_tiny.json}, seed) + buffers.safetensors",
        "sampler_batching": "c and uc are concatenated as cat([uc, c]) for x, σ̂ and every cond key",
        "facts": facts,
        "entries": rec.entries,
    }
    (out / "modules.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for name, e in rec.entries.items():
        print(f"{name:40s} {e['dtype']:8s} {e['shape']!s:22s} {e.get('max_abs', '')}")
    print("buffers", inventory["buffers"], "sizes", {k: len(v) for k, v in inventory["files"].items()})
    print("full", {k: len(v) for k, v in full["files"].items()}, full["buffers"])


def _write_tiny_config(out: Path, model: Any, cfg: Any, vocab: int) -> None:
    from omegaconf import OmegaConf

    unet = model.model.diffusion_model
    modules = []
    for i, m in enumerate(unet.project_modules):
        if type(m).__name__ == "ZeroSFT":
            norm = m.zero_conv.out_channels
            modules.append(
                {
                    "index": i,
                    "type": "ZeroSFT",
                    "label_nc": m.zero_conv.in_channels,
                    "norm_nc": norm,
                    "concat_channels": m.param_free_norm.num_channels - norm,
                }
            )
        else:
            modules.append(
                {
                    "index": i,
                    "type": "ZeroCrossAttn",
                    "query_dim": m.norm1.num_channels,
                    "context_dim": m.norm2.num_channels,
                    "heads": m.attn.heads,
                }
            )
    open_clip_cfg = copy.deepcopy(TINY_OPEN_CLIP)
    open_clip_cfg["text_cfg"]["vocab_size"] = vocab
    config = {
        "seed": SEED,
        "unet": TINY_UNET,
        "project_modules": modules,
        "vae": {**TINY_VAE, "embed_dim": 4, "in_channels": 3, "out_ch": 3, "attn_resolutions": []},
        "scale_factor": float(model.scale_factor),
        "clip_l": {**TINY_CLIP_L, "vocab_size": vocab, "layer": "hidden", "layer_idx": CLIP_L_LAYER_IDX},
        "open_clip": {**open_clip_cfg, "layer": "penultimate", "always_return_pooled": True, "legacy": False},
        "size_embedder_outdim": SIZE_OUTDIM,
        "tokenizers": {"clip_l": "tokenizer", "open_clip": "tokenizer_2", "vocab_size": vocab},
        "official_model_config": OmegaConf.to_container(cfg, resolve=True),
    }
    (out / "tiny_config.json").write_text(json.dumps(config, indent=1) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = (
        "torch",
        "transformers",
        "diffusers",
        "open_clip_torch",
        "pytorch_lightning",
        "omegaconf",
        "numpy",
    )
    return {**{name: version(name) for name in names}, "torchvision": "stand-in"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-tokenizers", help="in the project's environment")
    w.add_argument("out", type=Path)
    r = sub.add_parser("record", help="in the reference environment")
    r.add_argument("out", type=Path)
    r.add_argument("--supir-repo", type=Path, required=True)
    r.add_argument("--supir-commit", help="the checkout's commit, when it is not a git work tree")
    args = parser.parse_args()
    if args.command == "write-tokenizers":
        write_tokenizers(args.out)
    else:
        record(args.out, args.supir_repo, args.supir_commit)


if __name__ == "__main__":
    main()
