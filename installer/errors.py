"""The one error the installer reports to users: its message says what failed and what to do."""

from __future__ import annotations


class InstallError(RuntimeError):
    """A step cannot be done; the installer prints the message and exits with code 1."""
