"""Hard-negative mining: retrieve for each query with the index code, then let the policy choose negatives.

Mining depends only on the :class:`~piccolo_embed.protocols.Encoder` protocol, through a
:class:`~piccolo_embed.index.Searcher`, so tests can plant exact scores with a fake encoder.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from piccolo_embed.data.records import OnError, ReadStats, TripletRecord, read_records, write_records
from piccolo_embed.index import BuildMode, IndexStore, Passage, Searcher, build_index
from piccolo_embed.index.build import DEFAULT_CHUNK_SIZE
from piccolo_embed.mining.policy import Candidate, NegativePolicy, Selection
from piccolo_embed.mining.stats import MiningStats
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import HelpfulEnum, TaskKind

log = logging.getLogger(__name__)


class NegativeMode(HelpfulEnum):
    """What happens to negatives a record already has."""

    REPLACE = "replace"  # output negatives are only the mined ones
    APPEND = "append"  # keep existing negatives first, then add mined ones (never duplicating them)


@dataclass(frozen=True)
class MiningConfig:
    """Options of a mining run.

    Attributes:
        policy: How negatives are chosen.
        kind: ``s2p`` or ``s2s`` (decides the roles).
        negative_mode: Replace or keep existing negatives.
        keep_empty: Write records that got no negative (FlagEmbedding cannot sample from an empty ``neg``,
            so by default they are dropped and counted).
        chunk_size: Corpus passages encoded per step while indexing.
        query_batch: Queries encoded and searched per step.
    """

    policy: NegativePolicy = field(default_factory=NegativePolicy)
    kind: TaskKind = TaskKind.S2P
    negative_mode: NegativeMode = NegativeMode.REPLACE
    keep_empty: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    query_batch: int = 1024


@dataclass(frozen=True)
class MinedRecord:
    """A record with its mined negatives and how they were chosen."""

    record: TripletRecord
    selection: Selection
    positive_score: float


def corpus_from_positives(records: Sequence[TripletRecord], rows: dict[str, int]) -> Iterator[Passage]:
    """Distinct positive texts (compared stripped) as passages; fills ``rows`` with text -> index row."""
    for record in records:
        for text in record.pos:
            key = text.strip()
            if key not in rows:
                rows[key] = len(rows)
                yield Passage(id=None, text=key)


def mine(
    records: Sequence[TripletRecord],
    searcher: Searcher,
    policy: NegativePolicy,
    *,
    negative_mode: NegativeMode = NegativeMode.REPLACE,
    positive_rows: Mapping[str, int] | None = None,
    query_batch: int = 1024,
) -> Iterator[MinedRecord]:
    """Mine negatives for each record, in input order.

    Args:
        records: Queries with positives (existing negatives are kept or replaced per ``negative_mode``).
        searcher: The corpus index and its encoder; queries use ``searcher.query_role``.
        policy: Window, filters and sampling.
        negative_mode: Replace or keep existing negatives.
        positive_rows: Stripped positive text -> index row, to reuse stored vectors instead of re-encoding
            positives that are in the corpus.
        query_batch: Queries per encode-and-search step (results do not depend on it).
    """
    positives = _PositiveVectors(searcher, positive_rows or {})
    for start in range(0, len(records), query_batch):
        batch = records[start : start + query_batch]
        queries = np.asarray(searcher.encoder.encode([r.query for r in batch], role=searcher.query_role))
        scores, rows = searcher.search_vectors(queries, policy.rank_end)
        texts = _texts_by_row(searcher.store, rows)
        positives.load(batch)
        for offset, record in enumerate(batch):
            positive_score = positives.weakest_score(queries[offset], record.pos)
            candidates = [
                Candidate(texts[int(row)], float(score), rank)
                for rank, (score, row) in enumerate(zip(scores[offset], rows[offset], strict=True))
                if row >= 0
            ]
            keep = record.neg if negative_mode is NegativeMode.APPEND else ()
            selection = policy.apply(
                candidates,
                query=record.query,
                positives=record.pos,
                positive_score=positive_score,
                query_index=start + offset,
                exclude=keep,
            )
            negatives = (*keep, *(c.text for c in selection.negatives))
            yield MinedRecord(TripletRecord(record.query, record.pos, negatives), selection, positive_score)


def _texts_by_row(store: IndexStore, rows: np.ndarray) -> dict[int, str]:
    wanted = sorted({int(row) for row in rows.ravel() if row >= 0})  # sorted: sequential reads
    return {row: entry["text"] for row, entry in zip(wanted, store.entries(wanted), strict=True)}


class _PositiveVectors:
    """Positive embeddings of one query batch: read from the index when the positive is in it, else encoded."""

    def __init__(self, searcher: Searcher, rows: Mapping[str, int]) -> None:
        self.searcher = searcher
        self.rows = rows
        self.vectors: dict[str, np.ndarray] = {}

    def load(self, records: Sequence[TripletRecord]) -> None:
        """Fetch every positive of ``records`` in two calls (one index read, one encode) instead of per query."""
        keys = list(dict.fromkeys(text.strip() for record in records for text in record.pos))
        indexed = [key for key in keys if key in self.rows]
        others = [key for key in keys if key not in self.rows]
        self.vectors = {}
        if indexed:
            self.vectors.update(zip(indexed, self.searcher.store.vectors([self.rows[k] for k in indexed]), strict=True))
        if others:
            role = self.searcher.store.manifest.passage_role
            self.vectors.update(zip(others, self.searcher.encoder.encode(others, role=role), strict=True))

    def weakest_score(self, query: np.ndarray, texts: Sequence[str]) -> float:
        """Lowest query-positive score: the false-negative limit must hold against every positive."""
        return min(float(np.dot(query, self.vectors[text.strip()])) for text in texts)


def mine_file(
    encoder: Encoder,
    input_path: str | Path,
    output_path: str | Path,
    *,
    corpus: str | Path | None = None,
    config: MiningConfig | None = None,
    on_error: OnError | str = OnError.RAISE,
) -> MiningStats:
    """Mine a FlagEmbedding JSONL file into another, with ``neg`` filled.

    Args:
        encoder: The model that scores queries against the corpus.
        input_path: Records ``{"query", "pos", "neg"?}``.
        output_path: Where the mined records go (written atomically).
        corpus: ``None`` to mine among all distinct positives of the input; a corpus JSONL to index it
            first; or a directory built by ``piccolo-embed index`` with the same model and roles.
        config: Policy and run options.
        on_error: ``skip`` to skip (and count) malformed input lines instead of failing.

    Returns:
        Statistics of the run (also logged).
    """
    config = config or MiningConfig()
    started = time.monotonic()
    read_stats = ReadStats()
    records = list(read_records(input_path, "triplet", on_error=on_error, stats=read_stats))
    if read_stats.skipped:
        log.warning(
            "skipped %d malformed lines of %s (first: %s)", read_stats.skipped, input_path, read_stats.errors[0]
        )
    stats = MiningStats(num_negatives=config.policy.num_negatives)
    with tempfile.TemporaryDirectory(prefix="piccolo-mine-") as scratch:
        store, positive_rows = _corpus_index(encoder, records, corpus, Path(scratch), config)
        searcher = Searcher(store, encoder, query_role=config.kind.query_role)
        log.info("mining %d queries against %d passages", len(records), store.count)
        mined = mine(
            records,
            searcher,
            config.policy,
            negative_mode=config.negative_mode,
            positive_rows=positive_rows,
            query_batch=config.query_batch,
        )
        stats.written = write_records(output_path, _keep(mined, stats, config.keep_empty))
    stats.seconds = time.monotonic() - started
    log.info("mining statistics (%.1f s):\n%s", stats.seconds, stats.format())
    return stats


def _keep(mined: Iterator[MinedRecord], stats: MiningStats, keep_empty: bool) -> Iterator[TripletRecord]:
    for item in mined:
        stats.add(item.selection, item.positive_score)
        if item.record.neg or keep_empty:
            yield item.record


def _corpus_index(
    encoder: Encoder,
    records: Sequence[TripletRecord],
    corpus: str | Path | None,
    scratch: Path,
    config: MiningConfig,
) -> tuple[IndexStore, dict[str, int]]:
    """The index to mine in, and where each positive sits in it (so its stored vector is reused)."""
    role = config.kind.passage_role
    if corpus is not None and Path(corpus).is_dir():
        store = IndexStore.open(corpus)
        if store.manifest.passage_role is not role:
            raise ValueError(
                f"{corpus}: passages were encoded as {store.manifest.passage_role.value}, "
                f"but {config.kind.value} mining needs {role.value}"
            )
        return store, positive_rows_in(store, records)
    rows: dict[str, int] = {}
    source = corpus if corpus is not None else corpus_from_positives(records, rows)
    store = build_index(
        encoder, source, scratch / "index", mode=BuildMode.OVERWRITE, chunk_size=config.chunk_size, passage_role=role
    )
    return store, rows if corpus is None else positive_rows_in(store, records)


def positive_rows_in(store: IndexStore, records: Sequence[TripletRecord]) -> dict[str, int]:
    """Rows of an index whose passage is exactly a positive (stripped) and has no title.

    A titled passage was encoded as ``title text``, so its vector is not the positive's. One streaming pass
    over the index's texts; memory holds only the positives.
    """
    wanted = {text.strip() for record in records for text in record.pos}
    rows: dict[str, int] = {}
    for row, entry in enumerate(store.iter_entries()):
        key = entry["text"].strip()
        if key in wanted and not entry.get("title") and key not in rows:
            rows[key] = row
    return rows
