"""A real piccolo-embed server (uvicorn on a loopback port) over the tiny model, shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from piccolo_embed import Embedder

API_KEY = "test-key"


@dataclass(frozen=True)
class Server:
    """Where the test server listens, and its name and key."""

    url: str
    name: str
    api_key: str = API_KEY


@pytest.fixture
def texts() -> list[str]:
    return ["北京是中国的首都。", "上海的美食推荐：小笼包。", "机器人工智能深度神经网络", "今天天气很好"]


@pytest.fixture(scope="session")
def reference(_tiny_bert_master: Path) -> Embedder:
    """A second copy of the served model, for expected vectors (the server's copy belongs to its workers)."""
    return Embedder.from_pretrained(_tiny_bert_master, device="cpu")


@pytest.fixture(scope="session")
def server(_tiny_bert_master: Path, serve_app) -> Iterator[Server]:
    pytest.importorskip("fastapi")
    from piccolo_embed.serving.app import build_app
    from piccolo_embed.serving.settings import ServerSettings

    app = build_app(
        Embedder.from_pretrained(_tiny_bert_master, device="cpu"),
        ServerSettings(model_name="piccolo", api_key=API_KEY, max_inputs_per_request=8, max_queue_texts=64),
    )
    with serve_app(app) as base:
        yield Server(base, "piccolo")
