"""Our whole restoration against the reference PASD pipelines (github.com/yangxy/PASD), stage by stage.

The fixtures in ``tests/fixtures/reference_pipeline/<case>/`` hold tiny official-layout models, the
inputs, and every stage of the reference's ``pipeline_pasd.py`` run as its ``test_pasd.py`` runs it,
and (``sdxl_*``) of ``pipeline_pasd_sdxl.py`` as ``test_pasd_sdxl.py`` runs it (recorded by
``tools/make_reference_fixtures.py``, which says how to re-record them and which shims it applies).
Here :meth:`Engine.restore` runs on the same inputs with a ``trace`` and each stage is compared:
relative error at most 1e-5 for the diffusion stages (prompt embeddings, the VAE sample, the two
noise draws, the noised start, the latents after every step, the decoded image; on SDXL the joined
text states, the pooled text, the size ids, the one noise draw and the start instead of the VAE
sample and the noised start) and 1e-4 for the colour fix and the final image, all in float32.

One substitution on our side: the engine's plan is fixed at a 64×80 process size (one latent tile,
VAE untiled), since ``RestoreParams`` refuses process sizes under 256 px, a floor meant for users.

Where we differ from the reference on purpose, both sides get the same input, so the difference
stays out of the comparison:

- Pre-scaling: we enlarge with antialiased bicubic in float (or a GAN); the reference with PIL on
  8-bit images. It is fed *our* pre-scaled image (``cond``), which is checked to still be what the
  engine makes.
- Prompts: we join the user's words and the quality words with ", "; the reference appends the
  quality words with no separator. It is fed our exact prompt and negative prompt strings.
- The added noise (``added_noise_level``) is a DDPM step to that training timestep, as on diffusers
  0.21.4 where PASD wrote it; the reference on its pinned 0.29.2 looks the level up in the solver's
  steps instead, so the recorder computes that one call the 0.21.4 way.
- No 8-bit rounding: the reference rounds the decoded image to 8 bits, colour-fixes it and truncates
  the result to 8 bits again; we keep floats. Compared with the reference's float colour fix
  (``wavelet_reconstruction`` clamped to [0, 1], what ``wavelet_color_fix`` computes before its
  8-bit conversion); its own 8-bit images are only checked to lie within a few 8-bit levels.
- Colorize: we keep the original's linear-light luminance and take the chroma from the model
  (``image_ops.transfer_colour``); the reference swaps YUV chroma on 8-bit images with cv2. The
  final image is compared with our transfer applied to the reference's decoded image.
- PASD-SDXL (``sdxl_*``): the same pre-scaling, prompt and 8-bit differences; the reference runs
  untiled at these sizes as ours does (one latent tile: it tiles only past 180² latent pixels, and
  its VAE is never tiled, where ours tiles large images with shared GroupNorm statistics); the
  reference's float16 VAE is the fp16-fix one, as ours (without it ours decodes in float32).
- Region fidelity (``upscale_mask``, ``sdxl_mask``): the reference ControlNet takes one scalar scale, so the
  recorder multiplies its residuals by the same per-pixel map, area-averaged to each residual's
  size, as our ControlNet does; this case checks the rest of the pipeline under a map, not the
  map's resampling itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend import image_ops
from backend.engine import Engine, RestoreResult, RunPlan
from backend.pipelines.params import RestoreParams

from .conftest import FIXTURES

REFERENCE = FIXTURES / "reference_pipeline"
CASES = ("upscale_full", "upscale_light", "colorize", "upscale_mask", "sdxl_upscale", "sdxl_mask")
DIFFUSION_TOLERANCE = 1e-5
IMAGE_TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


class FixedPlanEngine(Engine):
    """The engine with its sizes given: the fixtures' 64×80 is below what RestoreParams allows."""

    def __init__(self, fixed: RunPlan) -> None:
        super().__init__(device="cpu", dtype="fp32")
        self.fixed = fixed

    def plan(self, height: int, width: int, params: RestoreParams, pipeline: Any) -> RunPlan:
        return self.fixed


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest, one_thread: None) -> dict[str, Any]:
    """One case: its fixture files, and our run on its inputs with every traced stage."""
    folder: Path = REFERENCE / request.param
    meta = json.loads((folder / "metadata.json").read_text())
    inputs = load_file(str(folder / "inputs.safetensors"))
    plan = meta["plan"]
    engine = FixedPlanEngine(
        RunPlan(
            input_size=tuple(plan["input_size"]),
            output_size=tuple(plan["output_size"]),
            process_size=tuple(plan["process_size"]),
            tile=plan["tile"],
            vae_tile=plan["vae_tile"],
            tiles=plan["tiles"],
        )
    )
    traced: dict[str, torch.Tensor] = {}
    result = engine.restore(
        inputs["image"].numpy(),
        RestoreParams.from_dict(meta["params"]),
        mask=inputs["mask"].numpy() if "mask" in inputs else None,
        model=(folder / meta["model"]).resolve(),
        trace=traced.setdefault,
    )
    return {
        "name": request.param,
        "meta": meta,
        "inputs": inputs,
        "ref": load_file(str(folder / "outputs.safetensors")),
        "ours": traced,
        "result": result,
    }


