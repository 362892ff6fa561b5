"""Chunked indexes: long documents indexed as chunks and searched as documents (score = their best chunk).

A chunked build is an ordinary :func:`~piccolo_embed.index.build_index` run (same files, checkpoints, append and
crash-resume) whose rows are chunks. :class:`DocumentChunks` reads whole documents, cuts them with the model's
:class:`~piccolo_embed.chunking.Chunker` and encodes the chunks; every step ends at a document boundary, so the
checkpoint's last finished source line is always a whole document and a resumed build starts at the next one.
A chunk row's entry in ``texts.jsonl`` is ``{"id": "DOC#N", "text", "title"?, "doc": DOC, "chunk": N, "start",
"end"}``, the span being character offsets into the document's text. :class:`DocumentSearcher` ranks documents
by their best chunk; rows without ``"doc"`` (plain passages, e.g. appended without chunking) stand alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piccolo_embed.chunking import Chunker, TokenizedModel
from piccolo_embed.index.build import encode_chunk
from piccolo_embed.index.corpus import Passage, read_corpus
from piccolo_embed.index.search import Hit, Searcher
from piccolo_embed.index.store import IndexStore
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import Role

OVERFETCH = 4  # chunk rows fetched per wanted document, multiplied again until enough documents are found

ChunkerFactory = Callable[[Role], Chunker]


@dataclass(frozen=True)
class ChunkPassage(Passage):
    """One chunk of a document, as an index row.

    Attributes:
        doc_id: The document's id.
        chunk: Position among the document's chunks, from 0.
        start: First character of the chunk in the document's text.
        end: One past its last character.
    """

    doc_id: str = ""
    chunk: int = 0
    start: int = 0
    end: int = 0

    def entry_fields(self) -> dict[str, object]:
        """The document and the span, stored with the row."""
        return {"doc": self.doc_id, "chunk": self.chunk, "start": self.start, "end": self.end}


def model_chunkers(
    model: TokenizedModel, *, chunk_tokens: int | None = None, overlap_tokens: int | None = None
) -> ChunkerFactory:
    """Chunkers for ``model``, one per role the index encodes passages with (see :meth:`Chunker.for_model`)."""

    def for_role(role: Role) -> Chunker:
        return Chunker.for_model(model, role=role, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)

    return for_role


def document_chunks(chunker: Chunker, passage: Passage, ordinal: int) -> list[ChunkPassage]:
    """Cut one document into chunk rows; a title goes in front of every chunk, its tokens taken from the budget.

    The document id is the passage's id, else its line in the corpus file, else ``ordinal`` (iterable sources).

    Raises:
        ValueError: The title alone fills the chunk budget (names the document).
    """
    doc_id = passage.id if passage.id is not None else str(passage.line or ordinal)
    if passage.title:
        title_tokens = len(chunker.spanner([f"{passage.title} "])[0])
        budget = chunker.chunk_tokens - title_tokens
        if budget < 1:
            raise ValueError(
                f"document {doc_id}: its title takes {title_tokens} tokens, the whole chunk of {chunker.chunk_tokens}"
            )
        chunker = Chunker(chunker.spanner, chunk_tokens=budget, overlap_tokens=min(chunker.overlap_tokens, budget - 1))
    return [
        ChunkPassage(
            id=f"{doc_id}#{chunk.index}",
            text=chunk.text,
            title=passage.title,
            line=passage.line,
            doc_id=doc_id,
            chunk=chunk.index,
            start=chunk.start,
            end=chunk.end,
        )
        for chunk in chunker.chunk(passage.text, doc_id)
    ]


@dataclass(frozen=True)
class DocumentChunks:
    """A :class:`~piccolo_embed.index.build.ChunkSource` that indexes the chunks of each document.

    ``chunk_size`` counts chunk rows: a step closes after the document that reaches it, never inside one.

    Attributes:
        encoder: Encodes the chunks.
        chunkers: The chunker for the role passages are encoded with (see :func:`model_chunkers`).
    """

    encoder: Encoder
    chunkers: ChunkerFactory

    def __call__(
        self, source: str | Path | Iterable[Passage], *, start_line: int, role: Role, dim: int, chunk_size: int
    ) -> Iterator[tuple[list[Passage], np.ndarray]]:
        """Yield ``(chunk rows, vectors)`` in corpus order, resuming after source line ``start_line``."""
        chunker = self.chunkers(role)
        passages = read_corpus(source, start_line=start_line) if isinstance(source, str | Path) else iter(source)
        rows: list[Passage] = []
        for ordinal, passage in enumerate(passages):
            rows.extend(document_chunks(chunker, passage, ordinal))
            if len(rows) >= chunk_size:
                yield rows, encode_chunk(self.encoder, rows, role, dim)
                rows = []
        if rows:
            yield rows, encode_chunk(self.encoder, rows, role, dim)


@dataclass(frozen=True)
class DocumentHit(Hit):
    """A document found through its best chunk.

    Attributes:
        chunk: The best chunk's position in the document (``None`` for a row indexed without chunking).
        start: The best chunk's first character in the document's text (``None`` likewise).
        end: One past its last character (``None`` likewise).
    """

    chunk: int | None = None
    start: int | None = None
    end: int | None = None

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict; a chunk's hit adds ``chunk`` and ``span`` (``[start, end]``)."""
        if self.chunk is None:
            return super().to_json()
        return {**super().to_json(), "chunk": self.chunk, "span": [self.start, self.end]}


