"""Loading SUPIR from its official files, strictly, part by part.

A SUPIR checkpoint (``SUPIR-v0Q.ckpt``: a plain fp32 state dict; ``SUPIR-v0Q_fp16.safetensors``)
holds only SUPIR's own parts: the control model, the twelve connectors and the degradation-robust
encoder. The SDXL base comes either from its official single file (``sd_xl_base_1.0_0.9vae``, or an
SDXL fine-tune in the same layout) or from the diffusers SDXL folders PASD-SDXL also uses.

Every part is checked on its own: a missing, mis-shaped or unmapped key under a part's prefix is an
error that names the part and the keys. Keys that belong to no part we run (an EMA copy, a
vision tower, position ids) are listed in :attr:`LoadReport.ignored` instead of failing a file
that runs correctly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Encoder
from safetensors import safe_open
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..loading import (
    ModelLoadError,
    StateDictMismatch,
    StateDictMismatchError,
    build_on_meta,
    find_weights,
    read_config,
    read_state_dict,
)
from ..sgm_keys import (
    KeyMap,
    Source,
    clip_map,
    from_official,
    open_clip_map,
    unet_map,
    vae_map,
    with_text_model,
)
from .configs import SupirConfigs
from .unet import SupirControl, SupirUNet

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "model.control_model."
VAE_PREFIX = "first_stage_model."
DENOISE_PREFIX = "first_stage_model.denoise_encoder."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."

# The parts each official file holds, and the key prefix that claims a key for a part.
SUPIR_PARTS = ("control", "connectors", "denoise_encoder")
SDXL_PARTS = ("unet", "vae", "clip_l", "clip_g")
_CLAIMS = {
    "control": (CONTROL_PREFIX,),
    "connectors": (UNET_PREFIX + "project_modules.",),
    "denoise_encoder": (DENOISE_PREFIX,),
    "unet": (UNET_PREFIX,),
    "vae": (VAE_PREFIX,),
    "clip_l": (CLIP_L_PREFIX,),
    "clip_g": (CLIP_G_PREFIX,),
}
# Official keys no part needs: CLIP's position ids (a constant), OpenCLIP's contrastive temperature.
_UNUSED = (".position_ids", CLIP_G_PREFIX + "logit_scale")


@dataclass
class SupirModel:
    """SUPIR's modules: the SDXL base with connectors, the control model, the VAE and the
    degradation-robust encoder (which shares the VAE's ``quant_conv``), the two text encoders."""

    unet: SupirUNet
    control: SupirControl
    vae: AutoencoderKL
    denoise_encoder: Encoder
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection

    def modules(self) -> dict[str, nn.Module]:
        return {
            "unet": self.unet,
            "control": self.control,
            "vae": self.vae,
            "denoise_encoder": self.denoise_encoder,
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
        }


@dataclass
class LoadReport:
    """What loading read, per file: official keys that belong to no part we run."""

    ignored: dict[str, list[str]] = field(default_factory=dict)


def denoise_encoder(vae_config: Mapping[str, object]) -> Encoder:
    return Encoder(
        in_channels=int(vae_config["in_channels"]),  # type: ignore[arg-type]
        out_channels=int(vae_config["latent_channels"]),  # type: ignore[arg-type]
        down_block_types=tuple(vae_config["down_block_types"]),  # type: ignore[arg-type]
        block_out_channels=tuple(vae_config["block_out_channels"]),  # type: ignore[arg-type]
        layers_per_block=int(vae_config["layers_per_block"]),  # type: ignore[arg-type]
        norm_num_groups=int(vae_config["norm_num_groups"]),  # type: ignore[arg-type]
        act_fn=str(vae_config["act_fn"]),
        double_z=True,
    )


def build(configs: SupirConfigs, meta: bool = True) -> SupirModel:
    """All parts from their configs, on the meta device (no weights allocated) unless ``meta`` is False."""

    def make() -> SupirModel:
        return SupirModel(
            unet=SupirUNet(**configs.unet),
            control=SupirControl(**configs.unet),
            vae=AutoencoderKL(**configs.vae),
            denoise_encoder=denoise_encoder(configs.vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**configs.clip_l)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**configs.clip_g)),
        )

    return build_on_meta(make) if meta else make()


def _keys(module: nn.Module, keep: str | None = None, drop: str | None = None) -> list[str]:
    keys = list(module.state_dict())
    if keep is not None:
        keys = [k for k in keys if k.startswith(keep)]
    if drop is not None:
        keys = [k for k in keys if not k.startswith(drop)]
    return keys


def part_maps(model: SupirModel, configs: SupirConfigs) -> dict[str, tuple[nn.Module, KeyMap]]:
    """For each part: the module it loads into and the map from that module's keys to official ones."""
    denoise = vae_map(["encoder." + k for k in _keys(model.denoise_encoder)], configs.vae, "")
    return {
        "control": (model.control, unet_map(_keys(model.control), configs.unet, CONTROL_PREFIX)),
        "connectors": (
            model.unet,
            unet_map(_keys(model.unet, keep="project_modules."), configs.unet, UNET_PREFIX),
        ),
        "denoise_encoder": (
            model.denoise_encoder,
            {k[len("encoder.") :]: _under(s, DENOISE_PREFIX) for k, s in denoise.items()},
        ),
        "unet": (model.unet, unet_map(_keys(model.unet, drop="project_modules."), configs.unet, UNET_PREFIX)),
        "vae": (model.vae, vae_map(_keys(model.vae), configs.vae, VAE_PREFIX)),
        "clip_l": (model.text_encoder, clip_map(_keys(model.text_encoder), CLIP_L_PREFIX)),
        "clip_g": (model.text_encoder_2, open_clip_map(_keys(model.text_encoder_2), CLIP_G_PREFIX)),
    }