def test_same_inputs_as_recorded(case: dict[str, Any]) -> None:
    """The fixture still holds what the engine feeds its pipeline: else re-record it."""
    meta, inputs, ours, result = case["meta"], case["inputs"], case["ours"], case["result"]
    assert result.prompt == meta["prompt"] and result.negative_prompt == meta["negative_prompt"]
    assert relative_error(ours["cond"], inputs["cond"]) <= DIFFUSION_TOLERANCE
    if "scale_map" in inputs:
        assert relative_error(ours["scale_map"], inputs["scale_map"]) <= DIFFUSION_TOLERANCE
    assert meta["reference"]["timesteps"] and len(meta["reference"]["timesteps"]) == meta["params"]["steps"]


def test_diffusion_stages_match_the_reference(case: dict[str, Any]) -> None:
    ours, ref = case["ours"], case["ref"]
    steps = case["meta"]["params"]["steps"]
    if case["name"].startswith("sdxl"):
        stages = ["prompt_embeds", "pooled_prompt_embeds", "time_ids", "noise", "start"]
    else:
        stages = ["prompt_embeds", "init_latents", "noise", "added_noise", "noised_start"]
    stages += [f"step_{i}" for i in range(steps)] + ["decoded"]
    errors = {name: relative_error(ours[name], ref[name]) for name in stages}
    worst = {name: e for name, e in errors.items() if e > DIFFUSION_TOLERANCE}
    assert not worst, f"{case['name']}: {worst}"


def test_final_image_matches_the_reference(case: dict[str, Any]) -> None:
    ours, ref, inputs = case["ours"], case["ref"], case["inputs"]
    result: RestoreResult = case["result"]
    final = torch.from_numpy(result.image).permute(2, 0, 1)[None]
    assert result.image.dtype == np.float32  # float input: no rounding anywhere on our side
    assert torch.equal(final, ours["final"])
    if case["meta"]["task"] == "upscale":
        assert relative_error(ours["color_fixed"], ref["color_fixed"]) <= IMAGE_TOLERANCE
        assert relative_error(final, ref["final"]) <= IMAGE_TOLERANCE
        # The reference's 8-bit colour fix: rounding before, truncation after, so within 2 levels.
        ref_u8 = ref["final_u8"].permute(2, 0, 1)[None].float()
        assert (final * 255 - ref_u8).abs().max() <= 2.0
    else:
        original = inputs["image"].permute(2, 0, 1)[None].expand(1, 3, -1, -1)
        want = image_ops.transfer_colour(original, image_ops.resize(ref["decoded"], original.shape[-2:]))
        assert relative_error(final, want) <= IMAGE_TOLERANCE
        # Both keep the grey input's tones: ours exactly in linear light, the reference's YUV luma.
        grey = image_ops.to_grey(final)[0, 0]
        assert (grey - inputs["image"][..., 0]).abs().max() <= 1e-5


def test_sdxl_size_ids_are_the_processed_image_size(case: dict[str, Any]) -> None:
    """[H, W, 0, 0, H, W] of the processed image, for the negative prompt too (the reference's)."""
    if not case["name"].startswith("sdxl"):  # SD1.5 has no added conditions, on either side
        assert not {"time_ids", "pooled_prompt_embeds"} & (set(case["ours"]) | set(case["ref"]))
        return
    h, w = case["meta"]["plan"]["process_size"]
    want = torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=torch.float32)
    assert torch.equal(case["ours"]["time_ids"], want) and torch.equal(case["ref"]["time_ids"], want)


def test_reference_recorded_on_its_pinned_versions(case: dict[str, Any]) -> None:
    reference = case["meta"]["reference"]
    assert reference["diffusers"] == "0.29.2" and reference["transformers"] == "4.44.2"
    assert reference["commit"] != "unknown"
