"""Reading UTF-8 input files so that a bad byte is reported with its file, line and column.

Python's text mode decodes in blocks, so a ``UnicodeDecodeError`` raised while iterating lines carries an offset
into a block, not a line; these helpers decode line by line (or locate the offset in the whole file) instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from piccolo_embed.errors import EncodingError


def read_utf8(path: Path) -> str:
    """The whole file as text.

    Raises:
        EncodingError: A byte sequence is not UTF-8.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise EncodingError(path, line, column, err.reason) from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of ``path``, streamed (line endings kept).

    Raises:
        EncodingError: A line is not UTF-8.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise EncodingError(path, number, err.start + 1, err.reason) from None
