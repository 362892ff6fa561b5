"""Long documents: Chinese-aware chunking in the model's own tokens, and embedding documents of any length."""

from piccolo_embed.chunking.chunker import (
    DEFAULT_OVERLAP_TOKENS,
    Chunk,
    Chunker,
    HFTokenSpanner,
    TokenizedModel,
    TokenSpanner,
)
from piccolo_embed.chunking.long import LongEmbeddings, LongMode, embed_long, mean_rows

__all__ = [
    "DEFAULT_OVERLAP_TOKENS",
    "Chunk",
    "Chunker",
    "HFTokenSpanner",
    "LongEmbeddings",
    "LongMode",
    "TokenSpanner",
    "TokenizedModel",
    "embed_long",
    "mean_rows",
]
