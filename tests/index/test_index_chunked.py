"""Chunked indexes: rows are chunks with their document and span; search ranks documents by their best chunk."""

import itertools
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.chunking import Chunker
from piccolo_embed.index import IncompleteIndexError, IndexStore, Searcher, build_index
from piccolo_embed.index.chunked import DocumentChunks, DocumentSearcher, document_chunks
from piccolo_embed.index.corpus import Passage
from piccolo_embed.index.fingerprint import PROBE_TEXTS
from piccolo_embed.types import Role

DIM = 8
DATA = ("embeddings.f32", "texts.jsonl", "offsets.u64")
SENTENCES = ["今天天气很好。", "我们去公园散步！", "明天会下雨吗？", "北京上海的美食推荐；", "如何学习编程。", "机器人"]


class CrashError(RuntimeError):
    pass


class HashEncoder:
    """Unit vectors from a text hash; raises on the ``crash_on``-th passage encode call (1-based)."""

    name = "hash"

    def __init__(self, crash_on: int | None = None) -> None:
        self.crash_on, self.calls, self.passages = crash_on, 0, []

    def encode(self, texts, *, role=None):
        if Role.coerce(role) is Role.PASSAGE and tuple(texts) != PROBE_TEXTS:  # not the fingerprint's probes
            self.calls += 1
            if self.calls == self.crash_on:
                raise CrashError("simulated crash")
            self.passages.extend(texts)
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts]
        return np.asarray([r / np.linalg.norm(r) for r in rows], dtype=np.float32).reshape(len(texts), DIM)


def char_spans(texts):
    """One token per character: easy budgets to reason about."""
    return [[(i, i + 1) for i in range(len(text))] for text in texts]