def _under(source: Source, prefix: str) -> Source:
    """``source`` (an ``encoder.…`` key of the VAE map) moved under ``prefix``."""
    return replace(source, key=prefix + source.key[len("encoder.") :])


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` or pickled ``.ckpt``/``.pth``/``.bin`` state dict (without pickle code;
    a ``{"state_dict": …}`` wrapper, as Lightning saves, is unwrapped)."""
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with code in it
        raise ModelLoadError(f"Could not read weights from {path}: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a flat state dict of tensors")
    return dict(state)


def read_shapes(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's keys as meta tensors of its shapes and dtypes (safetensors: from the header
    only; a pickle is memory-mapped), for checking a multi-gigabyte file without reading it."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                out = {}
                for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    part = f.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.float32)
                    out[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
                return out
        except Exception as exc:
            raise ModelLoadError(f"Could not read weights from {path}: {exc}") from exc
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in read_checkpoint(path).items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def check_files(configs: SupirConfigs, supir_file: Path, base_file: Path | None) -> LoadReport:
    """Load every part's keys and shapes on the meta device (nothing is read but headers): raises
    :class:`ModelLoadError` naming what does not fit, as a real load would."""
    model = build(configs)
    report = LoadReport()
    if base_file is not None:
        load_parts(model, configs, read_shapes(base_file), SDXL_PARTS, str(base_file), report)
    load_parts(model, configs, read_shapes(supir_file), SUPIR_PARTS, str(supir_file), report)
    return report


def load_parts(
    model: SupirModel,
    configs: SupirConfigs,
    state: Mapping[str, torch.Tensor],
    parts: tuple[str, ...],
    source: str,
    report: LoadReport | None = None,
) -> None:
    """Assign ``parts`` of ``model`` from the official ``state``; raise naming every part that misfits."""
    maps = part_maps(model, configs)
    problems: list[str] = []
    claimed: set[str] = set()
    for part in parts:
        module, keymap = maps[part]
        shapes = {k: v.shape for k, v in module.state_dict().items() if k in keymap}
        tensors, mismatch = from_official(keymap, state, shapes)
        used = {s.key for s in keymap.values()}
        claims = _CLAIMS[part]
        others = tuple(
            p for q in parts if q != part for p in _CLAIMS[q] if any(p.startswith(c) for c in claims)
        )
        stray = sorted(
            k
            for k in state
            if k.startswith(claims) and k not in used and not k.startswith(others) and not k.endswith(_UNUSED)
        )
        mismatch.unexpected.extend(stray)
        claimed.update(k for k in state if k.startswith(claims))
        if mismatch:
            problems.append(f"[{part}]\n{mismatch.describe()}")
            continue
        module.load_state_dict(tensors, strict=False, assign=True)
    if problems:
        raise StateDictMismatchError(source, _Described("\n".join(problems)))
    if report is not None:
        report.ignored[source] = sorted(k for k in state if k not in claimed)


class _Described(StateDictMismatch):
    """A mismatch whose description was already written part by part."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def __bool__(self) -> bool:
        return True

    def describe(self) -> str:
        return self.text


def load_base_folders(model: SupirModel, folders: Mapping[str, Path]) -> None:
    """The SDXL base from diffusers-layout folders (``unet``, ``vae``, ``text_encoder``,
    ``text_encoder_2``): the same tensors under diffusers' names, loaded as strictly."""
    problems: list[str] = []
    for name, module, skip in (
        ("unet", model.unet, "project_modules."),
        ("vae", model.vae, None),
        ("text_encoder", model.text_encoder, None),
        ("text_encoder_2", model.text_encoder_2, None),
    ):
        folder = Path(folders[name])
        if not folder.is_dir():
            raise ModelLoadError(f"The SDXL base part {name} is missing: no folder {folder}")
        read_config(folder)  # a folder without its config is not a component
        weights = _component_weights(folder)
        state = read_state_dict(weights)
        if name == "text_encoder":  # transformers 5 names the saved ``text_model.…`` keys without it
            ours = {with_text_model(k): k for k in module.state_dict()}
            state = {ours.get(k, k): v for k, v in state.items()}
        expected = {
            k: v.shape for k, v in module.state_dict().items() if skip is None or not k.startswith(skip)
        }
        mismatch = StateDictMismatch(
            missing=sorted(k for k in expected if k not in state and not k.endswith("position_ids")),
            unexpected=sorted(k for k in state if k not in expected and not k.endswith("position_ids")),
            mismatched=[
                (k, tuple(v.shape), tuple(expected[k]))
                for k, v in state.items()
                if k in expected and v.shape != expected[k]
            ],
        )
        if mismatch:
            problems.append(f"[{name}: {weights}]\n{mismatch.describe()}")
            continue
        module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    if problems:
        raise StateDictMismatchError("the SDXL base folders", _Described("\n".join(problems)))


def _component_weights(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):  # transformers' names
        if (folder / name).is_file():
            return folder / name
    return find_weights(folder)


def finish(model: SupirModel) -> SupirModel:
    """Check nothing is left unloaded and create the constant buffers that are never saved."""
    for name, module in model.modules().items():
        for key, buffer in list(module.named_buffers()):
            if buffer.is_meta and key.endswith("position_ids"):
                owner, _, attr = key.rpartition(".")
                length = buffer.shape[-1]
                module.get_submodule(owner).register_buffer(
                    attr, torch.arange(length).expand((1, -1)), persistent=False
                )
        left = [k for k, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:
            listed = ", ".join(left[:8]) + (" …" if len(left) > 8 else "")
            raise ModelLoadError(f"SUPIR's {name} was not fully loaded; still empty: {listed}")
        module.eval()
    return model
