"""Fixtures for training tests: a small dataset file and a config on the tiny model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from piccolo_embed.training.config import RunConfig

WORDS = "今天天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能医院看病感冒发烧吃药手机电脑"


def _text(i: int, length: int = 6) -> str:
    return "".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(length))


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"query": _text(i), "pos": [_text(i + 100, 10)], "neg": [_text(i + 200, 9)]} for i in range(24)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def scored_file(tmp_path: Path) -> Path:
    path = tmp_path / "sts.jsonl"
    rows = [{"sentence1": _text(i), "sentence2": _text(i + 1), "score": float(i % 3)} for i in range(12)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def make_config(tiny_bert_dir: Path, pairs_file: Path, scored_file: Path, tmp_path: Path) -> Callable[..., RunConfig]:
    """A config dict on the tiny model; keyword arguments override ``training`` keys."""

    def build(output: str = "run", model_overrides: dict[str, Any] | None = None, **training: Any) -> RunConfig:
        raw = {
            "model": {
                "name": str(tiny_bert_dir),
                "query_max_length": 16,
                "passage_max_length": 24,
                **(model_overrides or {}),
            },
            "data": {
                "datasets": [
                    {"file": str(pairs_file), "kind": "s2p"},
                    {"file": str(scored_file), "kind": "s2s", "records": "scored"},
                ],
                "num_negatives": 1,
                "cache_dir": str(tmp_path / "arrow"),
            },
            "loss": {"contrastive": "gte", "temperature": 0.05},
            "training": {
                "output_dir": str(tmp_path / output),
                "batch_size": 4,
                "learning_rate": 1e-3,
                "epochs": 2,
                "log_every": 1,
                **training,
            },
        }
        return RunConfig.from_mapping(raw)

    return build
