"""The real download path (huggingface_hub) against a fake hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend.devices import choose_device
from backend.models.manifest import read_manifest
from backend.models.registry import REGISTRY
from backend.models.store import installed_models, resolve_model
from backend.models.tiny import write_pasd_components, write_tiny_model
from backend.pipelines.pasd import PasdPipeline

from .conftest import ROOT, run_backend
from .fake_hub import FakeHub

PASD_REPO = "yangtao9009/PASD"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def cli_env(hub: FakeHub, models: Path) -> dict[str, str]:
    """The hub client pointed at the fake hub, with its own cache next to the model folder."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(models.parent / "hf-home"),
    }


def cli(hub: FakeHub, *args: str) -> subprocess.CompletedProcess[str]:
    return run_backend(*args, **cli_env(hub, Path(args[-1])))


# The real top of yangtao9009/PASD (hub tree page, shared/research/pasd-family.md §4): five folders,
# each with one checkpoint folder holding unet/, controlnet/ and accelerate's scaler.pt (a pickle),
# the colour model's own scheduler, .gitattributes and a 28-byte README.md. No pasd_color/.
PASD_CHECKPOINTS = {  # folder: (variant, use_rrdb, seed)
    "pasd/checkpoint-100000": ("full", False, 11),
    "pasd_light/checkpoint-120000": ("light", False, 13),
    "pasd_rrdb/checkpoint-100000": ("full", True, 14),
    "pasd_light_rrdb/checkpoint-100000": ("light", True, 15),
    "pasd_light_color/checkpoint-180000": ("light", False, 16),
}
SCALER = b"\x80\x04accelerate GradScaler state; never to be fetched".ljust(557, b".")


