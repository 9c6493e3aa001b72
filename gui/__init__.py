"""PySide6 dialog the GIMP plug-in opens: set up a run, preview a crop, follow the run, apply.

``python -m gui --job FILE`` (the plug-in) or ``python -m gui IMAGE`` (a file); see ``gui/app.py``.
"""
