"""LlamaIndex: PiccoloEmbedding gives query embeddings the query role and text embeddings the passage role."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode

from piccolo_embed import Embedder, Role
from piccolo_embed.integrations.llamaindex import DEFAULT_EMBED_BATCH_SIZE, PiccoloEmbedding


def _check_roles(embedding: PiccoloEmbedding, reference: Embedder, texts: list[str]) -> None:
    assert isinstance(embedding, BaseEmbedding)
    passages = reference.encode(texts, Role.PASSAGE)
    query = reference.encode(texts[:1], Role.QUERY)[0]
    np.testing.assert_allclose(embedding.get_text_embedding_batch(texts), passages, atol=1e-5)
    np.testing.assert_allclose(embedding.get_text_embedding(texts[1]), passages[1], atol=1e-5)
    np.testing.assert_allclose(embedding.get_query_embedding(texts[0]), query, atol=1e-5)
    assert not np.allclose(query, passages[0], atol=1e-3)
    np.testing.assert_allclose(asyncio.run(embedding.aget_query_embedding(texts[0])), query, atol=1e-5)
    np.testing.assert_allclose(asyncio.run(embedding.aget_text_embedding(texts[1])), passages[1], atol=1e-5)
    np.testing.assert_allclose(asyncio.run(embedding.aget_text_embedding_batch(texts)), passages, atol=1e-5)


def test_local_model(_tiny_bert_master: Path, reference: Embedder, texts: list[str]) -> None:
    embedding = PiccoloEmbedding.from_pretrained(_tiny_bert_master, device="cpu")
    assert (embedding.model_name, embedding.embed_batch_size) == (str(_tiny_bert_master), DEFAULT_EMBED_BATCH_SIZE)
    assert embedding.class_name() == "PiccoloEmbedding"
    _check_roles(embedding, reference, texts)


def test_running_server(server, reference: Embedder, texts: list[str]) -> None:
    embedding = PiccoloEmbedding.from_server(server.url, api_key=server.api_key, batch_size=2, embed_batch_size=3)
    assert (embedding.encoder.batch_size, embedding.embed_batch_size) == (2, 3)
    assert embedding.model_name == "piccolo"
    _check_roles(embedding, reference, texts)


def test_an_index_retrieves_with_query_vectors(reference: Embedder, texts: list[str]) -> None:
    embedding = PiccoloEmbedding(reference, model_name="tiny")
    index = VectorStoreIndex([TextNode(text=text) for text in texts], embed_model=embedding)
    hits = index.as_retriever(similarity_top_k=4).retrieve(texts[2])
    scores = reference.encode(texts, Role.PASSAGE) @ reference.encode(texts[2:3], Role.QUERY)[0]
    assert [hit.node.get_content() for hit in hits] == [texts[i] for i in np.argsort(-scores)]
    np.testing.assert_allclose([hit.score for hit in hits], np.sort(scores)[::-1], atol=1e-5)
