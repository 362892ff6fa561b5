"""Input checks shared by every entry point that takes texts (API, CLI, server)."""

from __future__ import annotations

from collections.abc import Sequence


def validate_texts(texts: object) -> list[str]:
    """Return ``texts`` as a list of strings, or raise naming the first bad item.

    A bare string is refused rather than silently treated as one text, because iterating it would embed
    its characters one by one.

    Raises:
        TypeError: ``texts`` is not a sequence of strings; the message names the index and the type found.
    """
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a list of strings, not a single string; wrap it in a list")
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            kind = "None" if text is None else type(text).__name__
            raise TypeError(f"texts[{index}] must be a string, got {kind}")
    return list(texts)
