"""``"long": "mean"`` on ``/embed``: one vector per document of any length, the mean of its chunk vectors.

The steps are :func:`~piccolo_embed.chunking.embed_long`'s (``Chunker.for_model`` chunks, ``mean_rows`` of
their vectors), split so the chunk vectors come from the batcher: chunks of concurrent requests share forward
passes, and a request whose client leaves is dropped before encoding like any other. The tests hold the result
equal to ``embed_long(model, texts, mode="mean")``.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from piccolo_embed.chunking import Chunk, Chunker, mean_rows
from piccolo_embed.serving.batcher import Embedded

if TYPE_CHECKING:
    from piccolo_embed.types import Role, RoleSpec

# Embeds chunk texts for a role through the batcher (never truncating: every chunk fits its role).
SubmitChunks = Callable[[list[str], "Role"], Awaitable[Embedded]]


class TooManyChunksError(ValueError):
    """A request's documents make more chunks than the queue may hold (HTTP 413)."""


@dataclass(frozen=True)
class _ChunkingModel:
    """What ``Chunker.for_model`` reads: the served model's roles, with a tokenizer of the chunker's own."""

    roles: Mapping[Role, RoleSpec]
    tokenizer: Any


class MeanOfChunks:
    """Chunks documents off the event loop and averages their chunk vectors (module docstring).

    Args:
        roles: The served model's roles (prefix and max length decide the chunk size).
        tokenizer: The served model's fast tokenizer. The chunker uses a copy behind its own lock: a fast
            tokenizer used from two threads at once (here and the batcher's worker) fails with "Already borrowed".
        max_chunks: Most chunks one request may make (the queue's size: more could never be admitted).
    """

    def __init__(self, roles: Mapping[Role, RoleSpec], tokenizer: Any, *, max_chunks: int) -> None:
        self._model = _ChunkingModel(roles, copy.deepcopy(tokenizer))
        self._max_chunks = max_chunks
        self._chunkers: dict[Role, Chunker] = {}
        self._lock = threading.Lock()

    async def embed(self, texts: Sequence[str], role: Role, submit: SubmitChunks) -> Embedded:
        """Unit vectors, one per text, and the tokens each text's chunks fed to the model.

        Raises:
            TooManyChunksError: The texts make more than ``max_chunks`` chunks.
        """
        documents = await asyncio.to_thread(self._chunk, list(texts), role)
        counts = [len(chunks) for chunks in documents]
        if sum(counts) > self._max_chunks:
            raise TooManyChunksError(
                f"the texts make {sum(counts)} chunks, more than the {self._max_chunks} one request may queue"
            )
        result = await submit([chunk.text for chunks in documents for chunk in chunks], role)
        groups = np.repeat(np.arange(len(texts)), counts)
        vectors = mean_rows(result.vectors, groups, len(texts))
        tokens = np.bincount(groups, weights=result.token_counts, minlength=len(texts))
        return Embedded(vectors, [int(count) for count in tokens])

    def _chunk(self, texts: list[str], role: Role) -> list[list[Chunk]]:
        with self._lock:
            if role not in self._chunkers:
                self._chunkers[role] = Chunker.for_model(self._model, role=role)
            return self._chunkers[role].chunk_documents(texts)
