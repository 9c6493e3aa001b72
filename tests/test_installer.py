"""The installer (installer/install.py) in a temporary home: a real venv and pip, real files, a fake
Hugging Face hub for model downloads, and a real GIMP 3 that must list the installed procedures."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from platformdirs import PlatformDirs

from backend import paths as backend_paths
from backend.image_io import read_image, write_image
from backend.models import store
from gimp_plugin import CLIENT_NAME, PLUGIN_FILES, plugin_source
from installer import environment
from installer.platform_paths import Platform, find_gimp_profiles
from installer.state import STATE_NAME, write_private
from installer.torch_choice import MachineFacts, TorchChoiceError, choose_torch, probe_machine

from .conftest import run_backend
from .fake_hub import FakeHub
from .gimp_harness import Gimp, GimpUnavailable
from .test_download import make_repos

sys.path.insert(0, str(plugin_source()))
import diffusion_upscale_core as core

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "installer" / "install.py"
# Here this is a CPU build from a local file; a looser requirement would pull GBs of CUDA wheels.
TORCH_SPEC = "torch==2.13.0"
# pip's own cache is not the installer's to install or remove: keep it outside the temporary home
# (and shared, so the real install reuses what earlier runs fetched).
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
# Likewise rustup's: pip runs `rustc --version` for its user agent, and a rustup shim on the PATH
# writes its settings under HOME.
RUSTUP_HOME = os.environ.get("RUSTUP_HOME") or str(Path.home() / ".rustup")
VENV_SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


# --------------------------------------------------------------------------- a temporary user
@dataclass
class Home:
    """A throw-away user: HOME, the XDG folders and Windows' APPDATA point into ``root``."""

    root: Path
    installer: Path = INSTALLER

    @property
    def env(self) -> dict[str, str]:
        dropped = ("GDU_", "XDG_", "HF_", "GIMP3_DIRECTORY", "APPDATA", "LOCALAPPDATA", "DIFFUSION_UPSCALE_")
        # The run's server secret stays: servers the tests start belong to this same user.
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) or k == "GDU_SECRET_FILE"}
        return {
            **env,
            "HOME": str(self.root),
            "XDG_DATA_HOME": str(self.root / "xdg-data"),
            "XDG_CONFIG_HOME": str(self.root / "xdg-config"),
            "XDG_CACHE_HOME": str(self.root / "xdg-cache"),
            "APPDATA": str(self.root / "AppData" / "Roaming"),
            "LOCALAPPDATA": str(self.root / "AppData" / "Local"),
            "PIP_CACHE_DIR": PIP_CACHE,
            "RUSTUP_HOME": RUSTUP_HOME,
            "OMP_NUM_THREADS": "1",
        }

    @property
    def data(self) -> Path:
        return self.root / "xdg-data" / "gimp-diffusion-upscale"

    @property
    def profile(self) -> Path:
        return self.root / "xdg-config" / "GIMP" / "3.0"

    @property
    def plugin(self) -> Path:
        return self.profile / "plug-ins" / "diffusion_upscale"

    @property
    def venv_python(self) -> Path:
        return self.data / "venv" / "bin" / "python"

    def command(self, *args: str) -> list[str]:
        # -S: no site-packages at all, so the installer can only use the standard library
        return [sys.executable, "-S", str(self.installer), *args]

    def install(self, *args: str, timeout: float = 900, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env={**self.env, **extra_env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def paths(self) -> set[str]:
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*")}

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every path with its size and modification time: equal snapshots mean nothing changed."""
        found = {}
        for path in self.root.rglob("*"):
            info = path.lstat()
            found[path.relative_to(self.root).as_posix()] = (info.st_size, info.st_mtime_ns)
        return found

    def state(self) -> dict:
        return json.loads((self.data / STATE_NAME).read_text())


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def check_plugin(home: Home, python: str, url: str = core.DEFAULT_URL, source: Path | None = None) -> None:
    """The plug-in is where GIMP 3 looks, its main file executable, its JSON what the plug-in reads."""
    source = source or plugin_source()
    assert sorted(p.name for p in home.plugin.iterdir()) == sorted(
        [*PLUGIN_FILES, CLIENT_NAME, core.CONFIG_NAME]
    )
    for name in PLUGIN_FILES:
        assert (home.plugin / name).read_bytes() == (source / name).read_bytes()
    assert os.access(home.plugin / "diffusion_upscale.py", os.X_OK)
    assert json.loads((home.plugin / core.CONFIG_NAME).read_text()) == {
        "url": url,
        "python": python,
        "models": None,
        "token": None,
        "ca_file": None,
    }
    settings = core.load_backend_settings(home.plugin, {})
    assert settings.python == python and settings.url == url
    # It may hold the access token, and the install state the remembered options: the user's only.
    for private in (home.plugin / core.CONFIG_NAME, home.data / STATE_NAME):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private


def test_private_files_are_never_readable_by_others_while_written(tmp_path: Path) -> None:
    """A reader polling the folder (as another user would) never sees a group/other-readable file."""
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for entry in os.scandir(tmp_path):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mode & 0o077:
                        seen.append(entry.name)

    old = os.umask(0o022)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        leftover = tmp_path / f".settings.json.{os.getpid()}.tmp"
        leftover.write_text("left by a crash")  # 0644: must not be reused
        for n in range(300):
            write_private(tmp_path / "settings.json", json.dumps({"token": f"t{n}"}))
    finally:
        stop.set()
        watcher.join()
        os.umask(old)
    assert set(seen) <= {leftover.name}, seen
    assert stat.S_IMODE((tmp_path / "settings.json").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- paths and choices
def test_data_folder_is_the_one_platformdirs_gives_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("GDU_DATA_DIR", "GDU_MODELS_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    dirs = PlatformDirs("gimp-diffusion-upscale", appauthor=False)
    assert Platform().user_data_dir() == Path(dirs.user_data_dir) == backend_paths.data_dir()
    assert Platform().models_dir() == backend_paths.models_dir()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert (
        Platform().user_data_dir() == Path(dirs.user_data_dir) == tmp_path / "xdg" / "gimp-diffusion-upscale"
    )
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # not absolute: ignored by both
    assert Platform().user_data_dir() == Path(dirs.user_data_dir)
    monkeypatch.setenv("GDU_DATA_DIR", str(tmp_path / "over"))
    monkeypatch.setenv("GDU_MODELS_DIR", str(tmp_path / "models"))
    assert Platform().user_data_dir() == backend_paths.data_dir() == tmp_path / "over"
    assert Platform().models_dir() == backend_paths.models_dir() == tmp_path / "models"
    # the other systems, computed here from their variables
    home = {"HOME": str(tmp_path), "USERPROFILE": str(tmp_path)}
    local = tmp_path / "AppData" / "Local"
    assert Platform("windows", {**home, "LOCALAPPDATA": str(local)}).user_data_dir() == (
        local / "gimp-diffusion-upscale"
    )
    assert Platform("darwin", home).user_data_dir() == (
        tmp_path / "Library" / "Application Support" / "gimp-diffusion-upscale"
    )
    assert Platform("windows", home).venv_python(Path("v")) == Path("v") / "Scripts" / "python.exe"


def test_gimp_profiles_on_each_system(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path), "USERPROFILE": str(tmp_path)}
    linux = Platform("linux", {**home, "XDG_CONFIG_HOME": str(tmp_path / "cfg")})

    def found(platform: Platform, explicit: Path | None = None) -> list[tuple[Path, str, bool]]:
        return [(p.path, p.kind, p.exists) for p in find_gimp_profiles(platform, explicit)]

    # nothing there yet: the profile GIMP 3 makes on its first start
    assert found(linux) == [(tmp_path / "cfg" / "GIMP" / "3.0", "native", False)]
    # Flatpak GIMP installed and started once (its app folder exists), no native GIMP profile
    flatpak = tmp_path / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP"
    flatpak.parent.mkdir(parents=True)
    assert found(linux) == [(flatpak / "3.0", "flatpak", False)]
    # existing profiles, all of them, newest version first
    (flatpak / "3.0").mkdir(parents=True)
    (tmp_path / "cfg" / "GIMP" / "3.0").mkdir(parents=True)
    (tmp_path / "cfg" / "GIMP" / "3.2").mkdir()
    (tmp_path / "cfg" / "GIMP" / "2.10").mkdir()
    assert found(linux) == [
        (tmp_path / "cfg" / "GIMP" / "3.2", "native", True),
        (tmp_path / "cfg" / "GIMP" / "3.0", "native", True),
        (flatpak / "3.0", "flatpak", True),
    ]
    # GIMP3_DIRECTORY wins, an explicit folder wins over everything
    custom = Platform("linux", {**home, "GIMP3_DIRECTORY": str(tmp_path / "custom")})
    assert found(custom) == [(tmp_path / "custom", "GIMP3_DIRECTORY", False)]
    assert found(custom, tmp_path / "cfg") == [(tmp_path / "cfg", "explicit", True)]
    appdata = tmp_path / "AppData" / "Roaming"
    assert found(Platform("windows", {**home, "APPDATA": str(appdata)})) == [
        (appdata / "GIMP" / "3.0", "native", False)
    ]
    mac = tmp_path / "Library" / "Application Support" / "GIMP" / "3.0"
    assert found(Platform("darwin", home)) == [(mac, "native", False)]


def test_pytorch_build_for_each_machine() -> None:
    linux_nvidia = MachineFacts("linux", "x86_64", nvidia_gpus=("NVIDIA RTX 4090, 24564 MiB",))
    plan = choose_torch(linux_nvidia)
    assert (plan.flavour, plan.pip_args(), plan.notes) == ("cuda", ["torch"], ())
    assert "RTX 4090" in plan.reason
    windows = choose_torch(MachineFacts("windows", "AMD64", nvidia_gpus=("RTX A4000, 16376 MiB",)))
    assert windows.flavour == "cuda" and "--torch-index-url" in windows.notes[0]
    given = choose_torch(linux_nvidia, index_url="file:///srv/wheels/cu128")
    assert given.pip_args() == ["torch", "--index-url", "file:///srv/wheels/cu128"] and not given.notes
    rocm = choose_torch(MachineFacts("linux", "x86_64", rocm=True, rocm_gpus=("gfx1100",)))
    assert rocm.flavour == "rocm" and "gfx1100" in rocm.reason and "ROCm" in rocm.notes[0]
    mac = choose_torch(MachineFacts("darwin", "arm64"))
    assert (mac.flavour, mac.notes) == ("mps", ())
    assert choose_torch(MachineFacts("darwin", "x86_64")).flavour == "cpu"
    cpu = choose_torch(MachineFacts("linux", "x86_64"), spec=TORCH_SPEC)
    assert (cpu.flavour, cpu.pip_args(), cpu.notes) == ("cpu", [TORCH_SPEC], ())
    assert "CPU-only" in choose_torch(MachineFacts("linux", "x86_64")).notes[0]
    assert choose_torch(linux_nvidia, "cpu").flavour == "cpu"  # the override
    impossible = (("linux", "x86_64", "mps"), ("darwin", "arm64", "cuda"), ("windows", "AMD64", "rocm"))
    for system, machine, flavour in impossible:
        with pytest.raises(TorchChoiceError):
            choose_torch(MachineFacts(system, machine), flavour)
    # this machine, asked for real: no GPU here
    assert choose_torch(probe_machine()).flavour == "cpu"


# --------------------------------------------------------------------------- with an existing environment
def test_install_twice_then_uninstall_leaves_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path)
    pristine = home.paths()
    out = ok(home.install("--backend-python", sys.executable))
    assert f"[2/2] GIMP plug-in: {home.plugin}: not installed" in out
    check_plugin(home, sys.executable)
    assert home.state()["settings"]["backend_python"] == sys.executable

    before = home.snapshot()
    again = ok(home.install())  # the options of the first run are remembered
    assert home.snapshot() == before
    assert again.count("already installed / up to date") == 2
    assert "Everything is installed and up to date." in again

    (home.plugin / "diffusion_upscale.py").chmod(0o644)  # broken: GIMP would skip it
    repaired = ok(home.install())
    assert "diffusion_upscale.py is not executable" in repaired
    check_plugin(home, sys.executable)

    removed = ok(home.install("--uninstall"))
    assert f"removed {home.plugin}" in removed
    assert home.paths() == pristine
    assert "Nothing to uninstall" in ok(home.install("--uninstall"))


@pytest.mark.parametrize(("free_mib", "model"), [(24_000, "pasd-sdxl"), (6_000, "pasd"), (None, "pasd")])
def test_the_installer_recommends_the_model_that_fits_the_gpu(
    tmp_path: Path, free_mib: int | None, model: str
) -> None:
    """With nvidia-smi reporting the free memory (a stand-in script on the PATH: the real driver's
    answer format), the installer names the model that fits, and why, before any download."""
    home = Home(tmp_path / "home")
    home.root.mkdir()
    path = os.environ["PATH"]
    if free_mib is not None:
        tools = tmp_path / "bin"
        tools.mkdir()
        smi = tools / "nvidia-smi"
        smi.write_text(
            '#!/bin/sh\ncase "$1" in\n'
            f"  --query-gpu=memory.free) echo {free_mib} ;;\n"
            "  *) echo 'NVIDIA Test GPU, 24564 MiB' ;;\nesac\n"
        )
        smi.chmod(0o755)
        path = f"{tools}{os.pathsep}{path}"
    out = ok(home.install("--dry-run", "--torch-spec", TORCH_SPEC, "--models", "pasd", PATH=path))
    line = next(x for x in out.splitlines() if "recommended model:" in x)
    assert line.split("recommended model:")[1].split()[0] == model
    if model == "pasd-sdxl":
        assert "This GPU has 23 GB: enough for PASD-SDXL" in line and "--models pasd-sdxl" in line
    elif free_mib:
        assert "PASD-SDXL needs about 12 GB" in line
    else:
        assert "No GPU was found" in line


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path)
    pristine = home.snapshot()
    out = ok(home.install("--dry-run", "--torch-spec", TORCH_SPEC, "--models", "pasd,color"))
    assert home.snapshot() == pristine
    assert f"would create a virtual environment in {home.data / 'venv'}" in out
    assert f"would run pip install {TORCH_SPEC}" in out
    assert f"would write {home.plugin}" in out
    assert "pasd-color" in out and "Total to download: about 11.70 GB" in out
    assert "Dry run: nothing was changed." in out
    # Accepted terms let SUPIR through, with its licence and its SDXL base in the plan.
    out = ok(
        home.install(
            "--dry-run", "--torch-spec", TORCH_SPEC, "--models", "supir-v0q", "--accept-licence", "supir"
        )
    )
    assert "supir-v0q" in out and "sdxl-base-file" in out and "non-commercial use only" in out
    assert home.snapshot() == pristine

    ok(home.install("--backend-python", sys.executable))
    installed = home.snapshot()
    out = ok(home.install("--uninstall", "--dry-run"))
    assert f"would remove {home.plugin}" in out and home.snapshot() == installed


def test_gimp3_directory_and_an_existing_profile_with_other_plugins(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    profile = tmp_path / "profile"  # a profile GIMP already uses, with a user's own plug-in
    (profile / "plug-ins" / "other").mkdir(parents=True)
    (profile / "plug-ins" / "other" / "other.py").write_text("# someone else's plug-in\n")
    (profile / "gimprc").write_text("# user settings\n")
    before = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}

    out = ok(home.install("--backend-python", sys.executable, "--url", "http://127.0.0.1:7999",
                          GIMP3_DIRECTORY=str(profile)))  # fmt: skip
    assert f"{profile} [GIMP3_DIRECTORY]" in out
    plugin = profile / "plug-ins" / "diffusion_upscale"
    assert os.access(plugin / "diffusion_upscale.py", os.X_OK)
    assert json.loads((plugin / core.CONFIG_NAME).read_text())["url"] == "http://127.0.0.1:7999"
    assert not home.profile.exists()

    (plugin / "__pycache__").mkdir()  # what GIMP's Python leaves when it runs the plug-in
    (plugin / "__pycache__" / "diffusion_upscale_core.cpython-313.pyc").write_bytes(b"cache")
    ok(home.install("--uninstall"))
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")} == before


def test_a_backend_only_machine_gets_no_plugin(tmp_path: Path) -> None:
    home = Home(tmp_path)
    out = ok(home.install("--backend-python", sys.executable, "--no-plugin"))
    assert "GIMP 3" not in out and "plug-in" not in out and not (home.root / "xdg-config").exists()
    assert home.state()["settings"]["plugin"] is False
    ok(home.install("--uninstall"))
    assert home.paths() == set()


def test_choices_that_cannot_work_fail_with_a_message(tmp_path: Path) -> None:
    home = Home(tmp_path)
    for args, message in (
        (("--torch", "mps"), "Apple MPS needs a Mac"),
        (("--models", "pasd,nonsense"), "Unknown model 'nonsense'"),
        (("--backend-python", str(tmp_path / "missing" / "python")), "does not run"),
        # SUPIR's non-commercial terms are shown and must be accepted before anything happens
        (("--models", "supir-v0q"), "NON-COMMERCIAL USE ONLY"),
        (("--models", "supir-v0f"), "--accept-licence supir"),
    ):
        done = home.install(*args)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    assert home.paths() == set()


def test_models_download_with_a_size_estimate_verify_repair_and_purge(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    pristine = home.paths()
    models = home.data / "models"
    with FakeHub(make_repos(tmp_path)) as hub:
        hub_env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
        out = ok(home.install("--backend-python", sys.executable, "--models", "pasd,color", **hub_env))
        estimate = out.index("Total to download: about 11.70 GB")
        assert "sd15" in out[:estimate] and "CreativeML OpenRAIL-M" in out[:estimate]
        assert out.index(f"verified: pasd, pasd-color in {models}") > estimate
        assert (models / "pasd" / "pasd_model.json").is_file() and (models / "sd15" / "vae").is_dir()
        # The colour model comes from the hub's pasd_light_color/ (there is no pasd_color/), never
        # with the scaler.pt pickle, and is what the backend finds for colorizing.
        pasd_files = {f.split("/", 2)[2] for f in hub.fetched("yangtao9009/PASD")}
        assert {f.split("/")[0] for f in pasd_files} == {"pasd", "pasd_light_color"}
        assert "pasd_light_color/scheduler/scheduler_config.json" in pasd_files
        assert not any("scaler.pt" in r for r in hub.requests)
        colour = store.resolve_model("pasd-color", models)
        assert colour.manifest.tasks == ("colorize",) and colour.manifest.variant == "light"
        assert colour.manifest.resolve(colour.root, "unet").is_relative_to(
            (models / "pasd-color" / "pasd_light_color").resolve()
        )
        assert {m.root.name: m.manifest.tasks for m in store.installed_models(models)} == {
            "pasd": ("upscale",),
            "pasd-color": ("colorize",),
        }
        # The installed colour model runs (v-prediction, its own zero-SNR scheduler).
        grey = tmp_path / "grey.png"  # outside the fake user's home, which must end up pristine
        write_image(grey, np.random.default_rng(0).integers(0, 256, (24, 32, 1), dtype=np.uint8))
        ran = run_backend(
            "colorize", str(grey), "-o", str(tmp_path / "colour.png"), "--steps", "2",
            "--process-size", "256", "--seed", "1", "--models", str(models), "--model", "pasd-color",
            OMP_NUM_THREADS="1",
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert read_image(tmp_path / "colour.png").shape == (24, 32, 3)

        requests = len(hub.requests)
        again = ok(home.install(**hub_env))
        assert "[3/3] Models: already installed / up to date" in again and len(hub.requests) == requests

        weights = models / "sd15" / "vae" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:64])  # a damaged file, same name
        repaired = ok(home.install(**hub_env))
        assert "damaged or incomplete: sd15" in repaired and "verified: pasd" in repaired

    kept = ok(home.install("--uninstall"))
    assert "kept the downloaded model" in kept and "--purge-models" in kept
    assert (models / "pasd").is_dir() and not home.plugin.exists()
    kept_trees = {Path(c["path"]) for c in home.state()["created"] if c["kind"] == "tree"}
    hub_cache = home.root / "xdg-cache" / "huggingface"  # what the hub client wrote for the download
    assert {models / "pasd", models / "pasd-color", models / "sd15"} <= kept_trees
    assert all(p.parent == models or p.is_relative_to(hub_cache) for p in kept_trees), kept_trees
    ok(home.install("--uninstall", "--purge-models"))
    assert home.paths() == pristine


# --------------------------------------------------------------------------- pip repair, real venv
def test_a_half_installed_package_is_found_and_reinstalled(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    environment.create_venv(venv)
    python = venv / "bin" / "python"
    environment.pip_install(python, ["iniconfig"], "Installing iniconfig")
    assert environment.broken_distributions(python) == []
    site = venv / VENV_SITE
    info = next(site.glob("iniconfig-*.dist-info"))
    # what a kill during `pip install` leaves: files written, pip's completion marker not yet
    (info / "INSTALLER").unlink()
    (site / "iniconfig" / "exceptions.py").unlink()
    assert [b.dist_info for b in environment.broken_distributions(python)] == [info]
    removed = environment.repair_interrupted(python, venv)
    assert [b.dist_info for b in removed] == [info] and not info.exists()
    assert not (site / "iniconfig" / "__init__.py").exists()
    environment.pip_install(python, ["iniconfig"], "Installing iniconfig")
    assert environment.run([python, "-c", "import iniconfig.exceptions"]).returncode == 0
    assert environment.broken_distributions(python) == []


# --------------------------------------------------------------------------- the real install
@dataclass
class RealInstall:
    home: Home
    release: Path
    pristine: set[str]
    killed_output: str
    killed_state: dict
    resumed: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealInstall]:
    """A real venv and pip install (PyTorch pinned to the local CPU build), killed while pip writes
    PyTorch into the new environment, then run again to completion. It runs from a copy of the
    checkout, like a downloaded release, so edits to the working tree meanwhile change nothing."""
    release = environment.copy_source(ROOT, tmp_path_factory.mktemp("release") / "gimp-diffusion-upscale")
    home = Home(tmp_path_factory.mktemp("real-home"), installer=release / "installer" / "install.py")
    pristine = home.paths()
    log = home.root.parent / "first-run.log"
    with log.open("w") as out:
        first = subprocess.Popen(home.command("--torch-spec", TORCH_SPEC), env=home.env, cwd=home.root,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        torch_files = home.data / "venv" / VENV_SITE / "torch"
        deadline = time.monotonic() + 600
        while not torch_files.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)  # the installer and its pip, like a closed terminal
        first.wait()
    killed_state = home.state()
    started = time.monotonic()
    resumed = home.install(timeout=1200)
    yield RealInstall(
        home, release, pristine, log.read_text(), killed_state, resumed, time.monotonic() - started
    )


def test_an_interrupted_install_resumes_and_completes(real: RealInstall) -> None:
    assert real.killed_state["steps"]["torch"]["status"] == "started", real.killed_output[-3000:]
    assert real.killed_state["steps"]["venv"]["status"] == "done"
    out = ok(real.resumed)
    assert "[1/4] Backend environment: already installed / up to date" in out
    assert "[2/4] PyTorch: the last run stopped during this step; resuming" in out
    assert "Installed." in out
    python = real.home.venv_python
    check = environment.run([python, "-I", "-c", "import torch, backend.engine; print(torch.__version__)"])
    assert check.returncode == 0 and check.last_line == "2.13.0+cpu", check.output[-3000:]
    assert environment.broken_distributions(python) == []
    assert all(s["status"] == "done" for s in real.home.state()["steps"].values())
    print(f"\nresumed real install: {real.seconds:.0f} s")


def test_the_plugin_is_where_gimp_looks_and_points_at_the_environment(real: RealInstall) -> None:
    check_plugin(
        real.home, str(real.home.venv_python), source=real.release / "gimp_plugin" / "diffusion_upscale"
    )


def test_a_second_real_run_changes_nothing(real: RealInstall) -> None:
    before = real.home.snapshot()
    started = time.monotonic()
    out = ok(real.home.install())
    assert real.home.snapshot() == before
    assert out.count("already installed / up to date") == 4 and "Everything is installed" in out
    print(f"\nsecond run: {time.monotonic() - started:.1f} s")


def test_doctor_in_the_installed_environment(
    real: RealInstall, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from .service_server import ServerProcess

    with ServerProcess(tiny_models["full"].parent, tmp_path) as server:
        done = subprocess.run(
            [str(real.home.venv_python), "-m", "backend.doctor", "--models", str(tiny_models["full"].parent),
             "--server", server.url],
            env=real.home.env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    out = ok(done)
    assert "FAIL" not in out
    for name in ("python", "pytorch", "models", "upscale", "colorize", "plug-in", "server", "self-test"):
        assert any(line.split()[:2] == [name, "OK"] for line in out.splitlines()), (name, out)
    assert str(real.home.plugin) in out


def test_uninstall_of_the_real_install_leaves_nothing(real: RealInstall) -> None:
    out = ok(real.home.install("--uninstall"))
    assert f"removed {real.home.data / 'venv'}" in out
    assert real.home.paths() == real.pristine


# --------------------------------------------------------------------------- in a real GIMP 3
@pytest.fixture(scope="module")
def gimp() -> Gimp:
    try:
        return Gimp.find()
    except GimpUnavailable as exc:  # CI must have GIMP 3: a missing GIMP fails, it never skips
        pytest.fail(f"GIMP 3 is not available: {exc}")


def test_gimp_lists_both_procedures_after_the_installer(gimp: Gimp) -> None:
    work = gimp.workdir()
    try:
        home = Home(work / "home")
        home.root.mkdir()
        profile = work / "gimp-profile"
        ok(home.install("--backend-python", sys.executable, GIMP3_DIRECTORY=str(profile)))
        assert os.access(profile / "plug-ins" / "diffusion_upscale" / "diffusion_upscale.py", os.X_OK)
        data = gimp.run_script(
            """
            pdb = Gimp.get_pdb()
            save({name: None if pdb.lookup_procedure(name) is None else
                  pdb.lookup_procedure(name).get_menu_paths()
                  for name in ('plug-in-diffusion-upscale', 'plug-in-diffusion-colorize')})
            """,
            work,
            {},
            profile=profile,
        )
        assert data["plug-in-diffusion-upscale"] == ["<Image>/Filters/Enhance"], data["_output"][-3000:]
        assert data["plug-in-diffusion-colorize"] == ["<Image>/Filters/Enhance"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