class DocumentSearcher:
    """Documents ranked by their best chunk, over an index built with chunking (plain rows rank as themselves).

    Why not a plain top-k: several chunks of one document would fill the k places. The top rows are fetched,
    grouped by document keeping the first (best) row, and fetched again, ``overfetch`` times deeper, while fewer
    than ``k`` documents came back. The result is exact: a document missing from the top rows scores below all
    of them, so below the ``k`` found.

    Args:
        searcher: The index and its encoder.
        overfetch: Rows fetched per wanted document at first (and the factor each retry deepens by).
    """

    def __init__(self, searcher: Searcher, *, overfetch: int = OVERFETCH) -> None:
        if overfetch < 2:
            raise ValueError(f"overfetch must be at least 2, got {overfetch}")
        self.searcher = searcher
        self.overfetch = overfetch

    @property
    def store(self) -> IndexStore:
        """The index."""
        return self.searcher.store

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[DocumentHit]]:
        """Encode ``queries`` and return the ``k`` best documents of each, best first."""
        queries = validate_texts(queries)
        if not queries:
            return []
        vectors = self.searcher.encoder.encode(queries, role=self.searcher.query_role)
        return self.search_vectors(np.asarray(vectors, dtype=np.float32), k)

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[DocumentHit]]:
        """The ``k`` best documents for each row of ``queries`` (``(nq, dim)`` float32), best first."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        results: list[list[DocumentHit]] = [[] for _ in range(len(queries))]
        pending, fetch = np.arange(len(queries)), min(k * self.overfetch, max(self.store.count, 1))
        while len(pending):
            scores, rows = self.searcher.search_vectors(queries[pending], fetch)
            again = []
            for query, score_row, row_ids in zip(pending, scores, rows, strict=True):
                hits = best_per_document(self.store, score_row, row_ids)
                if len(hits) >= k or fetch >= self.store.count:
                    results[query] = hits[:k]
                else:
                    again.append(query)
            pending, fetch = np.asarray(again, dtype=np.int64), min(fetch * self.overfetch, self.store.count)
        return results


def best_per_document(store: IndexStore, scores: np.ndarray, rows: np.ndarray) -> list[DocumentHit]:
    """One hit per document from rows ranked best first: its first (best) row; rows ``-1`` are skipped."""
    keep = rows >= 0
    seen: set[tuple[str, object]] = set()
    hits = []
    for entry, score, row in zip(store.entries(rows[keep].tolist()), scores[keep], rows[keep], strict=True):
        key = ("doc", entry["doc"]) if "doc" in entry else ("row", int(row))
        if key in seen:
            continue
        seen.add(key)
        hits.append(
            DocumentHit(
                id=entry.get("doc", entry["id"]),
                score=float(score),
                text=entry["text"],
                title=entry.get("title", ""),
                row=int(row),
                chunk=entry.get("chunk"),
                start=entry.get("start"),
                end=entry.get("end"),
            )
        )
    return hits
