"""Encoding on Ray: block planning and parsing (no cluster), then 2 local actors against one process."""

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.cli import build_parser
from piccolo_embed.index import IndexStore, build_index, read_corpus
from piccolo_embed.parallel import EmbedderLoader
from piccolo_embed.parallel.ray_encode import (
    EncodeActor,
    RayChunks,
    RayOptions,
    exactly_once,
    plan_blocks,
    read_passages,
    read_texts,
)

WORDS = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"


def write_corpus(path, n):
    lines = []
    for i in range(n):
        text = "".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 25)) + str(i)
        row = {"text": text} if i % 4 == 0 else {"_id": f"d{i}", "title": WORDS[i % 9], "text": text}
        lines.append(json.dumps(row, ensure_ascii=False))
        if i % 6 == 5:
            lines.append("")  # blank lines are skipped but counted as lines
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("start_line", [0, 9])
def test_blocks_parse_like_the_corpus_reader(tmp_path, start_line):
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    blocks = plan_blocks(corpus, start_line, 7)
    records = [r for block in blocks for r in read_passages(block, str(corpus))]
    expected = list(read_corpus(corpus, start_line=start_line))
    assert [r["row"] for r in records] == list(range(len(expected)))
    assert [(r["line"], r["id"] or None, r["text"], r["title"]) for r in records] == [
        (p.line, p.id, p.text, p.title) for p in expected
    ]


def test_text_blocks_keep_every_txt_line(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("一\n\n三\n四", encoding="utf-8")  # a blank line is a text; no final newline
    blocks = plan_blocks(source, 0, 2, count_blank=True)
    assert [r["text"] for b in blocks for r in read_texts(b, str(source), None)] == ["一", "", "三", "四"]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"t": "a"}\n\n{"t": "b"}\n{"x": 1}\n', encoding="utf-8")
    block = plan_blocks(jsonl, 0, 10)[0]
    with pytest.raises(ValueError, match=r"in.jsonl:4: field 't'"):
        read_texts(block, str(jsonl), "t")


def test_exactly_once_drops_repeats_and_refuses_gaps():
    batches = [{"row": np.array([0, 1, 2])}, {"row": np.array([1, 2, 3])}, {"row": np.array([4])}]
    kept = [batch["row"][keep].tolist() for batch, keep in exactly_once(batches, "c")]
    assert kept == [[0, 1, 2], [3], [4]]
    with pytest.raises(RuntimeError, match=r"rows 2\.\.3 never came back"):
        list(exactly_once([{"row": np.array([0, 1])}, {"row": np.array([4])}], "c"))


def test_actor_reads_and_encodes_its_blocks_without_ray(tiny_bert_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "title": "题", "text": "今天"}\n\n\n{"text": "明天"}\n', encoding="utf-8")
    loader = EmbedderLoader(str(tiny_bert_dir), name="tiny")
    actor = EncodeActor(loader, "passage", 1, "cpu", functools.partial(read_passages, path=str(corpus)))
    plans = plan_blocks(corpus, 0, 2)  # the second block holds only a blank line and "明天"
    columns = {key: np.array([plan[key] for plan in plans]) for key in plans[0]}
    out = actor(columns)
    assert out["row"].tolist() == [0, 1] and out["line"].tolist() == [1, 4] and out["id"].tolist() == ["a", ""]
    np.testing.assert_allclose(out["vector"], loader("cpu").encode(["题 今天", "明天"], role="passage"), atol=1e-6)
    blank = {key: np.array([value]) for key, value in plan_blocks(corpus, 1, 2)[0].items()}  # lines 2-3: blank
    assert actor(blank)["vector"].shape == (0, out["vector"].shape[1])


class DiesOnceLoader:
    """Loads the real model, but the first actor to encode a batch kills its own process (once per marker)."""

    def __init__(self, loader, marker):
        self.loader, self.marker = loader, marker

    def __call__(self, device):
        encoder = self.loader(device)
        marker = Path(self.marker)

        class Dying:
            name, roles, dim = encoder.name, encoder.roles, encoder.dim

            def encode(self, texts, *, role=None):
                if not marker.exists():
                    marker.touch()
                    os._exit(1)  # the actor's process dies mid-batch, as on a lost node
                return encoder.encode(texts, role=role)

        return Dying()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # Ray waits a fixed 30 s for its node to start: too short on an overloaded machine
            ray.shutdown()
            if attempt == 2:
                raise
    # Ray ships the test's loader class to its workers by value (they cannot import this test module).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_index_equals_one_process_even_when_an_actor_dies(local_ray, tiny_bert_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 60)
    loader = EmbedderLoader(str(tiny_bert_dir), name="tiny")
    encoder = loader("cpu")
    reference = build_index(encoder, corpus, tmp_path / "one", chunk_size=16)
    options = RayOptions(actors=2, cpus_per_actor=0.5, block_lines=8, init_options={"num_cpus": 2})
    runs = {
        "ray": RayChunks(loader, options),
        "ray-killed": RayChunks(DiesOnceLoader(loader, str(tmp_path / "died")), options),
    }
    for label, chunks in runs.items():
        store = build_index(encoder, corpus, tmp_path / label, chunk_size=16, chunks=chunks)
        assert store.count == reference.count == 60
        np.testing.assert_allclose(store.embeddings(), reference.embeddings(), atol=1e-6, rtol=0)
        assert (tmp_path / label / "texts.jsonl").read_bytes() == (tmp_path / "one" / "texts.jsonl").read_bytes()
    assert (tmp_path / "died").exists()  # an actor really was killed
    assert IndexStore.open(tmp_path / "ray-killed").manifest.model.digest == reference.manifest.model.digest
    source = tmp_path / "in.txt"
    texts = [row.text for row in read_corpus(corpus)][:30]
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    argv = ["encode", "--model", str(tiny_bert_dir), "--role", "query", "--input", str(source), "--ray"]
    argv += ["--output", str(tmp_path / "ray.npy"), "--ray-actors", "2", "--ray-cpus-per-actor", "0.5"]
    args = build_parser(("piccolo_embed.cli.encode",)).parse_args([*argv, "--shard-size", "8", "--chunk-size", "12"])
    assert args.func(args) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ray.npy"), encoder.encode(texts, role="query"), atol=1e-6, rtol=0)
