"""Concurrent clients against a real uvicorn on loopback: every vector equals direct ``encode``; requests merge.

Also: a full queue answers 429 at once, a stuck model gives 503 after the request timeout, a failing model
gives a 500 error object and the next request still works.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn")
import httpx

from piccolo_embed import Embedder
from piccolo_embed.serving.app import build_app
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role

CHARS = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"


@pytest.fixture(scope="module")
def embedder(_tiny_bert_master: Path) -> Embedder:
    return Embedder.from_pretrained(_tiny_bert_master)


def _workload(seed: int) -> list[tuple[list[str], Role]]:
    rng = random.Random(seed)
    roles = [Role.QUERY, Role.PASSAGE, Role.NONE]
    return [
        (["".join(rng.choices(CHARS, k=rng.randint(2, 40))) for _ in range(rng.randint(1, 3))], rng.choice(roles))
        for _ in range(3)
    ]


def test_concurrent_requests_match_direct_encode_and_are_batched(embedder: Embedder, serve_app) -> None:
    clients = 32
    workloads = [_workload(seed) for seed in range(clients)]
    # Direct encode, before the server starts (afterwards only its worker may use the model); one call per role.
    expected: dict[tuple[str, Role], np.ndarray] = {}
    for role in Role:
        texts = sorted({text for work in workloads for batch, r in work if r is role for text in batch})
        expected.update(zip(((text, role) for text in texts), embedder.encode(texts, role), strict=True))
    app = build_app(embedder, ServerSettings(max_wait_ms=20.0, max_batch_size=32))

    def client(
        http: httpx.Client, work: list[tuple[list[str], Role]]
    ) -> list[tuple[tuple[str, ...], Role, np.ndarray]]:
        results = []
        for texts, role in work:
            if role is Role.QUERY:  # exercise both APIs
                response = http.post("/embed", json={"texts": texts, "role": role.value})
                vectors = np.array(response.json()["embeddings"])
            else:
                response = http.post("/v1/embeddings", json={"input": texts, "role": role.value})
                vectors = np.array([item["embedding"] for item in response.json()["data"]])
            assert response.status_code == 200, response.text
            results.append((tuple(texts), role, vectors))
        return results

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # httpx.Client is thread-safe: the threads share one pool of keep-alive connections
    with (
        serve_app(app) as base,
        httpx.Client(base_url=base, timeout=30, limits=limits) as http,
        ThreadPoolExecutor(clients) as pool,
    ):
        outputs = list(pool.map(lambda work: client(http, work), workloads))
    for results in outputs:
        for texts, role, vectors in results:
            np.testing.assert_allclose(vectors, [expected[(text, role)] for text in texts], atol=1e-5)
    metrics = app.state.metrics
    requests = sum(len(work) for work in workloads)
    # Every request went through the worker; one whose texts the policy split over two passes counts in both.
    assert requests <= metrics.batch_requests.total() <= requests + metrics.batch_size.count()
    assert metrics.texts.value() == sum(len(texts) for work in workloads for texts, _ in work)
    assert metrics.batch_size.count() < requests / 2  # concurrent requests were merged


class GatedModel:
    """Wraps an :class:`Embedder`; ``encode_ids`` waits for ``gate`` and can be told to fail."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = "gated"
        self.roles = inner.roles
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = False

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def tokenizer(self) -> object:
        return self.inner.tokenizer

    def tokenize(self, texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        return self.inner.tokenize(texts, role)

    def count_tokens(self, texts: Sequence[str], role: Role | str | None = None, *, truncate: bool = True) -> list[int]:
        return self.inner.count_tokens(texts, role, truncate=truncate)

    def encode_ids(self, ids: Sequence[Sequence[int]], **kwargs: object) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("model exploded")
        return self.inner.encode_ids(ids, **kwargs)


def test_full_queue_answers_429_quickly_and_stuck_model_503(embedder: Embedder, serve_app) -> None:
    model = GatedModel(embedder)
    settings = ServerSettings(
        max_batch_size=1, max_wait_ms=0.0, max_inputs_per_request=2, max_queue_texts=2, request_timeout_s=1.0
    )
    with (
        serve_app(build_app(model, settings)) as base,
        ThreadPoolExecutor(2) as pool,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        first = pool.submit(http.post, "/v1/embeddings", json={"input": ["一"]})
        assert model.entered.wait(10)  # the worker is now stuck in the model
        second = pool.submit(http.post, "/v1/embeddings", json={"input": ["二", "三"]})  # fills the queue
        time.sleep(0.2)
        started = time.monotonic()
        busy = http.post("/v1/embeddings", json={"input": ["四"]})
        assert busy.status_code == 429 and time.monotonic() - started < 0.5
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "queue_full"
        assert first.result().status_code == 503  # request_timeout_s passed with the model stuck
        assert first.result().json()["error"]["code"] == "timeout"
        model.fail = True
        model.gate.set()
        assert second.result().status_code in (500, 503)
        model.fail = False
        assert http.post("/v1/embeddings", json={"input": ["五"]}).status_code == 200


def test_model_failure_is_a_500_error_object_and_worker_survives(embedder: Embedder, serve_app) -> None:
    model = GatedModel(embedder)
    model.gate.set()
    model.fail = True
    with serve_app(build_app(model, ServerSettings(max_wait_ms=0.0))) as base, httpx.Client(base_url=base) as http:
        failed = http.post("/embed", json={"texts": ["一"]})
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        model.fail = False
        assert http.post("/embed", json={"texts": ["一"]}).status_code == 200
        assert http.get("/health").json() == {"status": "ok"}
