"""HTTP contract of the server on the tiny model: shapes, parity with ``encode``, options, errors, auth."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from piccolo_embed import Embedder
from piccolo_embed.serving.app import build_app
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role

TEXTS = ["今天天气很好", "北京的美食推荐", "如何学习编程"]
LIMITS = ServerSettings(max_inputs_per_request=8, max_chars_per_text=200, max_wait_ms=0.0)


@pytest.fixture(scope="module")
def embedder(_tiny_bert_master: Path) -> Embedder:
    return Embedder.from_pretrained(_tiny_bert_master)


@pytest.fixture(scope="module")
def client(embedder: Embedder) -> Iterator[TestClient]:
    with TestClient(build_app(embedder, LIMITS)) as test_client:
        yield test_client


def test_openai_response_shape_and_parity(client: TestClient, embedder: Embedder) -> None:
    response = client.post("/v1/embeddings", json={"input": TEXTS, "model": "whatever", "user": "u1"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == str(embedder.name)
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert {item["object"] for item in body["data"]} == {"embedding"}
    vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, embedder.encode(TEXTS, Role.NONE), atol=1e-5)  # default role: none
    tokens = sum(len(ids) for ids in embedder.tokenize(TEXTS, Role.NONE))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_openai_single_string_role_and_base64(client: TestClient, embedder: Embedder) -> None:
    floats = client.post("/v1/embeddings", json={"input": TEXTS[0], "role": "query"}).json()
    packed = client.post("/v1/embeddings", json={"input": TEXTS[0], "role": "QUERY", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), dtype="<f4")
    expected = embedder.encode([TEXTS[0]], Role.QUERY)[0]
    np.testing.assert_allclose(floats["data"][0]["embedding"], expected, atol=1e-5)
    np.testing.assert_array_equal(decoded, np.asarray(floats["data"][0]["embedding"], dtype=np.float32))


def test_dimensions_truncate_then_renormalise(client: TestClient, embedder: Embedder) -> None:
    body = client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 8}).json()
    vectors = np.array([item["embedding"] for item in body["data"]])
    full = embedder.encode(TEXTS)[:, :8]
    np.testing.assert_allclose(vectors, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    raw = client.post("/embed", json={"texts": TEXTS, "dimensions": 8, "normalize": False}).json()
    np.testing.assert_allclose(raw["embeddings"], full, atol=1e-5)
    assert raw["dimensions"] == 8


def test_native_embed_roles_and_usage(client: TestClient, embedder: Embedder) -> None:
    body = client.post("/embed", json={"texts": TEXTS, "role": "passage"}).json()
    assert body["role"] == "passage"
    np.testing.assert_allclose(body["embeddings"], embedder.encode(TEXTS, Role.PASSAGE), atol=1e-5)
    assert body["usage"]["total_tokens"] == sum(len(ids) for ids in embedder.tokenize(TEXTS, Role.PASSAGE))


def test_truncate_false_names_the_overlong_item(client: TestClient, embedder: Embedder) -> None:
    limit = embedder.roles[Role.QUERY].max_length
    long_text = "天" * 150  # 150 characters -> more than 64 query tokens
    ok = client.post("/embed", json={"texts": ["短", long_text], "role": "query"})
    short_tokens = len(embedder.tokenize(["短"], Role.QUERY)[0])
    assert ok.status_code == 200 and ok.json()["usage"]["total_tokens"] == short_tokens + limit
    refused = client.post("/embed", json={"texts": ["短", long_text], "role": "query", "truncate": False})
    assert refused.status_code == 413
    error = refused.json()["error"]
    full = len(embedder.tokenizer("查询：" + long_text)["input_ids"])
    assert full > limit
    assert error["param"] == "texts[1]" and error["code"] == "input_too_long"
    assert f"{full} tokens" in error["message"] and str(limit) in error["message"]
    exact = "天" * (limit - 2 - len("查询："))  # exactly at the limit is fine
    assert client.post("/embed", json={"texts": [exact], "role": "query", "truncate": False}).status_code == 200


BAD_REQUESTS = [
    # (route, raw body, status, param, code)
    ("/v1/embeddings", b"{not json", 400, None, "invalid_json"),
    ("/v1/embeddings", b"", 400, None, "missing_body"),
    ("/v1/embeddings", b"[1, 2]", 400, None, "invalid_body"),
    ("/v1/embeddings", b"null", 400, None, "invalid_body"),
    ("/v1/embeddings", b'{"input": "\\ud800"}', 400, "input[0]", "invalid_text"),
    ("/v1/embeddings", b'{"input": "\xff\xfe"}', 400, None, "invalid_body"),
    ("/v1/embeddings", b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, "invalid_body"),
    ("/v1/embeddings", {}, 400, "input", "missing"),
    ("/v1/embeddings", {"input": []}, 400, "input", "too_short"),
    ("/v1/embeddings", {"input": 5}, 400, "input", "list_type"),
    ("/v1/embeddings", {"input": None}, 400, "input", "list_type"),
    ("/v1/embeddings", {"input": ["ok", 3]}, 400, "input[1]", "string_type"),
    ("/v1/embeddings", {"input": ["ok", None]}, 400, "input[1]", "string_type"),
    ("/v1/embeddings", {"input": [[1, 2]]}, 400, "input", "value_error"),
    ("/v1/embeddings", {"input": ["x"] * 9}, 400, "input", "too_many_inputs"),
    ("/v1/embeddings", {"input": ["ok", "长" * 201]}, 413, "input[1]", "text_too_long"),
    ("/v1/embeddings", {"input": "x", "role": "boss"}, 400, "role", "value_error"),
    ("/v1/embeddings", {"input": "x", "role": 3}, 400, "role", "enum"),
    ("/v1/embeddings", {"input": "x", "dimensions": 33}, 400, "dimensions", "invalid_dimensions"),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 400, "dimensions", "greater_than_equal"),
    ("/v1/embeddings", {"input": "x", "dimensions": "8"}, 400, "dimensions", "int_type"),
    ("/v1/embeddings", {"input": "x", "dimensions": 8.5}, 400, "dimensions", "int_type"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format", "value_error"),
    ("/v1/embeddings", {"input": "x", "model": 7}, 400, "model", "string_type"),
    ("/v1/embeddings", {"input": "x", "texts": ["y"]}, 400, "texts", "extra_forbidden"),
    ("/embed", {"input": ["x"]}, 400, "texts", "missing"),
    ("/embed", {"texts": "x"}, 400, "texts", "list_type"),
    ("/embed", {"texts": []}, 400, "texts", "too_short"),
    ("/embed", {"texts": ["x", {"a": 1}]}, 400, "texts[1]", "string_type"),
    ("/embed", {"texts": ["x"], "normalize": "yes"}, 400, "normalize", "bool_type"),
    ("/embed", {"texts": ["x"], "truncate": 0}, 400, "truncate", "bool_type"),
    ("/embed", {"texts": ["x"], "role": "doc"}, 400, "role", "value_error"),
    ("/embed", {"texts": ["x"], "dimensions": 100}, 400, "dimensions", "invalid_dimensions"),
    ("/embed", {"texts": ["长" * 201]}, 413, "texts[0]", "text_too_long"),
    ("/embed", {"texts": ["x"], "long": "chunks"}, 400, "long", "value_error"),
]


@pytest.mark.parametrize(("route", "body", "status", "param", "code"), BAD_REQUESTS)
def test_bad_input_gets_a_clear_4xx(
    client: TestClient, route: str, body: object, status: int, param: str | None, code: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(route, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    if param is not None:
        assert error["message"].startswith(param)


GOOD_REQUESTS = [
    ("/v1/embeddings", {"input": TEXTS, "model": "m", "user": "u", "encoding_format": "base64"}),
    ("/v1/embeddings", {"input": TEXTS[0], "role": "query", "dimensions": 8}),
    ("/embed", {"texts": TEXTS, "role": "passage", "normalize": False, "dimensions": 4}),
    ("/embed", {"texts": ["短", "天" * 150], "role": "query", "truncate": False}),  # 413 from the handler
    ("/embed", {"texts": ["短", "天" * 150], "role": "query", "long": "mean"}),
]


@pytest.fixture(scope="module")
def plain_client(embedder: Embedder) -> Iterator[TestClient]:
    with TestClient(build_app(embedder, LIMITS, fast_routes=False)) as test_client:
        yield test_client


@pytest.mark.parametrize(("route", "body"), GOOD_REQUESTS + [(route, body) for route, body, *_ in BAD_REQUESTS])
def test_short_path_answers_byte_for_byte_as_fastapi(
    client: TestClient, plain_client: TestClient, route: str, body: object
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    fast, plain = (
        c.post(route, content=content, headers={"content-type": "application/json"}) for c in (client, plain_client)
    )
    assert (fast.status_code, fast.headers["content-type"], fast.content) == (
        plain.status_code,
        plain.headers["content-type"],
        plain.content,
    )


def test_only_well_formed_json_skips_the_fastapi_route(embedder: Embedder) -> None:
    app = build_app(embedder, LIMITS)
    routed: list[str] = []
    for route in app.routes:
        if getattr(route, "path", None) in ("/v1/embeddings", "/embed"):
            route.app = _counting(route.app, routed)
    with TestClient(app) as test_client:
        assert test_client.post("/v1/embeddings", json={"input": "x"}).status_code == 200
        assert test_client.post("/embed", json={"texts": ["x"]}).status_code == 200
        assert routed == []
        too_many = test_client.post("/embed", json={"texts": ["x"] * 9})  # valid JSON: the handler refuses it
        assert too_many.json()["error"]["code"] == "too_many_inputs" and routed == []
        assert test_client.post("/embed", json={"texts": []}).status_code == 400
        text_plain = test_client.post("/embed", content=b'{"texts": ["x"]}', headers={"content-type": "text/plain"})
        assert text_plain.json()["error"]["code"] == "invalid_body"
        assert routed == ["/embed", "/embed"]
        metrics = test_client.get("/metrics").text
    assert 'piccolo_embed_errors_total{code="too_many_inputs",route="/embed"} 1' in metrics
    assert 'piccolo_embed_requests_total{route="/embed",status="200"} 1' in metrics


def _counting(app, calls: list[str]):
    async def counted(scope, receive, send) -> None:
        calls.append(scope["path"])
        await app(scope, receive, send)

    return counted


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/embed")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_info_health_models(client: TestClient, embedder: Embedder) -> None:
    info = client.get("/info").json()
    assert info["dimension"] == embedder.dim == 32
    assert info["default_role"] == "none"
    assert info["roles"]["query"] == embedder.roles[Role.QUERY].to_dict()
    assert info["limits"]["max_inputs_per_request"] == 8
    assert "api_key" not in info["limits"]
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/v1/models").json()["data"][0]["id"] == info["model"]


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/v1/embeddings", json={"input": ["一", "二"]})
    client.post("/v1/embeddings", json={"input": []})
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = text.splitlines()
    for name in ("requests_total", "errors_total", "batch_size", "queue_wait_seconds", "tokens_total"):
        assert f"# TYPE piccolo_embed_{name} " in text
    assert any(line.startswith('piccolo_embed_requests_total{route="/v1/embeddings",status="200"}') for line in lines)
    assert any(line.startswith('piccolo_embed_errors_total{code="too_short",route="/v1/embeddings"}') for line in lines)
    assert 'piccolo_embed_batch_size_bucket{le="+Inf"}' in text
    for line in lines:  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1].replace("+Inf", "inf"))


def test_api_key_guards_everything_but_health(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICCOLO_EMBED_API_KEY", "s3cret")
    settings = ServerSettings(api_key=ServerSettings.api_key_from_env())
    with TestClient(build_app(embedder, settings)) as guarded:
        assert guarded.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = guarded.post("/v1/embeddings", json={"input": "x"}, headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["type"] == "authentication_error"
        assert guarded.get("/metrics").status_code == 401
        ok = guarded.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_oversized_body_is_refused_before_parsing(embedder: Embedder) -> None:
    with TestClient(build_app(embedder, ServerSettings(max_request_bytes=1000))) as small:
        response = small.post("/embed", json={"texts": ["长" * 400]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ServerSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_texts"):
        ServerSettings(max_inputs_per_request=100, max_queue_texts=10)
    with pytest.raises(ValueError, match="unknown Role"):
        ServerSettings(default_role="boss")
    assert ServerSettings(default_role="Query").default_role is Role.QUERY
    assert ServerSettings(api_key="").api_key is None