def make_repos(tmp_path: Path) -> dict[str, Path]:
    """Fake-hub repositories laid out as the real ones, tiny random weights in place of the real."""
    pasd = tmp_path / "hub" / "PASD"
    for folder, (variant, use_rrdb, seed) in PASD_CHECKPOINTS.items():
        write_pasd_components(pasd / folder, variant, use_rrdb, seed=seed)
        (pasd / folder / "scaler.pt").write_bytes(SCALER)
    tiny = write_tiny_model(tmp_path / "hub-src", "full", seed=12)
    colour = write_tiny_model(tmp_path / "hub-src-color", "color", seed=17)
    shutil.copytree(colour / "scheduler", pasd / "pasd_light_color" / "scheduler")
    (pasd / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (pasd / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    sd15 = tmp_path / "hub" / "sd15"
    for part in ("text_encoder", "tokenizer", "vae", "scheduler", "unet"):
        shutil.copytree(tiny / part, sd15 / part)
    (sd15 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {PASD_REPO: pasd, SD15_REPO: sd15}


def test_download_fetches_only_needed_files_and_installs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        result = cli(hub, "download", "pasd", "--quiet", "--models", str(models))
        assert result.returncode == 0, result.stderr
        # Exactly the registry's files, each once: no SD1.5 UNet, never the scaler.pt pickle.
        wanted = [f"{s.repo}/{f}" for s in (REGISTRY["sd15"], REGISTRY["pasd"]) for f in s.files]
        assert sorted(hub.fetched()) == sorted(wanted)
        assert not any("scaler.pt" in r for r in hub.requests)
        assert not (models / "sd15" / "unet").exists()
        assert not list(models.rglob("scaler.pt"))

        manifest = read_manifest(models / "pasd")
        assert manifest.variant == "full" and manifest.tasks == ("upscale",)
        assert (
            manifest.resolve(models / "pasd", "text_encoder") == (models / "sd15" / "text_encoder").resolve()
        )

        inspected = cli(hub, "inspect", "pasd", "--models", str(models))
        assert inspected.returncode == 0, inspected.stderr
        assert "PASD-full" in inspected.stdout

        # A second run finds everything in place and asks the hub for nothing.
        before = len(hub.requests)
        again = cli(hub, "download", "pasd", "--quiet", "--models", str(models))
        assert again.returncode == 0, again.stderr
        assert len(hub.requests) == before


def test_download_repairs_a_damaged_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        assert cli(hub, "download", "pasd", "--quiet", "--models", str(models)).returncode == 0
        weights = (
            models
            / "pasd"
            / "pasd"
            / "checkpoint-100000"
            / "controlnet"
            / "diffusion_pytorch_model.safetensors"
        )
        weights.write_bytes(weights.read_bytes()[:100])  # a truncated file
        listing = cli(hub, "models", "--models", str(models))
        assert listing.returncode == 0
        repaired = cli(hub, "download", "pasd", "--quiet", "--models", str(models))
        assert repaired.returncode == 0, repaired.stderr
        assert cli(hub, "inspect", "pasd", "--models", str(models)).returncode == 0


def test_colour_model_comes_from_pasd_light_color_and_loads(tmp_path: Path) -> None:
    models = tmp_path / "models"
    repos = make_repos(tmp_path)
    with FakeHub(repos) as hub:
        result = cli(hub, "download", "pasd-color", "--quiet", "--models", str(models))
        assert result.returncode == 0, result.stderr
        from_pasd = hub.fetched(PASD_REPO)
    assert sorted(from_pasd) == sorted(
        f"{PASD_REPO}/pasd_light_color/{f}"
        for f in (
            "checkpoint-180000/unet/config.json",
            "checkpoint-180000/unet/diffusion_pytorch_model.safetensors",
            "checkpoint-180000/controlnet/config.json",
            "checkpoint-180000/controlnet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
        )
    )
    assert not any("scaler.pt" in r for r in hub.requests)

    folder = models / "pasd-color"  # the local id users know stays; only the hub paths changed
    weights = "pasd_light_color/checkpoint-180000/unet/diffusion_pytorch_model.safetensors"
    assert (folder / weights).read_bytes() == (repos[PASD_REPO] / weights).read_bytes()
    found = {m.root.name: m.manifest for m in installed_models(models)}
    assert found["pasd-color"].tasks == ("colorize",) and found["pasd-color"].variant == "light"
    model = resolve_model("pasd-color", models)
    assert (
        model.manifest.resolve(folder, "scheduler") == (folder / "pasd_light_color" / "scheduler").resolve()
    )

    pipeline = PasdPipeline.from_installed(model, choose_device("cpu"))
    assert pipeline.unet.pasd_variant == "light" and not pipeline.controlnet.config.use_rrdb
    assert pipeline.scheduler.config.rescale_betas_zero_snr  # its own schedule, not SD1.5's
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    # And it runs: a grey picture comes back in colour, its luminance kept.
    from backend.engine import Engine
    from backend.pipelines.params import RestoreParams

    grey = np.random.default_rng(0).integers(0, 256, (32, 40, 1), dtype=np.uint8)
    params = RestoreParams(task="colorize", scale=1.0, steps=2, process_size=256, seed=1)
    result = Engine(models, device="cpu").restore(grey, params, model="pasd-color")
    assert result.image.shape == (32, 40, 3) and result.model == "pasd-color"


_STALE_ENTRY = """
import dataclasses, sys
from backend.cli import main
from backend.models import registry
spec = registry.REGISTRY["pasd-color"]
registry.REGISTRY["pasd-color"] = dataclasses.replace(
    spec,
    subfolder="pasd_color/checkpoint-180000",
    scheduler_subfolder="pasd_color/scheduler",
    files=tuple(f.replace("pasd_light_color/", "pasd_color/") for f in spec.files),
)
sys.exit(main(sys.argv[1:]))
"""


def test_an_out_of_date_registry_entry_fails_with_the_listing_and_fetches_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _STALE_ENTRY,
                "download",
                "pasd-color",
                "--quiet",
                "--models",
                str(models),
            ],
            cwd=ROOT,
            env={**os.environ, **cli_env(hub, models)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1, result.stderr
        assert (
            "yangtao9009/PASD has no folder pasd_color/checkpoint-180000; it holds pasd/, pasd_light/, "
            "pasd_light_color/, pasd_light_rrdb/, pasd_rrdb/ — the registry entry 'pasd-color' is out of "
            "date; please report it."
        ) in result.stderr
        assert "Traceback" not in result.stderr
        assert hub.fetched() == []  # not even SD1.5, which the entry needs first
    assert not models.exists() or not any(p.is_file() for p in models.rglob("*"))


def test_download_progress_survives_files_that_come_and_go(tmp_path: Path) -> None:
    """The hub client renames and removes its partial files while progress is read: never an error."""
    import threading

    from backend.service.downloads import Download

    folder = tmp_path / "models" / "pasd"
    folder.mkdir(parents=True)
    (folder / "kept.bin").write_bytes(b"k" * 1000)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            part = folder / f"blob.{i % 7}.incomplete"
            part.write_bytes(b"x" * 100)
            part.unlink()
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        download = Download("pasd", "running", 10_000, (folder, tmp_path / "absent"))
        seen = {download.bytes_done() for _ in range(3000)}
    finally:
        stop.set()
        worker.join()
    assert min(seen) >= 1000 and max(seen) <= 1100


def make_sdxl_repos(tmp_path: Path, tiny_sdxl: Path, own_scheduler: bool = False) -> dict[str, Path]:
    """PASD-SDXL's repository (``checkpoint-200000/`` with unet/, controlnet/, a scaler pickle and, if
    asked, a scheduler/ of its own), SDXL base's (with a UNet that must not be fetched) and the fp16-fix
    VAE's, tiny weights in the layouts."""
    hub = tmp_path / "hub"
    ckpt = hub / "PASD-SDXL" / "checkpoint-200000"
    for part in ("unet", "controlnet") + (("scheduler",) if own_scheduler else ()):
        shutil.copytree(tiny_sdxl / part, ckpt / part)
    (ckpt / "scaler.pt").write_bytes(SCALER)
    base = hub / "sdxl"
    for part in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler", "unet"):
        shutil.copytree(tiny_sdxl / part, base / part)
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    shutil.copytree(tiny_sdxl / "vae", hub / "vae-fp16")
    return {
        REGISTRY["pasd-sdxl"].repo: hub / "PASD-SDXL",
        REGISTRY["sdxl"].repo: base,
        REGISTRY["sdxl-vae-fp16"].repo: hub / "vae-fp16",
    }


def test_pasd_sdxl_downloads_with_its_base_and_restores(tmp_path: Path, tiny_sdxl: Path) -> None:
    """``download pasd-sdxl`` fetches exactly the registry's files of three repositories, writes a
    manifest naming the family and its SDXL base, and ``upscale`` then runs it through the engine."""
    models = tmp_path / "models"
    with FakeHub(make_sdxl_repos(tmp_path, tiny_sdxl)) as hub:
        result = cli(hub, "download", "pasd-sdxl", "--quiet", "--models", str(models))
        assert result.returncode == 0, result.stderr
        specs = [REGISTRY[i] for i in ("sdxl", "sdxl-vae-fp16", "pasd-sdxl")]
        assert sorted(hub.fetched()) == sorted(f"{s.repo}/{f}" for s in specs for f in s.files)
        assert not (models / "sdxl" / "unet").exists() and not list(models.rglob("scaler.pt"))
    manifest = read_manifest(models / "pasd-sdxl")
    assert (manifest.family, manifest.variant, manifest.tasks) == ("pasd-sdxl", "full", ("upscale",))
    root = models / "pasd-sdxl"
    assert manifest.resolve(root, "text_encoder_2") == (models / "sdxl" / "text_encoder_2").resolve()
    assert manifest.resolve(root, "scheduler") == (models / "sdxl" / "scheduler").resolve()
    assert manifest.resolve(root, "vae_fp16") == (models / "sdxl-vae-fp16").resolve()

    image = tmp_path / "in.npy"
    np.save(image, np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = tmp_path / "out.npy"
    run = run_backend(
        "upscale", str(image), "-o", str(out), "--model", "pasd-sdxl", "--models", str(models),
        "--steps", "2", "--process-size", "256", "--seed", "4", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert np.load(out).shape == (48, 64, 3)
    listed = run_backend("models", "--models", str(models))
    assert "pasd-sdxl" in listed.stdout and "no colour model exists for SDXL" in listed.stdout


def test_pasd_sdxl_takes_its_checkpoints_own_scheduler_where_the_hub_has_one(
    tmp_path: Path, tiny_sdxl: Path
) -> None:
    models = tmp_path / "models"
    with FakeHub(make_sdxl_repos(tmp_path, tiny_sdxl, own_scheduler=True)) as hub:
        result = cli(hub, "download", "pasd-sdxl", "--quiet", "--models", str(models))
        assert result.returncode == 0, result.stderr
        own = f"{REGISTRY['pasd-sdxl'].repo}/checkpoint-200000/scheduler/scheduler_config.json"
        assert own in hub.fetched()
    root = models / "pasd-sdxl"
    scheduler = read_manifest(root).resolve(root, "scheduler")
    assert scheduler == (root / "checkpoint-200000" / "scheduler").resolve()
    assert (scheduler / "scheduler_config.json").is_file()
