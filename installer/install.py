"""One command from nothing to Filters > Enhance in GIMP 3: ``python3 installer/install.py [--help]``.

Standard library only (it runs before anything is installed); see :mod:`installer.cli`. As a
script it puts the checkout on ``sys.path`` first, so ``installer`` and ``gimp_plugin`` import.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from installer.cli import main

if __name__ == "__main__":
    sys.exit(main())
