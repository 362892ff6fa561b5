"""End-to-end ``mine`` through the CLI handler with the tiny test model."""

import argparse
import json

import pytest

from piccolo_embed.cli import build_parser
from piccolo_embed.cli.mine import parse_range
from piccolo_embed.data.records import read_records

WORDS = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"


def cli(*argv: str) -> int:
    args = build_parser(("piccolo_embed.cli.mine",)).parse_args([str(a) for a in argv])
    return args.func(args)


def write_pairs(path, n):
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            query = "".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(5))
            pos = query + "".join(WORDS[(i * 11 + j * 7) % len(WORDS)] for j in range(8)) + str(i)
            handle.write(json.dumps({"query": query, "pos": [pos], "neg": []}, ensure_ascii=False) + "\n")
    return path


def test_mine_writes_stage2_records_and_stats(tiny_bert_dir, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40)
    argv = [
        "mine",
        "--model",
        tiny_bert_dir,
        "--input",
        pairs,
        "--range",
        "2-20",
        "--k",
        3,
        "--max-score-ratio",
        "none",
        "--seed",
        5,
    ]
    assert cli(*argv, "--output", tmp_path / "a.jsonl", "--stats", tmp_path / "stats.json") == 0
    out = capsys.readouterr().out
    assert "queries mined            40" in out and "negative_scores" in out

    records = list(read_records(tmp_path / "a.jsonl", "triplet"))
    assert len(records) == 40
    for record in records:
        assert 1 <= len(record.neg) <= 3 and not set(record.neg) & set(record.pos)
    stats = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    assert stats["queries"] == 40 and stats["negatives_chosen"] == sum(len(r.neg) for r in records)
    assert set(stats["positive_scores"]) >= {"min", "mean", "p50", "p95", "max"}

    assert cli(*argv, "--output", tmp_path / "b.jsonl", "--query-batch", 7) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_range_parser():
    assert parse_range("10-100") == (10, 100)
    for bad in ("10", "a-b", "10:100"):
        with pytest.raises(argparse.ArgumentTypeError, match="START-END"):
            parse_range(bad)
