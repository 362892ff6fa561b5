"""Several worker processes give the same vectors as one encoder in this process, and fail loudly."""

import os

import numpy as np
import pytest

from piccolo_embed import Embedder
from piccolo_embed.parallel import EmbedderLoader, EncoderPool, WorkerError, length_sorted_shards, parse_devices

WORDS = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"
TEXTS = ["".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + (i * 13) % 60)) for i in range(90)]


def test_parse_devices():
    assert parse_devices("cuda:0, cuda:1", None) == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda", None) == ["cuda:0"]
    assert parse_devices(None, 3) == ["cpu", "cpu", "cpu"]
    assert parse_devices(None, None) == ["cpu"]
    for bad in ("gpu:0", "cuda:x", "cpu:1"):
        with pytest.raises(ValueError, match=bad):
            parse_devices(bad, None)
    with pytest.raises(ValueError, match="not both"):
        parse_devices("cuda:0", 2)
    with pytest.raises(ValueError, match="positive"):
        parse_devices(None, 0)


def test_shards_cover_every_row_once_longest_first():
    shards = length_sorted_shards(TEXTS, 16)
    rows = np.concatenate(shards)
    assert sorted(rows.tolist()) == list(range(len(TEXTS)))
    lengths = [len(TEXTS[row]) for row in rows]
    assert lengths == sorted(lengths, reverse=True)
    assert all(len(shard) == 16 for shard in shards[:-1])


@pytest.mark.dist
def test_two_processes_equal_one_encoder_in_input_order(tiny_bert_dir):
    expected = {
        role: Embedder.from_pretrained(tiny_bert_dir, device="cpu").encode(TEXTS, role)
        for role in ("query", "passage", None)
    }
    loader = EmbedderLoader(str(tiny_bert_dir), name="tiny")
    with EncoderPool(loader, ["cpu", "cpu"], threads=1, shard_size=7) as pool:
        assert pool.dim == 32 and pool.name == "tiny" and set(pool.roles) == {"query", "passage", "none"}
        for role, vectors in expected.items():
            got = pool.encode(TEXTS, role=role)
            np.testing.assert_allclose(got, vectors, atol=1e-6, rtol=0)
        assert pool.encode([], role="query").shape == (0, 32)
    assert set(pool.worker_peak_rss) == {0, 1} and min(pool.worker_peak_rss.values()) > 0


class FailingLoader:
    """Loads nothing: raises on the second worker, or kills a worker at its first encode."""

    def __init__(self, mode):
        self.mode = mode

    def __call__(self, device):
        if self.mode == "raise":
            raise RuntimeError("no such model: broken-model")
        return self

    dim = 4

    def encode(self, texts, *, role=None):
        if self.mode == "die" and texts != ["probe"]:
            os._exit(3)
        if "坏" in texts:
            raise ValueError("cannot encode 坏")
        vectors = np.zeros((len(texts), 4), dtype=np.float32)
        vectors[:, 0] = [len(text) for text in texts]  # tells texts apart, so a stale result would show
        return vectors


@pytest.mark.dist
def test_worker_failures_raise_instead_of_hanging():
    with pytest.raises(WorkerError, match="no such model: broken-model"):
        EncoderPool(FailingLoader("raise"), ["cpu", "cpu"], threads=1)
    with EncoderPool(FailingLoader("ok"), ["cpu"], threads=1, shard_size=1) as pool:
        with pytest.raises(WorkerError, match="cannot encode 坏"):
            pool.encode(["坏", "好", "好"])
        # The two shards after the failure still answer, late; the next call must not take their results.
        assert pool.encode(["甲乙", "甲乙丙"])[:, 0].tolist() == [2.0, 3.0]
    with EncoderPool(FailingLoader("die"), ["cpu"], threads=1) as pool, pytest.raises(WorkerError, match="died"):
        pool.encode(["今天"])
