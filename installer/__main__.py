"""``python -m installer``: the same as ``python3 installer/install.py``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
