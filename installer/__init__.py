"""One-command installer for Linux, Windows and macOS. Not built yet: see issue 7."""
