"""Long documents on ``/embed`` (``long: mean`` equals ``embed_long``); role-selecting model names for OpenAI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from piccolo_embed import Embedder
from piccolo_embed.chunking import Chunker, embed_long
from piccolo_embed.serving.app import build_app
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role

LONG = ("今天天气很好，我们去公园散步。明天会下雨吗？" * 12 + "北京上海的美食推荐。\n") * 4
TEXTS = [LONG, "如何学习编程？", "机器人工智能" * 60]
SETTINGS = ServerSettings(model_name="tiny", max_chars_per_text=4000, max_wait_ms=0.0)


@pytest.fixture(scope="module")
def embedder(_tiny_bert_master: Path) -> Embedder:
    return Embedder.from_pretrained(_tiny_bert_master, device="cpu")


@pytest.fixture(scope="module")
def client(embedder: Embedder) -> Iterator[TestClient]:
    with TestClient(build_app(embedder, SETTINGS)) as test_client:
        yield test_client


@pytest.mark.parametrize("role", ["passage", "query"])
def test_long_mean_equals_embed_long(client: TestClient, embedder: Embedder, role: str) -> None:
    response = client.post("/embed", json={"texts": TEXTS, "role": role, "long": "mean"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = embed_long(embedder, TEXTS, mode="mean", role=role)
    np.testing.assert_allclose(body["embeddings"], expected.vectors, atol=1e-5)
    chunks = Chunker.for_model(embedder, role=role).chunk_documents(TEXTS)
    assert len(chunks[0]) > 1 and len(chunks[2]) > 1  # the test needs documents longer than the role reads
    fed = embedder.tokenize([chunk.text for document in chunks for chunk in document], role)
    assert body["usage"]["total_tokens"] == sum(len(ids) for ids in fed)


def test_long_truncate_is_the_default(client: TestClient, embedder: Embedder) -> None:
    omitted = client.post("/embed", json={"texts": TEXTS, "role": "passage"}).json()
    explicit = client.post("/embed", json={"texts": TEXTS, "role": "passage", "long": "truncate"}).json()
    assert omitted == explicit
    np.testing.assert_allclose(omitted["embeddings"], embedder.encode(TEXTS, Role.PASSAGE), atol=1e-5)


def test_too_long_413_names_the_long_option(client: TestClient) -> None:
    refused = client.post("/embed", json={"texts": ["短", LONG], "role": "query", "truncate": False})
    assert refused.status_code == 413
    assert refused.json()["error"]["param"] == "texts[1]" and 'long="mean"' in refused.json()["error"]["message"]
    meant = client.post("/embed", json={"texts": ["短", LONG], "role": "query", "truncate": False, "long": "mean"})
    assert meant.status_code == 200 and len(meant.json()["embeddings"]) == 2


@pytest.mark.parametrize(("value", "message"), [("chunks", "not served"), ("whole", "truncate, mean, chunks")])
def test_long_refuses_other_modes(client: TestClient, value: str, message: str) -> None:
    response = client.post("/embed", json={"texts": ["好"], "long": value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "long" and message in error["message"]


def test_long_mean_refuses_more_chunks_than_the_queue_holds(embedder: Embedder) -> None:
    settings = ServerSettings(max_chars_per_text=4000, max_inputs_per_request=4, max_queue_texts=4)
    with TestClient(build_app(embedder, settings)) as small:
        response = small.post("/embed", json={"texts": [LONG, LONG], "long": "mean"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_chunks"


def test_role_model_names_with_the_openai_client(embedder: Embedder, serve_app: Any) -> None:
    openai = pytest.importorskip("openai")
    with serve_app(build_app(embedder, SETTINGS)) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert [model.id for model in client.models.list()] == ["tiny", "tiny-query", "tiny-passage"]
        texts = ["北京的美食推荐", "如何学习编程"]
        for model, role in [("tiny", Role.NONE), ("tiny-query", Role.QUERY), ("tiny-passage", Role.PASSAGE)]:
            response = client.embeddings.create(model=model, input=texts)  # base64 on the wire, the client's default
            vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
            np.testing.assert_allclose(vectors, embedder.encode(texts, role), atol=1e-5)
            assert response.model == model
        other = client.embeddings.create(model="text-embedding-3-small", input=texts[0])  # any other name: default
        np.testing.assert_allclose(other.data[0].embedding, embedder.encode(texts[:1], Role.NONE)[0], atol=1e-5)


def test_role_field_agrees_with_the_model_name(client: TestClient) -> None:
    agree = client.post("/v1/embeddings", json={"input": "好", "model": "tiny-query", "role": "query"})
    assert agree.status_code == 200
    clash = client.post("/v1/embeddings", json={"input": "好", "model": "tiny-query", "role": "passage"})
    assert clash.status_code == 400
    assert (clash.json()["error"]["param"], clash.json()["error"]["code"]) == ("role", "conflicting_role")
