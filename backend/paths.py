"""Per-user folders (config, models, data, logs) through platformdirs, overridable for tests."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import PlatformDirs

APP_NAME = "gimp-diffusion-upscale"
_dirs = PlatformDirs(APP_NAME, appauthor=False)


def _override(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else Path(default)


def models_dir() -> Path:
    """Where downloaded and user-added model folders live (``GDU_MODELS_DIR`` overrides)."""
    return _override("GDU_MODELS_DIR", str(Path(_dirs.user_data_dir) / "models"))


def config_dir() -> Path:
    return _override("GDU_CONFIG_DIR", _dirs.user_config_dir)


def data_dir() -> Path:
    return _override("GDU_DATA_DIR", _dirs.user_data_dir)


def log_dir() -> Path:
    return _override("GDU_LOG_DIR", _dirs.user_log_dir)
