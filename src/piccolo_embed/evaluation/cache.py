"""An :class:`~piccolo_embed.protocols.Encoder` wrapper that encodes each (role, text) once per run.

C-MTEB-style suites repeat texts a lot: pair tasks share sentences, reranking candidates recur across
queries, tasks share corpora. The cache sends only unseen texts to the wrapped encoder, in one call, so the
encoder still sees large batches it can length-sort.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from piccolo_embed.protocols import Encoder
from piccolo_embed.types import Role

log = logging.getLogger(__name__)


class CachedEncoder:
    """Memoise ``encoder.encode`` by ``(role, text)``; satisfies the ``Encoder`` protocol itself.

    Attributes:
        encoder: The wrapped encoder.
        hits: Texts answered from the cache (including repeats within one call).
        misses: Texts sent to the wrapped encoder.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._store: dict[tuple[Role, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Forget every stored embedding (e.g. between tasks whose texts do not overlap)."""
        self._store.clear()

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        """Embeddings of ``texts`` for ``role``, rows in input order; only unseen texts reach the encoder."""
        role = Role.coerce(role)
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if (role, t) not in self._store]
        if missing or not texts:
            vectors = np.asarray(self.encoder.encode(missing, role=role), dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(missing):
                raise ValueError(f"encoder returned shape {vectors.shape} for {len(missing)} texts")
            if not texts:
                return vectors
            self._store.update({(role, t): v for t, v in zip(missing, vectors, strict=True)})
            log.debug("encoded %d new %s texts (%d cached)", len(missing), role.value, len(self._store))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        return np.stack([self._store[(role, t)] for t in texts])
