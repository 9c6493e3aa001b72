"""One-command installer for Linux, Windows and macOS (standard library only): ``installer/install.py``.

Modules: ``platform_paths`` (per-user folders, GIMP 3 profiles), ``torch_choice`` (which PyTorch
build), ``environment`` (venv, pip, repair), ``plugin`` (plug-in folder and its JSON), ``models``
(downloads), ``state`` (the install record), ``steps`` (resumable steps), ``uninstall``, ``cli``.
"""
