"""Shared fixtures: a tiny random BERT with a WordPiece vocab of CJK characters, built offline in a temp dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Characters our tests, prefixes and demo texts need, plus a block of common CJK ideographs.
EXTRA = list("查询结果：:，。！？、；（）“”《》") + list("abcdefghijklmnopqrstuvwxyz0123456789 .,!?-'")
CJK = [chr(cp) for cp in range(0x4E00, 0x4E00 + 400)] + list(
    "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"
    "中国首都是哪里城市旅游景点医院看病感冒发烧吃药手机电脑价格便宜质量外卖送餐速度慢服务态度差"
)


def _vocab() -> list[str]:
    seen: dict[str, None] = dict.fromkeys(SPECIALS)
    for ch in EXTRA + CJK:
        if ch.strip():
            seen.setdefault(ch.lower(), None)
            seen.setdefault("##" + ch.lower(), None)
    return list(seen)


def build_tiny_bert(directory: Path, *, seed: int = 0, max_positions: int = 128) -> Path:
    """Write a 2-layer, hidden-32 random BERT and its tokenizer to ``directory`` (HF layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True)
    tokenizer.model_max_length = max_positions
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    model = BertModel(config, add_pooling_layer=False)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def _tiny_bert_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-master"))


@pytest.fixture
def tiny_bert_dir(_tiny_bert_master: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model directory (tests may write next to it)."""
    target = tmp_path / "tiny-bert"
    shutil.copytree(_tiny_bert_master, target)
    return target


def build_tiny_xlmr(directory: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer random XLM-R (padding-offset positions) with a small Unigram vocab of CJK characters."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = [ch for ch in dict.fromkeys(EXTRA + CJK) if ch.strip()]
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(ch, -3.0) for ch in chars] + [("\u2581" + ch, -3.5) for ch in chars] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizerFast(vocab=pieces)
    tokenizer.model_max_length = 128
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=len(pieces),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XLM-R in Hugging Face layout (read-only use)."""
    return build_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"))


@contextlib.contextmanager
def _serve_in_thread(app: Any, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Run an ASGI ``app`` under uvicorn in a thread on an ephemeral loopback port; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(start_timeout)
        sock.close()


@pytest.fixture(scope="session")
def serve_app() -> Any:
    """``with serve_app(app) as base_url:`` runs a FastAPI app on loopback for the block (shared by server tests)."""
    pytest.importorskip("uvicorn")
    return _serve_in_thread


class SyncLog(list):
    """The ``("fsync", path)`` and ``("rename", "src -> dst")`` events of a test, in order."""

    def assert_published(self, path: Path) -> None:
        """``path`` was renamed into place from a synced file, and its directory synced afterwards."""
        renames = [i for i, (kind, what) in enumerate(self) if kind == "rename" and what.endswith(f"-> {path}")]
        assert renames, f"{path.name} was not renamed into place"
        tmp = self[renames[-1]][1].split(" -> ")[0]
        assert ("fsync", tmp) in self[: renames[-1]], f"{path.name} was not synced before its rename"
        assert ("fsync", str(path.parent)) in self[renames[-1] :], f"the directory was not synced after {path.name}"


@pytest.fixture
def sync_log(monkeypatch: pytest.MonkeyPatch) -> SyncLog:
    """Record every ``os.fsync`` (as the synced path) and ``Path.replace`` of the test."""
    events = SyncLog()
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        real_fsync(fd)

    def replace(self: Path, target: Path) -> Path:
        events.append(("rename", f"{self} -> {target}"))
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    return events
