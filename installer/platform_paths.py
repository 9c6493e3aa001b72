"""Per-user folders and GIMP 3 profile folders on Linux, Windows and macOS, in the standard library only.

The installer runs before platformdirs is installed, so it computes the backend's per-user data folder
itself, the way ``platformdirs.PlatformDirs("gimp-diffusion-upscale", appauthor=False)`` does (a test
checks the two agree). The doctor reuses the GIMP profile discovery, so both look in the same places.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "gimp-diffusion-upscale"
FLATPAK_ID = "org.gimp.GIMP"
GIMP_DEFAULT_VERSION = "3.0"
PLUGIN_DIR_NAME = "diffusion_upscale"  # = gimp_plugin.PLUGIN_NAME; GIMP needs folder name == main file


def current_system() -> str:
    """``linux``, ``windows`` or ``darwin`` (other Unixes are treated like Linux)."""
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "darwin"
    return "linux"


@dataclass(frozen=True)
class Platform:
    """The facts the paths depend on, so every platform's answer can be computed (and tested) anywhere."""

    system: str = field(default_factory=current_system)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def home(self) -> Path:
        if self.system == "windows":
            value = self.environ.get("USERPROFILE") or self.environ.get("HOME")
        else:
            value = self.environ.get("HOME")
        return Path(value) if value else Path.home()

    def _env_path(self, name: str) -> Path | None:
        value = self.environ.get(name, "")
        return Path(value).expanduser() if value else None

    def _xdg(self, name: str) -> Path | None:
        """An XDG variable counts only when it is an absolute path (as in the XDG spec and platformdirs)."""
        value = self.environ.get(name, "")
        return Path(value) if value.startswith("/") else None

    # ------------------------------------------------------------------ the backend's folders
    def user_data_dir(self) -> Path:
        """The per-user data folder, like ``backend.paths.data_dir`` (``GDU_DATA_DIR`` overrides)."""
        override = self._env_path("GDU_DATA_DIR")
        if override:
            return override
        if self.system == "windows":
            local = self.environ.get("LOCALAPPDATA")
            base = Path(local) if local else self.home / "AppData" / "Local"
        else:
            base = self._xdg("XDG_DATA_HOME") or (
                self.home / "Library" / "Application Support"
                if self.system == "darwin"
                else self.home / ".local" / "share"
            )
        return base / APP_NAME

    def models_dir(self) -> Path:
        """Where models go (``GDU_MODELS_DIR`` overrides), like ``backend.paths.models_dir``."""
        return self._env_path("GDU_MODELS_DIR") or self.user_data_dir() / "models"

    def venv_python(self, venv: Path) -> Path:
        if self.system == "windows":
            return venv / "Scripts" / "python.exe"
        return venv / "bin" / "python"

    # ------------------------------------------------------------------ GIMP
    def gimp_config_bases(self) -> list[tuple[str, Path]]:
        """``(kind, folder holding GIMP/<version>/)`` for each way GIMP 3 may be installed here."""
        if self.system == "windows":
            appdata = self.environ.get("APPDATA")
            return [("native", (Path(appdata) if appdata else self.home / "AppData" / "Roaming") / "GIMP")]
        if self.system == "darwin":
            return [("native", self.home / "Library" / "Application Support" / "GIMP")]
        config = self._xdg("XDG_CONFIG_HOME") or self.home / ".config"
        return [
            ("native", config / "GIMP"),
            ("flatpak", self.home / ".var" / "app" / FLATPAK_ID / "config" / "GIMP"),
            ("snap", self.home / "snap" / "gimp" / "current" / ".config" / "GIMP"),
        ]


@dataclass(frozen=True)
class GimpProfile:
    """One GIMP 3 profile folder (what GIMP calls its user directory) and how it was found."""

    path: Path
    kind: str  # explicit | GIMP3_DIRECTORY | native | flatpak | snap
    exists: bool

    @property
    def plug_ins(self) -> Path:
        return self.path / "plug-ins"

    @property
    def plugin_dir(self) -> Path:
        return self.plug_ins / PLUGIN_DIR_NAME


def _versions(base: Path) -> list[Path]:
    """Existing ``3.x`` profile folders under ``base``, newest first."""
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        major, _, minor = child.name.partition(".")
        if child.is_dir() and major == "3" and minor.isdigit():
            found.append((int(minor), child))
    return [path for _, path in sorted(found, reverse=True)]


def find_gimp_profiles(platform: Platform | None = None, explicit: Path | None = None) -> list[GimpProfile]:
    """Where GIMP 3 looks for plug-ins: the given folder, else ``GIMP3_DIRECTORY``, else every existing
    3.x profile (native, Flatpak, Snap), else the one a first start of GIMP 3 would create."""
    platform = platform or Platform()
    if explicit is not None:
        path = explicit.expanduser()
        return [GimpProfile(path, "explicit", path.is_dir())]
    override = platform.environ.get("GIMP3_DIRECTORY")
    if override:
        path = Path(override).expanduser()
        return [GimpProfile(path, "GIMP3_DIRECTORY", path.is_dir())]
    bases = platform.gimp_config_bases()
    existing = [GimpProfile(p, kind, True) for kind, base in bases for p in _versions(base)]
    if existing:
        return existing
    # No profile yet (GIMP never started): prefer a sandboxed GIMP whose app folder exists.
    for kind, base in bases[1:]:
        app_root = base.parents[1] if kind == "flatpak" else base.parents[2]
        if app_root.is_dir():
            return [GimpProfile(base / GIMP_DEFAULT_VERSION, kind, False)]
    kind, base = bases[0]
    return [GimpProfile(base / GIMP_DEFAULT_VERSION, kind, False)]
