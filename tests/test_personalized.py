"""Styles (personalized SD1.5 bases) and ModelScope snapshots through the engine, the CLI and the service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTextModel

from backend.engine import Engine, InputError
from backend.models.loading import ModelLoadError
from backend.models.pasd.styles import STYLES_DIR, read_state_dict
from backend.models.pasd.tiny_style import write_style_files
from backend.models.store import installed_models, resolve_model
from backend.models.tiny import write_tiny_model, write_tiny_modelscope
from backend.pipelines.params import RestoreParams
from tests.conftest import run_backend

RUN = RestoreParams(steps=2, seed=11, scale=1.0, process_size=256)


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with a tiny PASD, its styles in styles/, and two ModelScope snapshots."""
    root = tmp_path_factory.mktemp("personal")
    tiny = write_tiny_model(root / "tiny-full", "full", seed=1)
    files = write_style_files(root / "style-src", tiny)
    styles = root / STYLES_DIR
    styles.mkdir()
    shutil.copy(files.checkpoint, styles / "toon.safetensors")
    shutil.copy(files.lora, styles / "ink-lora.safetensors")
    shutil.copytree(files.unet_folder, styles / "disney-unet")
    write_tiny_modelscope(root / "PASD_v2_image_super_resolutions", "pasd_v2", seed=21)
    write_tiny_modelscope(root / "PASD_image_super_resolutions", "pasd", seed=22, checkpoint=False)
    return root


@pytest.fixture(scope="module")
def engine(models: Path, one_thread: None) -> Engine:
    return Engine(models, device="cpu")


def test_a_style_changes_the_run_and_is_loaded_once(engine: Engine) -> None:
    img = picture()
    plain = engine.restore(img, RUN, model="tiny-full")
    styled = engine.restore(img, RUN.with_(style="toon"), model="tiny-full")
    assert not np.array_equal(plain.image, styled.image)
    assert any(
        n.startswith("style toon: its UNet blended in at 1, its VAE, its text encoder") for n in styled.notes
    )
    loaded = engine._pipeline
    again = engine.restore(img, RUN.with_(style="toon"), model="tiny-full")
    assert engine._pipeline is loaded and np.array_equal(again.image, styled.image)
    # back to no style: the model's own weights again (loaded afresh, not un-blended)
    assert np.array_equal(engine.restore(img, RUN, model="tiny-full").image, plain.image)


def test_a_lora_at_strength_zero_is_the_plain_model_and_strength_matters(engine: Engine) -> None:
    img = picture()
    plain = engine.restore(img, RUN, model="tiny-full")
    zero = engine.restore(img, RUN.with_(style="ink-lora", style_strength=0.0), model="tiny-full")
    assert np.array_equal(zero.image, plain.image)
    strong = engine.restore(img, RUN.with_(style="ink-lora", style_strength=2.0), model="tiny-full")
    assert not np.array_equal(strong.image, plain.image)
    assert "a LoRA merged into" in " ".join(strong.notes)
    reference = engine.restore(
        img,
        RUN.with_(style="ink-lora", style_strength=2.0, style_lora_scaling="reference"),
        model="tiny-full",
    )
    assert not np.array_equal(reference.image, strong.image)  # alpha/rank ≠ 1 in this LoRA
    folder = engine.restore(img, RUN.with_(style="disney-unet", style_strength=0.5), model="tiny-full")
    assert not np.array_equal(folder.image, plain.image)


def test_bad_styles_are_clear_errors(engine: Engine, models: Path, tiny_sdxl: Path) -> None:
    with pytest.raises(InputError, match="nosuch"):
        engine.restore(picture(), RUN.with_(style="nosuch"), model="tiny-full")
    with pytest.raises(InputError, match="strength from 0 to 1"):
        engine.restore(picture(), RUN.with_(style="toon", style_strength=1.5), model="tiny-full")
    sdxl = Engine(tiny_sdxl.parent, device="cpu")
    with pytest.raises(InputError, match=r"PASD SD1\.5 models"):
        sdxl.restore(
            picture(), RUN.with_(style=str(models / STYLES_DIR / "toon.safetensors")), model="tiny-sdxl"
        )
    # the engine still runs after a refused style
    assert engine.restore(picture(), RUN, model="tiny-full").image.shape == (48, 64, 3)


