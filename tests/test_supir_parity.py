"""Our SUPIR against the official code (github.com/Fanghua-Yu/SUPIR), module by module and whole runs.

The fixtures in ``tests/fixtures/supir`` were recorded by ``tools/make_supir_fixtures.py`` from the
official classes, built tiny, with every parameter filled by ``random_state(inventory, 1234)``. Our
side writes the same weights into the official *file* layouts (``tiny-model --variant supir``: a
pickled SUPIR ``.ckpt`` and an sgm single-file SDXL base) and loads them through the real loader, so
the key maps are proven along with the arithmetic. Tolerances: 1e-5 of the tensor's scale per
module, 1e-4 for whole runs (float32, CPU).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.devices import choose_device
from backend.image_ops import adain_color_fix, wavelet_color_fix
from backend.models.store import resolve_model
from backend.models.supir.configs import full_configs
from backend.models.supir.sampler import (
    RestoreSampling,
    denoise,
    quantize,
    sample,
    sampler_step,
    sampling_sigmas,
    training_sigmas,
)
from backend.models.supir.tiny import official_inventory, tiny_supir_configs, write_tiny_supir
from backend.models.supir.unet import conditioning_vector
from backend.pipelines.base import SamplingKnobs
from backend.pipelines.supir import SupirPipeline

from .conftest import FIXTURES

SUPIR = FIXTURES / "supir"
META = json.loads((SUPIR / "modules.json").read_text())
FACTS = META["facts"]


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(SUPIR / "modules.safetensors"))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[SupirPipeline]:
    root = write_tiny_supir(tmp_path_factory.mktemp("supir") / "supir-ref", seed=META["seed"])
    yield SupirPipeline.from_installed(resolve_model(root), choose_device("cpu", "fp32"))


def close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> None:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(1.0, float(theirs.abs().max()))
    err = float((ours.float() - theirs.float()).abs().max())
    if os.environ.get("PARITY_REPORT"):  # the figures the benchmark notes quote
        print(f"parity: max error {err:.2e} = {err / scale:.2e} of the scale {scale:.3g}")
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} × {scale:.3g}"


def _inventory(name: str) -> dict[str, dict[str, tuple[int, ...]]]:
    data = json.loads((SUPIR / name).read_text())
    buffers = set(data["buffers"])
    return {
        f: {k: tuple(v) for k, v in keys.items() if k not in buffers} for f, keys in data["files"].items()
    }


def test_official_key_inventories_match_ours_at_full_and_tiny_width() -> None:
    """Every official key and shape of both files (SUPIR-v0Q.ckpt's parts and the SDXL single
    file), at full width on the meta device and at the tiny width, is what our modules map to."""
    assert official_inventory(full_configs()) == _inventory("inventory_full.json")
    assert official_inventory(tiny_supir_configs(SUPIR / "tokenizer")) == _inventory("inventory_tiny.json")


def test_training_and_sampling_sigmas_are_the_officials() -> None:
    buffers = load_file(str(SUPIR / "buffers.safetensors"))
    assert torch.equal(training_sigmas(), buffers["denoiser.sigmas"])
    ref = load_file(str(SUPIR / "modules.safetensors"))
    assert torch.equal(sampling_sigmas(5), ref["sample.sigmas"])


@pytest.mark.parametrize("k", [0, 8, 10, 11])
def test_zero_sft(pipe: SupirPipeline, ref: dict[str, torch.Tensor], k: int) -> None:
    module = pipe.model.unet.project_modules[k]
    c, h = ref[f"zerosft.{k}.c"], ref[f"zerosft.{k}.h"]
    skip = ref.get(f"zerosft.{k}.s")
    for name, lam in (
        ("lam0", 0.0),
        ("lam0.5", 0.5),
        ("lam1", 1.0),
        ("spatial", ref[f"zerosft.{k}.lam_spatial"]),
    ):
        out = module(c, skip, h, scale=lam) if skip is not None else module(c, h, scale=lam)
        close(out, ref[f"zerosft.{k}.out.{name}"])
    plain = torch.cat([h, skip], 1) if skip is not None else h
    assert torch.equal(module(c, skip, h, scale=0.0) if skip is not None else module(c, h, scale=0.0), plain)


@pytest.mark.parametrize("k", [3, 7])
def test_zero_cross_attn(pipe: SupirPipeline, ref: dict[str, torch.Tensor], k: int) -> None:
    module = pipe.model.unet.project_modules[k]
    c, x = ref[f"zerocrossattn.{k}.c"], ref[f"zerocrossattn.{k}.x"]
    for name, lam in (
        ("lam0", 0.0),
        ("lam0.5", 0.5),
        ("lam1", 1.0),
        ("spatial", ref[f"zerocrossattn.{k}.lam_spatial"]),
    ):
        close(module(c, x, scale=lam), ref[f"zerocrossattn.{k}.out.{name}"])


def test_control_model_and_unet(pipe: SupirPipeline, ref: dict[str, torch.Tensor]) -> None:
    m = pipe.model
    added = {"vector": ref["glv.y"]}
    control = m.control(ref["glv.x"], ref["glv.xt"], ref["glv.timesteps"], ref["glv.context"], added)
    assert len(control) == 10
    for i, feature in enumerate(control):
        close(feature, ref[f"glv.out.{i}"])
    official = [ref[f"glv.out.{i}"] for i in range(10)]
    for name, lam in (("lam1", 1.0), ("lam0.5", 0.5)):
        eps = m.unet(ref["glv.xt"], ref["glv.timesteps"], ref["glv.context"], added, official, lam)
        close(eps, ref[f"unet.eps.{name}"])


def test_denoiser_quantises_sigma(pipe: SupirPipeline, ref: dict[str, torch.Tensor]) -> None:
    x, sigma = ref["denoiser.x"], ref["denoiser.sigma"]
    added = {"vector": ref["denoiser.vector"]}
    network = pipe._network(
        ref["denoiser.crossattn"], added, ref["denoiser.control"], FACTS["denoiser.control_scale"]
    )
    close(denoise(network, x, sigma, pipe.sigmas), ref["denoiser.out"])
    sigma_q, index = quantize(sigma, pipe.sigmas)
    assert torch.equal(index, ref["denoiser.idx"]) and torch.equal(sigma_q, ref["denoiser.sigma_q"])


def test_conditioner(pipe: SupirPipeline, ref: dict[str, torch.Tensor]) -> None:
    """Both tokenizers give the official ids; both encoders, the pooled text and the size
    embeddings give the official ``crossattn`` and ``vector``."""
    text = pipe.text
    texts = [*FACTS["cond"]["texts"], FACTS["cond"]["negative"]]
    for tokenizer, name in ((text.tokenizer, "l"), (text.tokenizer_2, "g")):
        ids = tokenizer(
            texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        assert torch.equal(ids, ref[f"cond.tokens_{name}"])
    states, pooled = text.encode(texts, torch.device("cpu"))
    ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 3)
    vector = conditioning_vector(pipe.model.unet, pooled, ids)
    close(states[:2], ref["cond.c.crossattn"])
    close(vector[:2], ref["cond.c.vector"])
    close(states[2:].expand(2, -1, -1), ref["cond.uc.crossattn"])
    close(vector[2:].expand(2, -1), ref["cond.uc.vector"])


def test_vae_and_denoise_encoder(pipe: SupirPipeline, ref: dict[str, torch.Tensor]) -> None:
    x = ref["vae.x"]
    z = pipe._encode(x.add(1).mul(0.5), None, None, "encode", lambda *a: None, lambda: None, denoise=True)
    close(z, ref["vae.z_denoise"])
    close(
        pipe._decode(ref["vae.z_denoise"], None, "decode", lambda *a: None, lambda: None), ref["vae.decoded"]
    )
    z = pipe._encode(x, None, ref["vae.noise"], "encode", lambda *a: None, lambda: None)
    close(z, ref["vae.z_sample"])


def test_one_sampler_step(pipe: SupirPipeline, ref: dict[str, torch.Tensor]) -> None:
    """Churn noise before the model call, linear CFG in σ̂, linear λ in σ, restoration guidance."""
    facts = FACTS["step"]
    knobs = RestoreSampling(
        steps=10,
        churn=facts["gamma"] * 10,
        noise=facts["s_noise"],
        cfg=facts["cfg_scale"],
        cfg_start=facts["cfg_scale_start"],
        control_scale_start=facts["control_scale_start"],
        restoration=facts["restore_cfg"],
    )
    assert knobs.gamma() == pytest.approx(facts["gamma"])
    text = torch.cat([ref["step.uc.crossattn"], ref["step.c.crossattn"]])
    added = {"vector": torch.cat([ref["step.uc.vector"], ref["step.c.vector"]])}
    hint = torch.cat([ref["step.control"]] * 2)

    def guided(
        x: torch.Tensor, sigma_hat: torch.Tensor, lam: torch.Tensor | float, w: torch.Tensor
    ) -> torch.Tensor:
        d = denoise(
            pipe._network(text, added, hint, lam), torch.cat([x, x]), torch.cat([sigma_hat] * 2), pipe.sigmas
        )
        uncond, cond = d.chunk(2)
        return uncond + w.view(-1, 1, 1, 1) * (cond - uncond)

    out = sampler_step(
        knobs,
        guided,
        ref["step.x"],
        ref["step.sigma"],
        ref["step.next_sigma"],
        ref["step.eps"],
        ref["step.x_center"],
        control_scale=facts["control_scale"],
    )
    close(out, ref["step.out"])


def test_whole_run_from_the_seed(pipe: SupirPipeline, ref: dict[str, torch.Tensor]) -> None:
    """``batchify_sample``: every stage, drawing the official random numbers from the seed."""
    facts = FACTS["sample"]
    k = facts["knobs"]
    seen: dict[str, torch.Tensor] = {}
    out = pipe(
        ref["sample.x"].add(1).mul(0.5),
        prompt=facts["prompt"] + facts["a_prompt"],
        negative_prompt=facts["n_prompt"],
        steps=k["num_steps"],
        guidance=k["cfg_scale"],
        seed=k["seed"],
        scale_map=k["control_scale"],
        knobs=SamplingKnobs(
            guidance_start=k["cfg_scale_start"],
            fidelity_start=k["control_scale_start"],
            restoration=k["restoration_scale"],
            churn=k["s_churn"],
            churn_noise=k["s_noise"],
            color_fix=True,
        ),
        trace=lambda name, t: seen.__setitem__(name, t),
    )
    close(seen["z_lq"], ref["sample.z_lq"])
    close(seen["x_stage1"], ref["sample.x_st1"])
    close(seen["z_stage1"], ref["sample.z_st1"])
    assert torch.equal(seen["noise"], ref["sample.draw.1"])
    for i in range(k["num_steps"]):
        close(seen[f"step_{i}"], ref[f"sample.step.{i}"], 1e-4)
    close(seen["samples"], ref["sample.z0"], 1e-4)
    close(seen["decoded"], ref["sample.decoded"], 1e-4)
    close(out, ref["sample.color_fixed"].add(1).mul(0.5).clamp(0, 1), 1e-4)


def test_tiled_sampling_equals_the_official_tiled_sampler(
    pipe: SupirPipeline, ref: dict[str, torch.Tensor]
) -> None:
    """The official tiled sampler blends each tile's *stepped* latents; we blend the tiles' clean
    estimates and step once. The step is linear per pixel, so with the official windows and weights
    the two agree: our sampler, fed the official tiles, gives the official tiled run."""
    facts = FACTS["tiled"]
    k = facts["knobs"]
    weight = ref["tiled.tile_weights"][0, 0]
    z_lq = ref["tiled.z_lq"]
    text = torch.cat([ref["tiled.uc.crossattn"], ref["tiled.c.crossattn"]])
    added = {"vector": torch.cat([ref["tiled.uc.vector"], ref["tiled.c.vector"]])}

    def guided(
        x: torch.Tensor, sigma_hat: torch.Tensor, lam: torch.Tensor | float, w: torch.Tensor
    ) -> torch.Tensor:
        total, count = torch.zeros_like(x), torch.zeros_like(x)
        for h0, h1, w0, w1 in facts["tiles"]:
            part, hint = x[..., h0:h1, w0:w1], z_lq[..., h0:h1, w0:w1]
            network = pipe._network(text, added, torch.cat([hint, hint]), lam)
            d = denoise(network, torch.cat([part, part]), torch.cat([sigma_hat] * 2), pipe.sigmas)
            uncond, cond = d.chunk(2)
            total[..., h0:h1, w0:w1] += (uncond + w.view(-1, 1, 1, 1) * (cond - uncond)) * weight
            count[..., h0:h1, w0:w1] += weight
        return total / count

    knobs = RestoreSampling(
        steps=k["num_steps"],
        cfg=k["cfg_scale"],
        cfg_start=k["cfg_scale_start"],
        control_scale_start=k["control_scale_start"],
        restoration=k["restoration_scale"],
        churn=k["s_churn"],
        noise=k["s_noise"],
    )
    draws = iter(ref[f"tiled.draw.{i}"] for i in range(2, 2 + k["num_steps"]))
    z0 = sample(
        knobs, guided, ref["tiled.draw.1"], ref["tiled.z_st1"], lambda: next(draws), k["control_scale"]
    )
    close(z0, ref["tiled.z0"], 1e-4)


def test_colour_fixes(ref: dict[str, torch.Tensor]) -> None:
    """SUPIR's wavelet fix (in [-1, 1]) equals ours (in [0, 1]): the filter is linear. AdaIN is
    applied in SUPIR's own range."""
    content, style = ref["colorfix.content"], ref["colorfix.style"]
    ours = wavelet_color_fix(content.add(1).mul(0.5), style.add(1).mul(0.5))
    close(ours, ref["colorfix.wavelet"].add(1).mul(0.5).clamp(0, 1))
    close(adain_color_fix(content, style), ref["colorfix.adain"])


def test_fixture_metadata_names_the_official_commit() -> None:
    assert META["supir"]["commit"].startswith("bda91af")
    assert Path(SUPIR / "tokenizer" / "vocab.json").is_file()
