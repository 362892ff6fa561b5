"""LangChain: PiccoloEmbeddings gives queries and documents their roles, locally and over a server; and the
OpenAI-client path (OpenAIEmbeddings against our /v1/embeddings) works offline without tiktoken."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langchain_core")
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from piccolo_embed import Embedder, Role
from piccolo_embed.integrations.langchain import PiccoloEmbeddings


class Recording:
    """An encoder that notes each call's role before handing it on."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.roles: list[Role] = []

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        self.roles.append(Role.coerce(role))
        return self.inner.encode(texts, role)


def _check_roles(embeddings: PiccoloEmbeddings, reference: Embedder, texts: list[str]) -> None:
    assert isinstance(embeddings, Embeddings)
    documents = embeddings.embed_documents(texts)
    query = embeddings.embed_query(texts[0])
    assert isinstance(documents, list) and isinstance(documents[0], list) and isinstance(query[0], float)
    np.testing.assert_allclose(documents, reference.encode(texts, Role.PASSAGE), atol=1e-5)
    np.testing.assert_allclose(query, reference.encode(texts[:1], Role.QUERY)[0], atol=1e-5)
    assert not np.allclose(query, documents[0], atol=1e-3)  # the two roles really differ
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_documents(texts)), documents, atol=1e-6)
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_query(texts[0])), query, atol=1e-6)


def test_local_model(_tiny_bert_master: Path, reference: Embedder, texts: list[str]) -> None:
    _check_roles(PiccoloEmbeddings.from_pretrained(_tiny_bert_master, device="cpu"), reference, texts)


def test_running_server(server, reference: Embedder, texts: list[str]) -> None:
    embeddings = PiccoloEmbeddings.from_server(server.url, api_key=server.api_key, batch_size=3)
    _check_roles(embeddings, reference, texts)


def test_a_vector_store_embeds_documents_as_passages_and_searches_as_queries(
    reference: Embedder, texts: list[str]
) -> None:
    encoder = Recording(reference)
    store = InMemoryVectorStore.from_texts(texts, PiccoloEmbeddings(encoder))
    hits = store.similarity_search(texts[2], k=4)
    assert encoder.roles == [Role.PASSAGE, Role.QUERY]
    assert sorted(hit.page_content for hit in hits) == sorted(texts)
    with pytest.raises(TypeError, match="use from_pretrained"):
        PiccoloEmbeddings("starter")


def test_openai_embeddings_need_no_tiktoken_with_ctx_length_check_off(
    server, reference: Embedder, texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_embeddings = pytest.importorskip("langchain_openai").OpenAIEmbeddings
    import tiktoken

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tiktoken would download its encoding files")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)

    def openai(role: str, **options: object) -> Embeddings:
        return openai_embeddings(
            model="piccolo",
            base_url=server.url + "/v1",
            api_key=server.api_key,
            chunk_size=8,  # the server's --max-inputs here; LangChain's default of 1000 texts is more than 256
            model_kwargs={"extra_body": {"role": role}},  # one role per instance: OpenAI's API has no roles
            max_retries=0,
            **options,
        )

    passages = openai("passage", check_embedding_ctx_length=False).embed_documents(texts * 3)
    np.testing.assert_allclose(passages, reference.encode(texts * 3, Role.PASSAGE), atol=1e-5)
    query = openai("query", check_embedding_ctx_length=False).embed_query(texts[0])
    np.testing.assert_allclose(query, reference.encode(texts[:1], Role.QUERY)[0], atol=1e-5)
    with pytest.raises(RuntimeError, match="tiktoken would download"):
        openai("passage").embed_documents(texts)  # the default counts tokens with tiktoken first
