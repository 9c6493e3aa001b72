"""``python -m gui``: see gui/app.py."""

from __future__ import annotations

import signal

from .app import main

# Ctrl+C in a terminal ends the dialog at once (Qt's event loop would otherwise swallow it); nothing is
# written before Apply finishes, and the backend drops a job nobody polls.
signal.signal(signal.SIGINT, signal.SIG_DFL)
raise SystemExit(main())
