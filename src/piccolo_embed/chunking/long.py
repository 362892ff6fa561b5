"""Embed documents longer than the model reads: truncate (as before), mean of chunk vectors, or every chunk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from piccolo_embed.chunking.chunker import Chunk, Chunker
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.types import HelpfulEnum, Role

if TYPE_CHECKING:
    from piccolo_embed.protocols import Encoder


class LongMode(HelpfulEnum):
    """How a document longer than the role's max length becomes vectors."""

    TRUNCATE = "truncate"  # one vector of the first max-length tokens (what every path did before chunking)
    MEAN = "mean"  # one vector: the L2-normalised mean of the document's chunk vectors
    CHUNKS = "chunks"  # one vector per chunk, each with its character span


@dataclass(frozen=True)
class LongEmbeddings:
    """The rows :func:`embed_long` produced.

    Attributes:
        vectors: float32 ``(rows, dim)``, each row of unit length.
        documents: int64 ``(rows,)``: the index, in the input, of the document each row belongs to. With
            ``truncate`` and ``mean`` it is ``0 .. n-1`` (one row per document).
        chunks: With ``chunks``, the :class:`Chunk` (id, position, span, text) of each row; else ``None``.
    """

    vectors: np.ndarray
    documents: np.ndarray
    chunks: tuple[Chunk, ...] | None = None


def embed_long(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    mode: LongMode | str = LongMode.MEAN,
    chunker: Chunker | None = None,
    role: Role | str = Role.PASSAGE,
    doc_ids: Sequence[str] | None = None,
) -> LongEmbeddings:
    """Embed ``texts`` of any length with ``encoder`` for ``role``.

    Args:
        encoder: Anything with ``encode(texts, *, role)``; an :class:`~piccolo_embed.Embedder` also supplies the
            default chunker.
        texts: The documents.
        mode: ``truncate``, ``mean`` or ``chunks`` (see :class:`LongMode`).
        chunker: How to cut documents; default ``Chunker.for_model(encoder, role=role)`` (chunks the role reads
            whole). Unused with ``truncate``.
        role: The role every text (or chunk) is embedded with.
        doc_ids: Ids the chunks carry (default ``"0"``, ``"1"``, ...).

    Raises:
        ValueError: ``mode`` or ``role`` is unknown (the message lists the choices), or the encoder cannot
            supply a chunker and none was given.
    """
    mode, role = LongMode.parse(mode), Role.coerce(role)
    texts = validate_texts(texts)
    if mode is LongMode.TRUNCATE:
        vectors = np.asarray(encoder.encode(texts, role=role), dtype=np.float32)
        return LongEmbeddings(vectors, np.arange(len(texts), dtype=np.int64))
    chunker = chunker or _default_chunker(encoder, role)
    per_document = chunker.chunk_documents(texts, doc_ids)
    chunks = [chunk for document in per_document for chunk in document]
    documents = np.repeat(np.arange(len(texts), dtype=np.int64), [len(document) for document in per_document])
    vectors = np.asarray(encoder.encode([chunk.text for chunk in chunks], role=role), dtype=np.float32)
    if mode is LongMode.CHUNKS:
        return LongEmbeddings(vectors, documents, tuple(chunks))
    return LongEmbeddings(mean_rows(vectors, documents, len(texts)), np.arange(len(texts), dtype=np.int64))


def mean_rows(vectors: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """The L2-normalised mean of the rows of each group (``groups[i]`` is row ``i``'s group, in ``0 .. n-1``).

    Returns:
        float32 ``(n_groups, dim)``; a group without rows, or whose rows cancel out, gives a zero row.
    """
    sums = np.zeros((n_groups, vectors.shape[1]), dtype=np.float64)  # (n_groups, dim)
    np.add.at(sums, groups, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)  # (n_groups, 1); the mean's count cancels out here
    return (sums / np.where(norms > 1e-12, norms, 1.0)).astype(np.float32)


def _default_chunker(encoder: Encoder, role: Role) -> Chunker:
    if not (hasattr(encoder, "tokenizer") and hasattr(encoder, "roles")):
        raise ValueError(
            f"{type(encoder).__name__} has no tokenizer and roles to chunk with; pass chunker=Chunker(...)"
        )
    return Chunker.for_model(encoder, role=role)
