"""Corpus indexes on disk: chunked, crash-safe encoding, exact or faiss search, model fingerprints.

Typical use::

    from piccolo_embed import Embedder
    from piccolo_embed.index import Searcher, build_index

    embedder = Embedder.from_pretrained("starter")
    store = build_index(embedder, "corpus.jsonl", "my-index")
    hits = Searcher(store, embedder).search(["北京的景点"], k=5)
"""

from piccolo_embed.index.ann import AnnParams, IndexType
from piccolo_embed.index.build import DEFAULT_CHUNK_SIZE, BuildMode, IndexLockedError, build_index
from piccolo_embed.index.chunked import DocumentChunks, DocumentHit, DocumentSearcher, model_chunkers
from piccolo_embed.index.corpus import Passage, read_corpus
from piccolo_embed.index.fingerprint import ModelFingerprint, ModelMismatchError, fingerprint_encoder
from piccolo_embed.index.guards import DuplicateIdError, EmptyCorpusError
from piccolo_embed.index.search import Hit, Searcher
from piccolo_embed.index.store import (
    CorruptIndexError,
    IncompleteIndexError,
    IndexNotFoundError,
    IndexStore,
    Manifest,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AnnParams",
    "BuildMode",
    "CorruptIndexError",
    "DocumentChunks",
    "DocumentHit",
    "DocumentSearcher",
    "DuplicateIdError",
    "EmptyCorpusError",
    "Hit",
    "IncompleteIndexError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexStore",
    "IndexType",
    "Manifest",
    "ModelFingerprint",
    "ModelMismatchError",
    "Passage",
    "Searcher",
    "build_index",
    "fingerprint_encoder",
    "model_chunkers",
    "read_corpus",
]
