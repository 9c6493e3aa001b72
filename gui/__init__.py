"""PySide6 dialog the GIMP plug-in opens (parameters, preview, progress). Not built yet: see issue 6."""
