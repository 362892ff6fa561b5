"""Checks that keep a build from silently doubling passages, indexing nothing, or replacing foreign files.

Passage ids must be unique within an index: a repeat (within the corpus, or of a row already indexed, as when
the same corpus is appended twice) would return the same passage twice for every query that finds it. Checking
takes a set of all ids in memory, the price of never doubling a hit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from piccolo_embed.errors import DuplicateIdError, EmptyCorpusError
from piccolo_embed.index.corpus import Passage, read_corpus
from piccolo_embed.index.store import ANN_NAME, CHECKPOINT, DATA_FILES, LOCK, MANIFEST, PROBES

SKIP_HINT = "pass --skip-duplicates (skip_duplicates=True) to index only the first passage with each id"


@dataclass
class IdFilter:
    """The ids indexed so far; refuses a repeated id, or skips and counts it when ``skip`` is set.

    Attributes:
        seen: Ids already in the index (committed or checkpointed rows) and earlier in the corpus.
        skip: Skip repeats instead of raising.
        skipped: Repeats skipped so far (carried over a resumed build).
        where: The corpus file, to name in errors (empty for passages that do not come from a file).
    """

    seen: set[str] = field(default_factory=set)
    skip: bool = False
    skipped: int = 0
    where: str = ""

    def keep(self, chunk: list[Passage], first_row: int) -> list[int]:
        """Positions in ``chunk`` to index; a passage without an id gets its row number, as the index stores it.

        Raises:
            DuplicateIdError: A repeated id when not skipping; names its line.
        """
        kept: list[int] = []
        for position, passage in enumerate(chunk):
            key = passage.id if passage.id is not None else str(first_row + len(kept))
            if key in self.seen:
                if not self.skip:
                    at = f"{self.where}:{passage.line}: " if self.where and passage.line else ""
                    raise DuplicateIdError(f"{at}{_repeat(key)}; {SKIP_HINT}")
                self.skipped += 1
                continue
            self.seen.add(key)
            kept.append(position)
        return kept


def _repeat(key: str) -> str:
    return f"id {key!r} is already in the index or earlier in the corpus"


def indexed_ids(texts: Path) -> set[str]:
    """The ids of every row in ``texts.jsonl`` (already cut back to the committed or checkpointed rows)."""
    with texts.open("rb") as handle:
        return {json.loads(line)["id"] for line in handle}


def check_corpus(path: Path, *, start_line: int, first_row: int, seen: set[str]) -> None:
    """Refuse a corpus file with repeated ids or no passages before anything is encoded (a parse, no encoding).

    Args:
        path: The corpus.
        start_line: Lines already indexed by an interrupted build (not checked again).
        first_row: Row of the first passage after ``start_line``.
        seen: Ids already in the index (not modified).

    Raises:
        EmptyCorpusError: A fresh build over a file with no passages.
        DuplicateIdError: Naming the first repeat and how many there are.
    """
    probe, first, total = IdFilter(set(seen), skip=True), None, 0
    for passage in read_corpus(path, start_line=start_line):
        if not probe.keep([passage], first_row + total - probe.skipped) and first is None:
            first = passage
        total += 1
    if total == 0 and start_line == 0:
        raise EmptyCorpusError(f"{path}: the corpus holds no passages (empty, or only blank lines)")
    if first is not None:
        key = first.id if first.id is not None else "<row number>"
        raise DuplicateIdError(
            f"{path}:{first.line}: {_repeat(key)} ({probe.skipped} passages repeat an id; nothing was indexed); "
            f"{SKIP_HINT}"
        )


def check_replaceable(directory: Path) -> None:
    """Refuse to overwrite a directory that holds anything an index does not write: it is replaced whole.

    Raises:
        FileExistsError: Naming up to five of the foreign entries.
    """
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory}: exists and is not an index directory")
    known = {MANIFEST, PROBES, CHECKPOINT, LOCK, *DATA_FILES}
    foreign = sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.name not in known
        and not ANN_NAME.fullmatch(entry.name)
        and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    )
    if foreign:
        raise FileExistsError(
            f"{directory}: --overwrite replaces the whole directory, and it holds files an index does not write "
            f"({', '.join(foreign[:5])}); move them or choose another directory"
        )
