"""``python -m backend doctor`` on set-ups made by the real installer: a working one (plug-in, models,
a real server) and broken ones (missing Python, no models, server down, a damaged model file)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from backend.doctor import FAIL, OK, WARN, Check, format_table

from .conftest import run_backend
from .fake_hub import FakeHub
from .service_server import ServerProcess
from .test_download import make_repos
from .test_installer import Home, ok


def doctor(home: Home, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend.doctor", *args],
        env=home.env,
        cwd=cwd or home.root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows(out: str) -> dict[str, str]:
    """First-line status of each check in the table."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in (OK, WARN, FAIL):
            found.setdefault(parts[0], parts[1])
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checks_of(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in json.loads(done.stdout)}


def test_doctor_on_a_working_setup(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    models = tiny_models["full"].parent
    home = Home(tmp_path / "home")
    home.root.mkdir()
    with ServerProcess(models, tmp_path / "server") as server:
        # the installer writes the server's address and the model folder into the plug-in's JSON,
        # and the doctor finds everything from there: no options needed
        ok(home.install("--backend-python", sys.executable, "--url", server.url, "--models-dir", str(models)))
        done = doctor(home)
        checks = checks_of(doctor(home, "--json", "--no-self-test"))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL", "WHAT", "TO", "DO"]
    status = rows(out)
    for name in (
        "python",
        "pytorch",
        "faces",
        "models",
        "upscale",
        "colorize",
        "plug-in",
        "server",
        "self-test",
    ):
        assert status[name] == OK, (name, out)
    assert FAIL not in status.values() and str(home.plugin) in out
    assert out.rstrip().endswith("No problems; 1 warning(s).") and status["device"] == WARN
    assert checks["server"]["detail"].startswith(f"{server.url}: version ")
    assert checks["upscale"]["detail"] == "tiny-full (the default pasd is not installed)"
    assert checks["colorize"]["detail"] == "tiny-color (the default pasd-color is not installed)"
    assert checks["plug-in"]["detail"] == f"{home.plugin} (native profile)"
    assert "tiny-full (pasd)" in checks["models"]["detail"]  # each installed model with its family
    assert "tiny PASD, PASD-SDXL and SUPIR" in out  # the self-test runs a tiny model of each family


def test_doctor_on_a_broken_setup(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    empty = tmp_path / "no-models"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    ok(home.install("--backend-python", sys.executable, "--url", url, "--models-dir", str(empty)))
    config = home.plugin / "diffusion_upscale.json"
    gone = tmp_path / "deleted-venv" / "bin" / "python"
    config.write_text(json.dumps({**json.loads(config.read_text()), "python": str(gone)}))

    done = doctor(home, "--no-self-test")
    assert done.returncode == 1, done.stdout + done.stderr
    status = rows(done.stdout)
    assert status["plug-in"] == status["models"] == status["server"] == FAIL, done.stdout
    assert "self-test" not in status and "3 problem(s) to fix" in done.stdout
    checks = checks_of(doctor(home, "--no-self-test", "--json"))
    assert (
        checks["plug-in"]["detail"]
        == f"{home.plugin}: its JSON names the Python {gone}, which does not exist"
    )
    assert checks["plug-in"]["advice"] == "Re-run python3 installer/install.py to repair it."
    assert checks["models"]["detail"] == f"no models in {empty}"
    assert f"{sys.executable} -m backend download pasd pasd-color" in checks["models"]["advice"]
    assert checks["server"]["detail"] == f"not running at {url}, and the plug-in cannot start it"
    assert checks["server"]["advice"] == f"Start it: {sys.executable} -m backend serve"

    config.write_text("{broken")
    broken = doctor(home, "--no-self-test", "--json", "--server", url)
    checks = checks_of(broken)
    assert broken.returncode == 1 and checks["plug-in"]["status"] == FAIL
    assert "is not valid JSON" in checks["plug-in"]["detail"]


def test_doctor_without_any_install_says_where_it_looked(tmp_path: Path) -> None:
    home = Home(tmp_path)
    done = doctor(home, "--no-self-test", "--json", "--server", f"http://127.0.0.1:{free_port()}")
    checks = checks_of(done)
    assert done.returncode == 1
    assert checks["plug-in"]["status"] == FAIL
    assert checks["plug-in"]["detail"] == f"not installed in {home.profile / 'plug-ins'}"
    assert "installer/install.py" in checks["plug-in"]["advice"]
    # no plug-in and no server: the CLI still works, so a stopped server is only a warning
    assert checks["server"]["status"] == WARN and "-m backend serve" in checks["server"]["advice"]
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert checks["device"]["status"] == WARN and "no GPU" in checks["device"]["detail"]


def test_doctor_finds_a_damaged_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        hub_env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
        done = run_backend("download", "pasd", "--quiet", "--models", str(models),
                           HF_HOME=str(tmp_path / "hf"), **hub_env)  # fmt: skip
        assert done.returncode == 0, done.stderr
    home = Home(tmp_path / "home")
    home.root.mkdir()
    checks = {
        c["name"]: c
        for c in json.loads(doctor(home, "--no-self-test", "--json", "--models", str(models)).stdout)
    }
    assert checks["upscale"]["status"] == OK and checks["upscale"]["detail"] == "pasd (the default)"
    assert "model pasd" not in checks

    weights = models / "pasd" / "pasd" / "checkpoint-100000" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    checks = {
        c["name"]: c
        for c in json.loads(doctor(home, "--no-self-test", "--json", "--models", str(models)).stdout)
    }
    assert checks["model pasd"]["status"] == FAIL
    assert (
        "pasd/pasd/checkpoint-100000/unet/diffusion_pytorch_model.safetensors"
        in checks["model pasd"]["detail"]
    )
    assert f"-m backend download pasd --models {models}" in checks["model pasd"]["advice"]
    assert checks["colorize"]["status"] == WARN


def test_doctor_checks_supir_parts_key_by_key(tiny_supir: Path, tmp_path: Path) -> None:
    """An installed SUPIR's control model, connectors, denoise encoder and SDXL base are checked
    against the official layout from the files' headers; a file that does not fit is named with
    the part and the key, and the advice repairs it with the terms accepted."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_supir, models / "supir-v0q")
    home = Home(tmp_path / "home")
    home.root.mkdir()

    def check() -> dict[str, str]:
        out = doctor(home, "--no-self-test", "--json", "--models", str(models)).stdout
        return {c["name"]: c for c in json.loads(out)}["model supir-v0q"]

    assert check()["status"] == OK and "match the official layout" in check()["detail"]
    ckpt = models / "supir-v0q" / "SUPIR-tiny.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["model.diffusion_model.project_modules.7.attn.to_q.weight"]
    torch.save(state, ckpt)
    broken = check()
    assert broken["status"] == FAIL and "[connectors]" in broken["detail"]
    assert "project_modules.7.attn.to_q.weight" in broken["detail"]
    assert "--accept-licence supir" in broken["advice"]


def test_table_wraps_to_the_width_and_keeps_paths_whole() -> None:
    path = "/a/long/path/without/spaces" * 4
    checks = [
        Check("python", OK, "3.11.7 (/usr/bin/python3)"),
        Check("plug-in", FAIL, "a long detail " * 8 + path, "do this " * 12),
    ]
    table = format_table(checks, width=100)
    lines = table.splitlines()
    assert all(len(line) <= 100 for line in lines if path not in line), table
    assert path in table and table.split().count("this") == 12
    assert lines[-1] == "1 problem(s) to fix, 0 warning(s)."


def test_the_backend_cli_has_the_doctor() -> None:
    done = run_backend("doctor", "--help")
    assert done.returncode == 0 and "--gimp-profile" in done.stdout, done.stderr
