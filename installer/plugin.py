"""The plug-in folder in a GIMP profile and the small JSON beside it that points at the backend.

What is written comes from :func:`gimp_plugin.install_plugin_files` (the same code the tests use),
so a check can compare byte for byte: an up-to-date plug-in is left untouched, an outdated or damaged
one is rewritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from gimp_plugin import CLIENT_NAME, PLUGIN_FILES, client_source, install_plugin_files, plugin_source

from .platform_paths import GimpProfile
from .state import PLUGIN, InstallState, write_private

CONFIG_NAME = "diffusion_upscale.json"  # = diffusion_upscale_core.CONFIG_NAME
DEFAULT_URL = "http://127.0.0.1:7861"


@dataclass(frozen=True)
class PluginSettings:
    """What the plug-in reads (``load_backend_settings``): server address, the backend environment's
    interpreter (to start the server and the dialog), the model folder and the access token."""

    url: str = DEFAULT_URL
    python: str | None = None
    models: str | None = None
    token: str | None = None
    ca_file: str | None = None  # certificate of an https backend that has its own

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def expected_files() -> dict[str, bytes]:
    files = {name: (plugin_source() / name).read_bytes() for name in PLUGIN_FILES}
    files[CLIENT_NAME] = client_source().read_bytes()
    return files


def is_executable(path: Path) -> bool:
    return os.name == "nt" or bool(path.stat().st_mode & 0o111)


def plugin_problems(folder: Path, settings: PluginSettings) -> list[str]:
    """What differs from a fresh install; empty when the plug-in is up to date."""
    if not folder.is_dir():
        return ["not installed"]
    problems = []
    for name, content in expected_files().items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.read_bytes() != content:
            problems.append(f"{name} is outdated")
    main = folder / PLUGIN_FILES[0]
    if main.is_file() and not is_executable(main):
        problems.append(f"{PLUGIN_FILES[0]} is not executable")
    config = folder / CONFIG_NAME
    if not config.is_file():
        problems.append(f"{CONFIG_NAME} is missing")
    elif config.read_text(encoding="utf-8") != settings.to_json():
        problems.append(f"{CONFIG_NAME} has other settings")
    return problems


def install_plugin(profile: GimpProfile, settings: PluginSettings, state: InstallState) -> Path:
    """Write the plug-in folder and its JSON, recording what is new for ``--uninstall``."""
    folder = profile.plugin_dir
    state.make_dirs(profile.plug_ins, PLUGIN)
    if not folder.exists():
        state.record(folder, "tree", PLUGIN)  # ours entirely, with whatever GIMP caches in it
    elif not state.owns(folder):  # an older copy of the plug-in: its files become ours, the folder not
        for name in (*expected_files(), CONFIG_NAME):
            state.record(folder / name, "file", PLUGIN)
    install_plugin_files(profile.plug_ins)
    write_private(folder / CONFIG_NAME, settings.to_json())  # it may hold the access token
    return folder
