"""Streaming reader for passage corpora in JSONL (BEIR ``{"_id", "title", "text"}`` or plain ``{"text"}``).

The reader yields one passage at a time and never holds the file, so an index can be built over a corpus
larger than memory. Bad lines fail with ``file:line: field: reason`` (the same :class:`RecordError` that
training records use) instead of being dropped. Ids are checked for uniqueness by the build (guards.py),
not here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from piccolo_embed.data.records import RecordError
from piccolo_embed.textfiles import utf8_lines

ID_FIELDS = ("_id", "id")


@dataclass(frozen=True)
class Passage:
    """One corpus entry.

    Attributes:
        id: The corpus id; ``None`` asks the index to use the passage's row number.
        text: The passage body.
        title: Optional title (BEIR); it is encoded in front of the text, as MTEB does for retrieval.
        line: 1-based line in the source file (0 for passages that do not come from a file); resuming an
            interrupted build skips lines up to the last finished chunk.
    """

    id: str | None
    text: str
    title: str = ""
    line: int = 0

    @property
    def embed_text(self) -> str:
        """What the encoder sees: ``title text`` when there is a title, else the text."""
        return f"{self.title} {self.text}" if self.title else self.text

    def entry_fields(self) -> dict[str, object]:
        """Fields the index stores with this row besides id, text and title (a chunk adds its document and span)."""
        return {}


def parse_passage(obj: object, path: str | Path, line: int) -> Passage:
    """Validate one decoded JSON value as a corpus entry.

    Raises:
        RecordError: Naming the file, the line and the offending field.
    """
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise RecordError(path, line, "text", f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise RecordError(path, line, "text", "empty text")
    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise RecordError(path, line, "title", f"expected a string, got {type(title).__name__}")
    return Passage(id=_passage_id(obj, path, line), text=text.strip(), title=title.strip(), line=line)


def _passage_id(obj: dict, path: str | Path, line: int) -> str | None:
    for name in ID_FIELDS:
        if name not in obj:
            continue
        value = obj[name]
        # Integer ids are common in converted datasets; booleans are ints to Python but never ids.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RecordError(path, line, name, f"expected a string, got {type(value).__name__}")
        value = str(value).strip()
        if not value:
            raise RecordError(path, line, name, "empty id")
        return value
    return None


def read_corpus(path: str | Path, *, start_line: int = 0) -> Iterator[Passage]:
    """Stream validated passages from a JSONL corpus; blank lines are ignored.

    Args:
        path: The corpus file.
        start_line: Skip lines up to and including this 1-based line number without parsing them (used to
            resume after the last finished chunk; those lines were validated by the interrupted run).

    Raises:
        RecordError: On the first malformed line.
        EncodingError: On the first line that is not UTF-8.
    """
    path = Path(path)
    for line_no, raw in utf8_lines(path):
        if line_no <= start_line or not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RecordError(path, line_no, "<json>", f"invalid JSON ({err.msg})") from err
        yield parse_passage(obj, path, line_no)
