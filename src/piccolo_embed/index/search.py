"""Query an index: encode queries with the model that built it, score, and return ids, scores and texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from piccolo_embed.index.ann import IndexType, ann_search, configure_search, exact_search
from piccolo_embed.index.fingerprint import ModelFingerprint, check_same_model, fingerprint_encoder
from piccolo_embed.index.store import IndexStore
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import Role


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: Corpus id of the passage.
        score: Inner product of the normalised embeddings (cosine).
        text: Passage text.
        title: Passage title (empty when the corpus had none).
        row: Position of the passage in the index.
    """

    id: str
    score: float
    text: str
    title: str
    row: int

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {"id": self.id, "score": self.score, "text": self.text, "title": self.title, "row": self.row}


def checked_query_role(
    recorded: ModelFingerprint, passage_role: Role, encoder: Encoder, query_role: Role | str | None
) -> Role:
    """Check ``encoder`` against the model that built an index; return the role its queries get.

    By default ``query`` when passages were encoded as ``passage``, ``none`` when they were ``none`` (s2s).

    Raises:
        ModelMismatchError: ``encoder`` is not the model that built the index.
    """
    check_same_model(recorded, fingerprint_encoder(encoder))
    if query_role is not None:
        return Role.coerce(query_role)
    return Role.NONE if passage_role is Role.NONE else Role.QUERY


class Searcher:
    """An index paired with the encoder that built it.

    Args:
        store: The index.
        encoder: Must reproduce the index's model fingerprint (checked here, once).
        query_role: Role for queries; by default ``query`` when passages were encoded as ``passage`` and
            ``none`` when they were encoded as ``none`` (s2s).
        nprobe: IVF cells searched per query (overrides the index's setting).
        ef_search: HNSW beam width at query time (overrides the index's setting).

    Raises:
        ModelMismatchError: ``encoder`` is not the model that built the index.
    """

    def __init__(
        self,
        store: IndexStore,
        encoder: Encoder,
        *,
        query_role: Role | str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        self.query_role = checked_query_role(store.manifest.model, store.manifest.passage_role, encoder, query_role)
        self.store = store
        self.encoder = encoder
        params = store.manifest.ann_params
        params = replace(params, nprobe=nprobe or params.nprobe, ef_search=ef_search or params.ef_search)
        self._ann = store.load_ann()
        if self._ann is not None:
            configure_search(self._ann, params)

    @classmethod
    def open(cls, directory: str | Path, encoder: Encoder, **kwargs: object) -> Searcher:
        """Open the index in ``directory`` for ``encoder``; ``kwargs`` as in the constructor."""
        return cls(IndexStore.open(directory), encoder, **kwargs)  # type: ignore[arg-type]

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)``, each ``(len(queries), k)``; rows are ``-1`` past the corpus end."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if self.store.manifest.index_type is IndexType.FLAT or self._ann is None:
            return exact_search(queries, self.store.iter_blocks(), k)
        return ann_search(self._ann, queries, k)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Encode ``queries`` and return the ``k`` best passages of each, best first.

        Raises:
            ValueError: A query is empty or blank (it would match arbitrary passages); names its position.
        """
        queries = validate_texts(queries)
        if not queries:
            return []
        blank = [index for index, query in enumerate(queries) if not query.strip()]
        if blank:
            raise ValueError(f"query {blank[0]} is empty; give the text to search for")
        vectors = np.asarray(self.encoder.encode(queries, role=self.query_role), dtype=np.float32)
        scores, rows = self.search_vectors(vectors, k)
        return [self._hits(score_row, row_ids) for score_row, row_ids in zip(scores, rows, strict=True)]

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        keep = rows >= 0
        entries = self.store.entries(rows[keep].tolist())
        return [
            Hit(id=e["id"], score=float(s), text=e["text"], title=e.get("title", ""), row=int(r))
            for e, s, r in zip(entries, scores[keep], rows[keep], strict=True)
        ]
