"""``encode``, ``index`` and ``mine`` with two worker processes write what one process writes."""

import json

import numpy as np
import pytest

from piccolo_embed.cli import build_parser
from piccolo_embed.index import IndexStore

WORDS = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"
MODULES = ("piccolo_embed.cli.encode", "piccolo_embed.cli.index", "piccolo_embed.cli.mine")
pytestmark = pytest.mark.dist


def cli(*argv):
    args = build_parser(MODULES).parse_args([str(a) for a in argv])
    return args.func(args)


def text(i, n):
    return "".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n)) + str(i)


def test_encode_two_processes_equals_one(tiny_bert_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(text(i, 3 + i % 40) for i in range(70)) + "\n", encoding="utf-8")
    common = ["encode", "--model", tiny_bert_dir, "--role", "passage", "--input", source, "--chunk-size", 32]
    assert cli(*common, "--output", tmp_path / "one.npy", "--device", "cpu") == 0
    assert cli(*common, "--output", tmp_path / "two.npy", "--processes", 2, "--shard-size", 5) == 0
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (70, 32)
    np.testing.assert_allclose(two, one, atol=1e-6, rtol=0)


def test_index_and_mine_two_processes_equal_one(tiny_bert_dir, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "title": WORDS[i % 9], "text": text(i, 5 + i % 30)} for i in range(60)]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    stores = {}
    for label, extra in (("one", ["--device", "cpu"]), ("two", ["--processes", 2, "--shard-size", 6])):
        argv = ["index", "--model", tiny_bert_dir, "--corpus", corpus, "--output", tmp_path / label]
        assert cli(*argv, "--chunk-size", 16, *extra) == 0
        stores[label] = IndexStore.open(tmp_path / label)
    np.testing.assert_allclose(stores["two"].embeddings(), stores["one"].embeddings(), atol=1e-6, rtol=0)
    assert (tmp_path / "one" / "texts.jsonl").read_bytes() == (tmp_path / "two" / "texts.jsonl").read_bytes()
    assert stores["one"].manifest.model.digest == stores["two"].manifest.model.digest

    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w", encoding="utf-8") as handle:
        for i in range(25):
            record = {"query": text(i, 4), "pos": [text(i, 5 + i % 30)], "neg": []}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    for label, extra in (("one", ["--device", "cpu"]), ("two", ["--processes", 2, "--shard-size", 4])):
        argv = ["mine", "--model", tiny_bert_dir, "--input", pairs, "--corpus", corpus, "--range", "1-20"]
        argv += ["--k", 3, "--max-score-ratio", "none", "--output", tmp_path / f"{label}.jsonl"]
        assert cli(*argv, "--chunk-size", 16, "--query-batch", 8, "--stats", tmp_path / f"{label}.json", *extra) == 0
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    one, two = (json.loads((tmp_path / f"{x}.json").read_text(encoding="utf-8")) for x in ("one", "two"))
    assert one["negatives_chosen"] == two["negatives_chosen"] > 0
    np.testing.assert_allclose(one["positive_scores"]["mean"], two["positive_scores"]["mean"], atol=1e-6)
