"""The GIMP 3 plug-in (``diffusion_upscale/``, standard library + ``gi`` only) and how to lay it out.

GIMP loads a Python plug-in from a folder named like its main file, in one of its plug-in folders.
:func:`install_plugin_files` writes that folder: the plug-in, its GIMP-free core, and the backend's
stdlib client copied in as ``gdu_client.py`` (GIMP's Python cannot import the backend package).
The installer and the tests both use it, so what is tested is what users get.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

PLUGIN_NAME = "diffusion_upscale"
PLUGIN_FILES = ("diffusion_upscale.py", "diffusion_upscale_core.py")
CLIENT_NAME = "gdu_client.py"


def plugin_source() -> Path:
    return Path(__file__).resolve().parent / PLUGIN_NAME


def client_source() -> Path:
    spec = importlib.util.find_spec("backend.client")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("backend/client.py is not importable; install the project first")
    return Path(spec.origin)


def install_plugin_files(plug_ins_dir: str | os.PathLike[str]) -> Path:
    """Write ``plug_ins_dir/diffusion_upscale/`` (main file executable); returns that folder."""
    target = Path(plug_ins_dir) / PLUGIN_NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in PLUGIN_FILES:
        shutil.copyfile(plugin_source() / name, target / name)
    shutil.copyfile(client_source(), target / CLIENT_NAME)
    (target / PLUGIN_FILES[0]).chmod(0o755)
    return target
