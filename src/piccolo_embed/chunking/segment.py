"""Where Chinese (and mixed) text may be cut: sentence ends, clause marks, and safe character boundaries.

Pure string functions, no tokenizer: the chunker asks these for candidate cut positions and counts tokens
itself. Positions are Python ``str`` indices (code points), so ``text[a:b]`` is always a valid piece.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

# Closing quotes and brackets stay with the sentence they close, and the whitespace after it too, so the next
# piece starts at its first visible character.
_CLOSERS = "”’」』）)》】〕〉\"'\\]"
# ASCII terminators only count before whitespace, the end, or a non-ASCII character: "3.14", "e.g.x", "a?b=1"
# and "12:30" stay whole.
_ASCII_BOUNDARY = r"(?=\s|$|[^\x00-\x7f])"
SENTENCE_END = re.compile(rf"(?:[。！？；…]+|[.!?;]+{_ASCII_BOUNDARY}|\r?\n)[{_CLOSERS}]*\s*")
CLAUSE_END = re.compile(rf"(?:[，、：]+|[,:]+{_ASCII_BOUNDARY})[{_CLOSERS}]*\s*")

_JOINERS = frozenset("\u200d\u200c\u2060")


def ends(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[int]:
    """Cut positions strictly inside ``(start, end)`` right after each match of ``pattern`` that is safe."""
    cuts = []
    for match in pattern.finditer(text, start, end):
        position = match.end()
        if start < position < end and is_safe_cut(text, position):
            cuts.append(position)
    return cuts


def pieces(start: int, end: int, cuts: list[int]) -> list[tuple[int, int]]:
    """The spans between ``start``, each of the sorted ``cuts`` and ``end``; together they tile ``[start, end)``."""
    bounds = [start, *cuts, end]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def is_safe_cut(text: str, position: int) -> bool:
    """Whether cutting ``text`` at ``position`` keeps characters and Latin words whole.

    Refused: every cut :func:`keeps_characters` refuses, and one between two letters or digits of a word of a
    space-separated script.
    """
    if not keeps_characters(text, position):
        return False
    return (
        position <= 0
        or position >= len(text)
        or not (is_word_char(text[position - 1]) and is_word_char(text[position]))
    )


def keeps_characters(text: str, position: int) -> bool:
    """Whether cutting ``text`` at ``position`` leaves every character whole.

    Refused: inside a UTF-16 surrogate pair (possible in text decoded with ``surrogatepass``), before a
    combining mark, variation selector or skin-tone modifier, and next to a joiner, so an accented letter or an
    emoji sequence stays in one piece.
    """
    if position <= 0 or position >= len(text):
        return True
    left, right = text[position - 1], text[position]
    if _is_high_surrogate(left) and _is_low_surrogate(right):
        return False
    return not (left in _JOINERS or right in _JOINERS or unicodedata.combining(right) or _is_variation_selector(right))


def is_word_char(char: str) -> bool:
    """A letter or digit of a script that separates words with spaces (Chinese and Japanese do not)."""
    return char.isalnum() and unicodedata.east_asian_width(char) not in ("W", "F")


def _is_high_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udbff"


def _is_low_surrogate(char: str) -> bool:
    return "\udc00" <= char <= "\udfff"


def _is_variation_selector(char: str) -> bool:
    """Variation selectors and emoji skin-tone modifiers: they change the character before them."""
    return "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef" or "\U0001f3fb" <= char <= "\U0001f3ff"
