"""End-to-end ``index`` / ``search`` through the CLI handlers with the tiny test model."""

import importlib.util
import json
from pathlib import Path

import pytest

from piccolo_embed.cli import build_parser
from piccolo_embed.index import IndexStore, ModelMismatchError

MODULES = ("piccolo_embed.cli.index", "piccolo_embed.cli.search")


def build_tiny_bert(directory: Path, seed: int) -> Path:
    # Loaded by path: `from conftest import ...` resolves to whichever conftest.py was imported first.
    spec = importlib.util.spec_from_file_location("piccolo_root_conftest", Path(__file__).parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_bert(directory, seed=seed)


WORDS = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"


def cli(*argv: str) -> int:
    args = build_parser(MODULES).parse_args([str(a) for a in argv])
    return args.func(args)


def write_corpus(path, n, start=0):
    rows = []
    for i in range(start, start + n):
        text = "".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) + str(i)
        rows.append(json.dumps({"_id": f"doc{i}", "title": WORDS[i % len(WORDS)], "text": text}, ensure_ascii=False))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_index_search_append_and_model_check(tiny_bert_dir, tmp_path, capsys):
    index = tmp_path / "idx"
    assert (
        cli(
            "index",
            "--model",
            tiny_bert_dir,
            "--corpus",
            write_corpus(tmp_path / "a.jsonl", 30),
            "--output",
            index,
            "--chunk-size",
            8,
        )
        == 0
    )
    assert "indexed 30 passages" in capsys.readouterr().out
    manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["name"] == str(tiny_bert_dir.resolve()) and manifest["dim"] == 32

    assert cli("search", "--index", index, "北京的美食", "如何学习", "-k", 3, "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == ["北京的美食", "如何学习"]
    hits = lines[0]["hits"]
    assert len(hits) == 3 and hits[0]["id"].startswith("doc") and hits[0]["title"]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    assert cli("search", "--index", index, "--model", tiny_bert_dir, "北京的美食", "-k", 3, "--json") == 0
    again = json.loads(capsys.readouterr().out)["hits"]  # explicit model = recorded model
    # One query alone instead of two in a batch: the same vectors up to float rounding (CPU kernels block by shape).
    assert [{k: v for k, v in h.items() if k != "score"} for h in again] == [
        {k: v for k, v in h.items() if k != "score"} for h in hits
    ]
    assert [h["score"] for h in again] == pytest.approx([h["score"] for h in hits], abs=1e-6)

    assert (
        cli(
            "index",
            "--model",
            tiny_bert_dir,
            "--corpus",
            write_corpus(tmp_path / "b.jsonl", 5, start=30),
            "--output",
            index,
            "--append",
        )
        == 0
    )
    assert IndexStore.open(index).count == 35

    other = build_tiny_bert(tmp_path / "other", seed=1)
    with pytest.raises(ModelMismatchError, match="probe embeddings differ"):
        cli("search", "--index", index, "--model", other, "北京")
    with pytest.raises(FileExistsError):
        cli("index", "--model", tiny_bert_dir, "--corpus", tmp_path / "a.jsonl", "--output", index)


def test_search_prints_a_ranked_table(tiny_bert_dir, tmp_path, capsys):
    index = tmp_path / "idx"
    cli("index", "--model", tiny_bert_dir, "--corpus", write_corpus(tmp_path / "a.jsonl", 4), "--output", index)
    capsys.readouterr()
    assert cli("search", "--index", index, "公园", "-k", 2) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "query: 公园"
    assert out[1].split()[0] == "1" and out[2].split()[0] == "2" and "doc" in out[1]
