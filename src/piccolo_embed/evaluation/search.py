"""Exact nearest-neighbour search by cosine similarity, over a corpus that arrives in chunks.

Only one corpus chunk and one ``query_block x chunk`` score matrix are alive at a time, plus the running
top-k of every query, so memory stays bounded however large the corpus is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from piccolo_embed.evaluation.metrics import unit_rows


@dataclass(frozen=True, eq=False)
class TopK:
    """Best corpus rows per query, best first.

    Attributes:
        scores: ``(n_queries, k)`` cosine similarities.
        indices: ``(n_queries, k)`` corpus row numbers.
    """

    scores: np.ndarray
    indices: np.ndarray


def exact_top_k(queries: np.ndarray, corpus_chunks: Iterable[np.ndarray], k: int, *, query_block: int = 1024) -> TopK:
    """Top ``k`` corpus rows per query by cosine similarity, exact (every pair is scored).

    Args:
        queries: ``(n_queries, dim)`` query embeddings.
        corpus_chunks: Consecutive ``(chunk, dim)`` blocks of the corpus; row numbers count across chunks.
        k: How many to keep per query; fewer if the corpus is smaller.
        query_block: Queries scored at once, bounding the score matrix at ``query_block x chunk``.
    """
    q = unit_rows(queries)  # (Q, d)
    best_scores = np.full((len(q), k), -np.inf)  # (Q, k)
    best_indices = np.full((len(q), k), -1, dtype=np.int64)  # (Q, k)
    offset = 0
    for chunk in corpus_chunks:
        c = unit_rows(chunk)  # (C, d)
        ids = np.arange(offset, offset + len(c))  # (C,)
        for start in range(0, len(q), query_block):
            rows = slice(start, start + query_block)
            scores = np.concatenate([best_scores[rows], q[rows] @ c.T], axis=1)  # (B, k + C)
            candidates = np.concatenate([best_indices[rows], np.broadcast_to(ids, (len(scores), len(ids)))], axis=1)
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k), unordered
            best_scores[rows] = np.take_along_axis(scores, keep, axis=1)
            best_indices[rows] = np.take_along_axis(candidates, keep, axis=1)
        offset += len(c)
    order = np.argsort(-best_scores, axis=1, kind="stable")  # (Q, k), best first
    width = min(k, offset)
    return TopK(
        scores=np.take_along_axis(best_scores, order, axis=1)[:, :width],
        indices=np.take_along_axis(best_indices, order, axis=1)[:, :width],
    )
