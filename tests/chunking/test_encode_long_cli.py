"""``encode --long``: chunk rows with their spans, mean vectors; the input is read once; no temporary file is left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed import Embedder
from piccolo_embed.chunking import Chunker, embed_long
from piccolo_embed.cli import build_parser, main
from piccolo_embed.cli import encode as encode_cli

LONG = ("今天天气很好，我们去公园散步。明天会下雨吗？" * 12 + "北京上海的美食推荐。") * 3
DOCS = [LONG, "如何学习编程？", "机器人工智能" * 40 + "。" + LONG[:200], "深度神经网络"]


def run(*argv: object) -> int:
    args = build_parser(("piccolo_embed.cli.encode",)).parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def embedder(_tiny_bert_master: Path) -> Embedder:
    return Embedder.from_pretrained(_tiny_bert_master, device="cpu")


def write_input(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n", encoding="utf-8")
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_chunks_rows_and_spans_match_embed_long(embedder, _tiny_bert_master, tmp_path):
    source = write_input(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out.npy"
    options = ("--chunk-tokens", 40, "--overlap-tokens", 8)
    assert run("encode", "--model", _tiny_bert_master, "--role", "passage", "--input", source, "--output", out,
               "--long", "chunks", "--chunk-size", 3, "--device", "cpu", *options) == 0  # fmt: skip
    chunker = Chunker.for_model(embedder, chunk_tokens=40, overlap_tokens=8)
    expected = embed_long(embedder, DOCS, mode="chunks", chunker=chunker)
    vectors = np.load(out)
    np.testing.assert_allclose(vectors, expected.vectors, atol=1e-5)
    spans = [json.loads(line) for line in (tmp_path / "out.chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(spans) == len(vectors) > len(DOCS)
    assert [s["row"] for s in spans] == list(range(len(vectors)))
    assert [s["doc"] for s in spans] == expected.documents.tolist()  # across two --chunk-size steps
    for span, chunk in zip(spans, expected.chunks, strict=True):
        assert (span["chunk"], span["start"], span["end"]) == (chunk.index, chunk.start, chunk.end)
        assert DOCS[span["doc"]][span["start"] : span["end"]] == chunk.text
    assert leftovers(tmp_path) == []


def test_mean_matches_embed_long(embedder, _tiny_bert_master, tmp_path):
    source = write_input(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "mean.npy"
    assert run("encode", "--model", _tiny_bert_master, "--role", "passage", "--input", source, "--output", out,
               "--long", "mean", "--chunk-size", 2, "--device", "cpu") == 0  # fmt: skip
    np.testing.assert_allclose(np.load(out), embed_long(embedder, DOCS, mode="mean").vectors, atol=1e-5)
    assert not (tmp_path / "mean.chunks.jsonl").exists()


def test_input_is_read_once(_tiny_bert_master, tmp_path, monkeypatch):
    reads = []
    real = encode_cli.iter_texts
    monkeypatch.setattr(encode_cli, "iter_texts", lambda *a, **k: reads.append(a) or real(*a, **k))
    source = write_input(tmp_path / "docs.jsonl", DOCS)
    for mode in ("truncate", "mean", "chunks"):
        reads.clear()
        out = tmp_path / f"{mode}.npy"
        assert run("encode", "--model", _tiny_bert_master, "--input", source, "--output", out, "--long", mode) == 0
        assert len(reads) == 1, mode
    assert np.load(tmp_path / "truncate.npy").shape == (len(DOCS), 32)


@pytest.mark.parametrize("mode", ["truncate", "chunks"])
def test_failure_midway_leaves_no_files(_tiny_bert_master, tmp_path, capsys, mode):
    source = write_input(tmp_path / "docs.jsonl", DOCS)
    with source.open("a", encoding="utf-8") as handle:
        handle.write('{"txt": "坏"}\n')  # line 5: fails after the first steps were written
    out = tmp_path / "out.npy"
    code = main(["encode", "--model", str(_tiny_bert_master), "--input", str(source), "--output", str(out),
                 "--chunk-size", "2", "--long", mode])  # fmt: skip
    assert code == 2
    assert "docs.jsonl:5: field 'text'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]  # no output, spans or temporary file


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--chunk-tokens", "40"), "--chunk-tokens only apply with --long mean or --long chunks"),
        (("--long", "mean", "--spans", "s.jsonl"), "--spans only applies with --long chunks"),
        (("--long", "chunks", "--chunk-tokens", "100000"), "chunk_tokens 100000 is more than role none can read"),
    ],
)
def test_bad_long_options_are_one_line_errors(_tiny_bert_master, tmp_path, capsys, extra, message):
    source = write_input(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out.npy"
    argv = ["encode", "--model", str(_tiny_bert_master), "--input", str(source), "--output", str(out), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_header_rewrite_keeps_its_size(tmp_path):
    blocks = [(0, np.eye(3, 4, dtype=np.float32)), (3, np.ones((2, 4), dtype=np.float32) / 2)]
    assert encode_cli.write_matrix(tmp_path / "m.npy", 4, blocks) == 5
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), np.concatenate([b for _, b in blocks]))
    with pytest.raises(ValueError, match="expected row 3"):
        encode_cli.write_matrix(tmp_path / "bad.npy", 4, [blocks[0], (4, blocks[1][1])])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy"]


def test_tokenized_model_loads_the_tokenizer_for_an_encoder_without_one(embedder, _tiny_bert_master):
    from piccolo_embed.cli.long import tokenized_model
    from piccolo_embed.parallel.pool import QuietEmbedder

    class Pool:  # like EncoderPool: roles, but the model lives in worker processes
        roles = embedder.roles

    assert tokenized_model(QuietEmbedder(embedder, "tiny"), "unused") is embedder
    model = tokenized_model(Pool(), str(_tiny_bert_master))
    assert model.tokenizer is not embedder.tokenizer and model.roles is embedder.roles
    assert Chunker.for_model(model, chunk_tokens=40).chunk(LONG) == Chunker.for_model(embedder, chunk_tokens=40).chunk(
        LONG
    )
