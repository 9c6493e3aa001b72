"""``python -m backend …``: see :mod:`backend.cli`."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