def chunkers(chunk_tokens=20, overlap_tokens=5):
    return lambda role: Chunker(char_spans, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


def document(i: int) -> str:
    """Sentences tagged with the document's number, so no two chunks share a text (and a vector)."""
    return "".join(f"{i}{SENTENCES[(i + j) % len(SENTENCES)]}" for j in range(3 + i % 5)) + f"第{i}号"


def write_corpus(path: Path, n: int, start: int = 0, title: bool = False) -> Path:
    rows = [
        {"_id": f"d{i}", "text": document(i)} | ({"title": "标题"} if title else {}) for i in range(start, start + n)
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def build(corpus, directory, encoder=None, **kwargs):
    encoder = encoder or HashEncoder()
    return build_index(encoder, corpus, directory, chunks=DocumentChunks(encoder, chunkers()), **kwargs)


def test_rows_are_chunks_with_document_and_span(tmp_path):
    store = build(write_corpus(tmp_path / "c.jsonl", 12), tmp_path / "idx", chunk_size=7)
    entries = list(store.iter_entries())
    assert store.count == len(entries) > 12  # documents were cut
    for i in range(12):
        rows = [e for e in entries if e["doc"] == f"d{i}"]
        assert [e["chunk"] for e in rows] == list(range(len(rows)))
        assert [e["id"] for e in rows] == [f"d{i}#{n}" for n in range(len(rows))]
        assert all(document(i)[e["start"] : e["end"]] == e["text"] and len(e["text"]) <= 20 for e in rows)
        assert rows[0]["start"] == 0 and rows[-1]["end"] == len(document(i))
        assert all(b["start"] <= a["end"] for a, b in itertools.pairwise(rows))  # no gap


def test_steps_end_at_document_boundaries():
    source = DocumentChunks(HashEncoder(), chunkers())
    passages = [Passage(id=f"d{i}", text=document(i), line=i + 1) for i in range(9)]
    steps = list(source(passages, start_line=0, role=Role.PASSAGE, dim=DIM, chunk_size=5))
    assert len(steps) > 1
    for rows, vectors in steps:
        assert len(rows) >= 5 or rows is steps[-1][0]
        assert vectors.shape == (len(rows), DIM)
        last = rows[-1]
        assert last.end == len(document(int(last.doc_id[1:])))  # the step closes with a document's last chunk


def test_title_is_embedded_with_every_chunk_and_takes_from_the_budget():
    encoder = HashEncoder()
    rows = document_chunks(chunkers()(Role.PASSAGE), Passage(id=None, text=document(3), title="标题", line=4), 0)
    assert {r.doc_id for r in rows} == {"4"}  # no id: the corpus line
    assert all(r.embed_text == f"标题 {r.text}" and len(r.embed_text) <= 20 for r in rows)
    encoder.encode([r.embed_text for r in rows], role="passage")
    with pytest.raises(ValueError, match="document x: its title takes 21 tokens"):
        document_chunks(chunkers()(Role.PASSAGE), Passage(id="x", text="短", title="长" * 20), 0)


def brute_force(store: IndexStore, query: np.ndarray, k: int) -> list[tuple[str, int]]:
    """Every row scored; each document keeps its best row."""
    scores = store.vectors(range(store.count)) @ query
    best: dict[str, tuple[float, int]] = {}
    for row, entry in enumerate(store.iter_entries()):
        doc = entry.get("doc", f"row{row}")
        if doc not in best or scores[row] > best[doc][0]:
            best[doc] = (float(scores[row]), row)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
    return [(doc if not doc.startswith("row") else store.entries([row])[0]["id"], row) for doc, (_, row) in ranked]


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_document_search_equals_brute_force(tmp_path, k):
    encoder = HashEncoder()
    store = build(write_corpus(tmp_path / "c.jsonl", 20), tmp_path / "idx", encoder)
    searcher = DocumentSearcher(Searcher(store, encoder), overfetch=2)  # small: the deepening retries run
    queries = encoder.encode([f"问题{i}" for i in range(6)], role="query")
    for query, hits in zip(queries, searcher.search_vectors(queries, k), strict=True):
        assert [(h.id, h.row) for h in hits] == brute_force(store, query, k)
        assert len(hits) == min(k, 20)
        for hit in hits:
            entry = store.entries([hit.row])[0]
            assert (hit.chunk, hit.start, hit.end, hit.text) == (
                entry["chunk"],
                entry["start"],
                entry["end"],
                entry["text"],
            )
            assert document(int(hit.id[1:]))[hit.start : hit.end] == hit.text
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_document_search_on_a_plain_index_is_plain_search(tmp_path):
    encoder = HashEncoder()
    store = build_index(encoder, write_corpus(tmp_path / "c.jsonl", 30), tmp_path / "idx")
    plain = Searcher(store, encoder)
    queries = [f"问题{i}" for i in range(5)]
    documents = DocumentSearcher(plain).search(queries, k=7)
    assert [[h.to_json() for h in hits] for hits in documents] == [
        [h.to_json() for h in hits] for hits in plain.search(queries, k=7)
    ]


def test_plain_rows_appended_to_a_chunked_index_stand_alone(tmp_path):
    encoder = HashEncoder()
    build(write_corpus(tmp_path / "a.jsonl", 5), tmp_path / "idx", encoder)
    store = build_index(encoder, write_corpus(tmp_path / "b.jsonl", 5, start=5), tmp_path / "idx", mode="append")
    hits = DocumentSearcher(Searcher(store, encoder)).search(["问题"], k=10)[0]
    assert sorted(h.id for h in hits) == [f"d{i}" for i in range(10)]
    assert {h.id for h in hits if h.chunk is None} == {f"d{i}" for i in range(5, 10)}
    assert all("span" not in h.to_json() for h in hits if h.chunk is None)


def test_chunked_append_encodes_only_the_new_documents(tmp_path):
    build(write_corpus(tmp_path / "a.jsonl", 6), tmp_path / "idx")
    appender = HashEncoder()
    store = build(write_corpus(tmp_path / "b.jsonl", 4, start=6), tmp_path / "idx", appender, mode="append")
    assert {e["doc"] for e in store.iter_entries()} == {f"d{i}" for i in range(10)}
    assert all(any(t in document(i) for i in range(6, 10)) for t in appender.passages)

    build(write_corpus(tmp_path / "all.jsonl", 10), tmp_path / "clean")
    assert [(e["doc"], e["start"], e["end"]) for e in store.iter_entries()] == [
        (e["doc"], e["start"], e["end"]) for e in IndexStore.open(tmp_path / "clean").iter_entries()
    ]


def test_interrupted_chunked_build_resumes_at_the_next_document(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 30, title=True)
    with pytest.raises(CrashError):
        build(corpus, tmp_path / "idx", HashEncoder(crash_on=4), chunk_size=10)
    with pytest.raises(IncompleteIndexError, match="rerun"):
        IndexStore.open(tmp_path / "idx")
    checkpoint = json.loads((tmp_path / "idx" / "checkpoint.json").read_text(encoding="utf-8"))
    done = checkpoint["lines_done"]
    assert 0 < done < 30

    resumed = HashEncoder()
    store = build(corpus, tmp_path / "idx", resumed, chunk_size=10)
    assert store.count > checkpoint["rows"]
    assert not (tmp_path / "idx" / "checkpoint.json").exists()
    clean = HashEncoder()
    build(corpus, tmp_path / "clean", clean, chunk_size=10)
    assert resumed.passages == clean.passages[checkpoint["rows"] :]  # finished documents were not re-encoded
    files = {name: (tmp_path / "idx" / name).read_bytes() for name in DATA}
    assert files == {name: (tmp_path / "clean" / name).read_bytes() for name in DATA}


def cli(*argv: object) -> int:
    from piccolo_embed.cli import build_parser

    args = build_parser(("piccolo_embed.cli.index", "piccolo_embed.cli.search")).parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_index_chunk_and_search_returns_documents_with_spans(tiny_bert_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 8)
    index = tmp_path / "idx"
    assert cli("index", "--model", tiny_bert_dir, "--corpus", corpus, "--output", index, "--chunk",
               "--chunk-tokens", 12, "--overlap-tokens", 3, "--chunk-size", 10) == 0  # fmt: skip
    assert "chunks into" in capsys.readouterr().out
    assert IndexStore.open(index).count > 8

    assert cli("search", "--index", index, "今天天气很好", "-k", 5, "--json") == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 5 and len({h["id"] for h in hits}) == 5  # five documents, not five chunks of one
    for hit in hits:
        start, end = hit["span"]
        assert document(int(hit["id"][1:]))[start:end] == hit["text"] and hit["chunk"] >= 0
    assert cli("search", "--index", index, "今天天气很好", "-k", 2) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{hits[0]['id']} [{hits[0]['span'][0]}:{hits[0]['span'][1]}]" in lines[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--chunk-tokens", 12), "--chunk-tokens only apply with --chunk"),
        (("--chunk", "--chunk-tokens", 100000), "chunk_tokens 100000 is more than role passage can read"),
    ],
)
def test_cli_chunk_option_errors(tiny_bert_dir, tmp_path, capsys, extra, message):
    from piccolo_embed.cli import main

    corpus = write_corpus(tmp_path / "c.jsonl", 2)
    argv = ["index", "--model", tiny_bert_dir, "--corpus", corpus, "--output", tmp_path / "idx", *extra]
    assert main([str(a) for a in argv]) == 2
    assert message in capsys.readouterr().err
