"""Training and mining records in FlagEmbedding's JSONL format, validated on load.

Every bad line either fails with ``file:line: field: reason`` or, when the caller asks for it explicitly,
is skipped and counted; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from piccolo_embed.atomic import staged_file
from piccolo_embed.errors import RecordError
from piccolo_embed.types import HelpfulEnum


class RecordKind(HelpfulEnum):
    """Shapes of training records."""

    TRIPLET = "triplet"  # {"query": str, "pos": [str, ...], "neg": [str, ...]}
    SCORED = "scored"  # {"sentence1": str, "sentence2": str, "score": float}
    # Classification data, {"query", "pos": same label, "neg": other labels (non-empty), "label"?}: another record
    # in a batch may share the label, so these train against their own negatives only (piccolo2's label contrast).
    LABELLED = "labelled"

    @property
    def has_triplet_columns(self) -> bool:
        """Whether records are query/pos/neg (triplet and labelled) rather than scored pairs."""
        return self is not RecordKind.SCORED


class OnError(HelpfulEnum):
    """What to do with a malformed line."""

    RAISE = "raise"
    SKIP = "skip"


@dataclass(frozen=True)
class TripletRecord:
    """A query with positives and (possibly no) hard negatives."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """FlagEmbedding-format dict."""
        return {"query": self.query, "pos": list(self.pos), "neg": list(self.neg)}


@dataclass(frozen=True)
class ScoredPair:
    """Two sentences and a similarity score (CoSENT data)."""

    sentence1: str
    sentence2: str
    score: float

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {"sentence1": self.sentence1, "sentence2": self.sentence2, "score": self.score}


Record = TripletRecord | ScoredPair


@dataclass
class ReadStats:
    """Counts kept while reading a file, for the log."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def _text(obj: dict, name: str, path: Path, line: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise RecordError(path, line, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(path, line, name, "empty text")
    return value


def _texts(obj: dict, name: str, path: Path, line: int, *, allow_empty: bool) -> tuple[str, ...]:
    value = obj.get(name, [] if allow_empty else None)
    if not isinstance(value, list):
        raise RecordError(path, line, name, f"expected a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise RecordError(path, line, name, "must not be empty")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise RecordError(path, line, f"{name}[{index}]", "expected a non-empty string")
    return tuple(value)


def parse_record(obj: object, kind: RecordKind, path: Path, line: int) -> Record:
    """Validate one decoded JSON value as ``kind``."""
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    if kind.has_triplet_columns:
        labelled = kind is RecordKind.LABELLED
        if labelled and "label" in obj and (not isinstance(obj["label"], str | int) or isinstance(obj["label"], bool)):
            raise RecordError(path, line, "label", f"expected a string or integer, got {obj['label']!r}")
        return TripletRecord(
            query=_text(obj, "query", path, line),
            pos=_texts(obj, "pos", path, line, allow_empty=False),
            neg=_texts(obj, "neg", path, line, allow_empty=not labelled),
        )
    score = obj.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise RecordError(path, line, "score", f"expected a finite number, got {score!r}")
    return ScoredPair(_text(obj, "sentence1", path, line), _text(obj, "sentence2", path, line), float(score))


def read_records(
    path: str | Path,
    kind: RecordKind | str,
    *,
    on_error: OnError | str = OnError.RAISE,
    stats: ReadStats | None = None,
) -> Iterator[Record]:
    """Stream validated records from a JSONL file (blank lines are allowed and ignored).

    Raises:
        RecordError: On the first bad line when ``on_error`` is ``raise``.
    """
    path, kind, on_error = Path(path), RecordKind.parse(kind), OnError.parse(on_error)
    stats = stats if stats is not None else ReadStats()
    with path.open("rb") as handle:  # bytes, decoded per line, so a bad byte is reported at its own line
        for line_no, data in enumerate(handle, start=1):
            if not data.strip():
                continue
            try:
                try:
                    obj = json.loads(_decode(data, path, line_no))
                except json.JSONDecodeError as err:
                    raise RecordError(path, line_no, "<json>", f"invalid JSON ({err.msg})") from err
                record = parse_record(obj, kind, path, line_no)
            except RecordError as err:
                if on_error is OnError.RAISE:
                    raise
                stats.skipped += 1
                stats.errors.append(str(err))
                continue
            stats.read += 1
            yield record


def _decode(data: bytes, path: Path, line_no: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(path, line_no, "<utf-8>", f"not valid UTF-8 (byte {err.start + 1} of the line)") from None


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records as JSONL atomically (temporary file, then rename); return how many were written."""
    count = 0
    with staged_file(Path(path)) as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count
