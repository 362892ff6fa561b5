"""LlamaIndex embedding over piccolo-embed: query embeddings get the query role, text embeddings the passage role.

Needs the ``llamaindex`` extra (``llama-index-core``). Example::

    from llama_index.core import Settings
    from piccolo_embed.integrations.llamaindex import PiccoloEmbedding

    Settings.embed_model = PiccoloEmbedding.from_pretrained("starter")  # or .from_server("http://127.0.0.1:8000")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from piccolo_embed.integrations.base import EncoderSources, RoleEmbedder
from piccolo_embed.types import Role

if TYPE_CHECKING:
    from piccolo_embed.protocols import Encoder

DEFAULT_EMBED_BATCH_SIZE = 64  # LlamaIndex's default of 10 texts per call leaves a local model mostly idle


class PiccoloEmbedding(EncoderSources, BaseEmbedding):
    """A piccolo-embed model (in this process, or behind a server) as a LlamaIndex embedding model.

    Args:
        encoder: An :class:`~piccolo_embed.Embedder`, a
            :class:`~piccolo_embed.integrations.remote.RemoteEncoder`, or anything with ``encode(texts, *, role)``.
        model_name: Reported name; default the encoder's ``name``.
        embed_batch_size: Texts per call when LlamaIndex embeds nodes in batches.
        **kwargs: Other ``BaseEmbedding`` fields (``callback_manager``, ``num_workers``, ...).
    """

    _embedder: RoleEmbedder = PrivateAttr()

    def __init__(
        self,
        encoder: Encoder,
        *,
        model_name: str | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        name = model_name or str(getattr(encoder, "name", "") or "piccolo-embed")
        super().__init__(model_name=name, embed_batch_size=embed_batch_size, **kwargs)
        self._embedder = RoleEmbedder(encoder)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's registry name for this class."""
        return "PiccoloEmbedding"

    @property
    def encoder(self) -> Encoder:
        """What embeds the texts."""
        return self._embedder.encoder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed([query], Role.QUERY)[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed([text], Role.PASSAGE)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed(texts, Role.PASSAGE)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._embedder.aembed([query], Role.QUERY))[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._embedder.aembed([text], Role.PASSAGE))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._embedder.aembed(texts, Role.PASSAGE)
