"""GIMP 3 plug-in (standard library + gi only). Not built yet: see issue 5."""
