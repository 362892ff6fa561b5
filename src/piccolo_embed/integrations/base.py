"""What the LangChain and LlamaIndex classes share: an encoder (local or remote) and role-aware float lists."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from piccolo_embed.integrations.remote import DEFAULT_BATCH_SIZE, RemoteEncoder
from piccolo_embed.types import Role

if TYPE_CHECKING:
    from piccolo_embed.protocols import Encoder


class RoleEmbedder:
    """Embed texts for a role as lists of floats, the shape both frameworks want.

    A local model runs one call at a time (the frameworks' async paths call from worker threads, and one
    model's forward passes do not overlap well on CPU); a remote encoder handles concurrent calls itself.
    """

    def __init__(self, encoder: Encoder) -> None:
        if isinstance(encoder, str | Path):  # str has an encode() too
            raise TypeError(f"expected an encoder, got {encoder!r}; use from_pretrained() or from_server() for that")
        if not callable(getattr(encoder, "encode", None)):
            raise TypeError(f"expected an encoder with encode(texts, *, role), got {type(encoder).__name__}")
        self.encoder = encoder
        self._lock = contextlib.nullcontext() if getattr(encoder, "thread_safe", False) else threading.Lock()

    def embed(self, texts: Sequence[str], role: Role) -> list[list[float]]:
        """One list of floats per text, in order."""
        with self._lock:
            return _floats(self.encoder.encode(list(texts), role=role))

    async def aembed(self, texts: Sequence[str], role: Role) -> list[list[float]]:
        """:meth:`embed` without blocking the event loop: the encoder's own ``aencode``, else a worker thread."""
        aencode = getattr(self.encoder, "aencode", None)
        if aencode is None:
            return await asyncio.to_thread(self.embed, texts, role)
        return _floats(await aencode(list(texts), role=role))


class EncoderSources:
    """The two ways to build an integration: a model loaded in this process, or a running server.

    Keyword arguments beyond the source's own go to the class (e.g. LlamaIndex's ``embed_batch_size``); for
    other loading options, build the :class:`~piccolo_embed.Embedder` yourself and pass it to the class.
    """

    @classmethod
    def from_pretrained(
        cls, spec: str | Path, *, roles: str | None = None, device: str = "auto", **kwargs: Any
    ) -> Self:
        """Load a model in this process: a directory, a hub id or ``"starter"``, with optional role preset."""
        from piccolo_embed.inference.embedder import Embedder

        return cls(Embedder.from_pretrained(spec, roles=roles, device=device), **kwargs)

    @classmethod
    def from_server(
        cls,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        **kwargs: Any,
    ) -> Self:
        """Use a running ``piccolo-embed serve`` at ``base_url`` (see :class:`RemoteEncoder` for the options)."""
        remote = RemoteEncoder(base_url, api_key=api_key, timeout=timeout, batch_size=batch_size)
        return cls(remote, **kwargs)


def _floats(vectors: np.ndarray) -> list[list[float]]:
    return np.asarray(vectors, dtype=np.float32).tolist()
