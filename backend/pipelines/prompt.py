"""Prompt assembly: user words, automatic words, quality words, joined with separators.

The reference appends the quality words to the user's prompt without a separator ("a cat" +
"clean, ..." gives "a catclean, ..."); here every part is a comma-separated phrase.
"""

from __future__ import annotations

import re


def _clean(part: str | None) -> str:
    text = re.sub(r"\s+", " ", part or "").strip()
    return text.strip(" ,;")


def join_prompt(*parts: str | None) -> str:
    """Join non-empty parts with ", ", dropping exact repeats of a phrase (case-insensitive)."""
    seen: set[str] = set()
    phrases: list[str] = []
    for part in parts:
        for phrase in (_clean(p) for p in _clean(part).split(",")):
            key = phrase.lower()
            if phrase and key not in seen:
                seen.add(key)
                phrases.append(phrase)
    return ", ".join(phrases)


def colorize_words(words: str) -> str:
    """Automatic captions of a grey image say "black and white"; the colour model should not hear it."""
    text = re.sub(
        r"\b(black and white|black-and-white|b&w|grayscale|greyscale|monochrome)\b",
        "color",
        words,
        flags=re.IGNORECASE,
    )
    return _clean(text)
