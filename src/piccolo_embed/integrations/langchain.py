"""LangChain ``Embeddings`` over piccolo-embed: queries get the query role, documents the passage role.

Needs the ``langchain`` extra (``langchain-core``). Example::

    from piccolo_embed.integrations.langchain import PiccoloEmbeddings

    embeddings = PiccoloEmbeddings.from_pretrained("starter")  # or .from_server("http://127.0.0.1:8000")
    vectors = embeddings.embed_documents(["北京是中国的首都。"])
    query = embeddings.embed_query("中国的首都是哪里")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

from piccolo_embed.integrations.base import EncoderSources, RoleEmbedder
from piccolo_embed.types import Role

if TYPE_CHECKING:
    from piccolo_embed.protocols import Encoder


class PiccoloEmbeddings(EncoderSources, Embeddings):
    """A piccolo-embed model (in this process, or behind a server) as LangChain embeddings.

    Args:
        encoder: An :class:`~piccolo_embed.Embedder`, a
            :class:`~piccolo_embed.integrations.remote.RemoteEncoder`, or anything with ``encode(texts, *, role)``.
            ``from_pretrained`` and ``from_server`` build one.
    """

    def __init__(self, encoder: Encoder) -> None:
        self._embedder = RoleEmbedder(encoder)

    @property
    def encoder(self) -> Encoder:
        """What embeds the texts."""
        return self._embedder.encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (passage role: the model's passage instruction and max length)."""
        return self._embedder.embed(texts, Role.PASSAGE)

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (query role)."""
        return self._embedder.embed([text], Role.QUERY)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` for async code (a server is called without blocking the loop)."""
        return await self._embedder.aembed(texts, Role.PASSAGE)

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` for async code."""
        return (await self._embedder.aembed([text], Role.QUERY))[0]