def test_modelscope_snapshots_are_local_models_with_modelscopes_defaults(
    engine: Engine, models: Path
) -> None:
    found = {m.root.name: m.manifest for m in installed_models(models)}
    v2, v1 = found["PASD_v2_image_super_resolutions"], found["PASD_image_super_resolutions"]
    assert (v2.variant, v1.variant) == ("full", "light") and v2.tasks == ("upscale",)
    d = v2.defaults("upscale")
    assert (d.steps, d.guidance, d.process_size) == (20, 7.5, 768)
    assert d.quality_prompt.endswith("masterpiece, extremely detailed")
    assert d.negative_prompt.startswith("dotted, noise, blur, lowres") and "  " not in d.negative_prompt
    res = engine.restore(picture(), RestoreParams(steps=1, seed=2, scale=1.0, process_size=256),
                         model=str(models / "PASD_v2_image_super_resolutions"))  # fmt: skip
    assert res.params.guidance == 7.5 and res.prompt.endswith("extremely detailed")
    assert any("majicmixRealistic_v6.safetensors is loaded over the UNet and the VAE" in n for n in res.notes)
    pipeline = engine._pipeline
    # as ModelScope loads it: the checkpoint's VAE, the snapshot's own text encoder
    style = read_state_dict(models / "PASD_v2_image_super_resolutions" / "majicmixRealistic_v6.safetensors")
    assert torch.equal(
        pipeline.vae.decoder.conv_out.weight, style["first_stage_model.decoder.conv_out.weight"]
    )
    own = CLIPTextModel.from_pretrained(str(models / "PASD_v2_image_super_resolutions" / "text_encoder"))
    ours = pipeline.text_encoder.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in own.state_dict().items())
    light = engine.restore(picture(), RUN, model="PASD_image_super_resolutions")
    assert light.image.shape == (48, 64, 3) and not any("loaded over" in n for n in light.notes)


def test_broken_modelscope_snapshots_say_what_is_wrong(tmp_path: Path) -> None:
    root = write_tiny_modelscope(tmp_path / "snap", "pasd_v2", seed=3)
    config = json.loads((root / "configuration.json").read_text())
    config["model_cfg"]["dreambooth_lora_ckpt"] = "../../etc/passwd"
    (root / "configuration.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="must be a file name"):
        resolve_model(root)
    config["model_cfg"]["dreambooth_lora_ckpt"] = "gone.safetensors"
    (root / "configuration.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"gone\.safetensors .* is missing"):
        resolve_model(root)
    shutil.rmtree(root / "vae")
    with pytest.raises(ModelLoadError, match="lacks vae/"):
        resolve_model(root)
    (root / "configuration.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        resolve_model(root)


def test_cli_lists_styles_and_runs_one_by_path(models: Path, tmp_path: Path) -> None:
    listed = run_backend("models", "--models", str(models))
    assert listed.returncode == 0, listed.stderr
    assert "toon" in listed.stdout and "ink-lora" in listed.stdout and "disney-unet" in listed.stdout
    assert "PASD_v2_image_super_resolutions" in listed.stdout
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(picture()).save(src)
    out = tmp_path / "out.png"
    done = run_backend(
        "upscale", str(src), "-o", str(out), "--models", str(models), "--model", "tiny-full", "--scale", "1",
        "--steps", "1", "--process-size", "256", "--seed", "3", "--quiet",
        "--style", str(models / "style-src" / "tiny-lora.safetensors"), "--style-strength", "0.8",
        "--lora-scaling", "reference",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "note: style tiny-lora: a LoRA merged into" in done.stdout and "at 0.8" in done.stdout
    bad = run_backend("upscale", str(src), "-o", str(tmp_path / "x.png"), "--models", str(models),
                      "--model", "tiny-full", "--style", "nosuch", "--quiet")  # fmt: skip
    assert bad.returncode == 1 and "nosuch" in bad.stderr and "Traceback" not in bad.stderr


def test_service_lists_styles_and_runs_one_by_name(models: Path, tmp_path: Path) -> None:
    from backend.client import ApiError, RawImage

    from .service_server import ServerProcess

    img = picture()
    with ServerProcess(models, tmp_path / "home") as server:
        client = server.client()
        listing = client._json("GET", "/v1/models")
        styles = {s["name"]: s for s in listing["styles"]}
        assert styles["toon"]["kind"] == "checkpoint" and styles["ink-lora"]["default_strength"] == 0.6
        assert styles["disney-unet"]["kind"] == "unet" and listing["fast_mode"] is False
        installed = {m["id"]: m for m in listing["installed"]}
        snapshot = installed["PASD_v2_image_super_resolutions"]  # a ModelScope folder, by name
        assert snapshot["variant"] == "full" and snapshot["defaults"]["upscale"]["steps"] == 20
        assert installed["PASD_image_super_resolutions"]["variant"] == "light"
        image_id = client.upload(RawImage(64, 48, 3, "uint8", img.tobytes())).id
        job = client.wait(
            client.submit(image_id, {**RUN.to_dict(), "style": "ink-lora"}, model="tiny-full").id
        )
        assert any("LoRA merged" in n for n in job.result["notes"])
        with pytest.raises(ApiError) as info:  # a path is never taken from a client
            client.submit(image_id, {**RUN.to_dict(), "style": str(models / STYLES_DIR / "toon.safetensors")})
        assert info.value.status == 422 and "toon" in str(info.value)
