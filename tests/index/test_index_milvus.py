"""Milvus Lite as the index store: round trip, resume after a kill, model check, and top-k equal to exact search."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("milvus_lite")

from test_index_store import HashEncoder, write_corpus

from piccolo_embed.index import (
    IncompleteIndexError,
    IndexNotFoundError,
    ModelMismatchError,
    Searcher,
    build_index,
)
from piccolo_embed.index.milvus import MilvusSearcher, MilvusStore, MilvusTarget, build_milvus, iter_rows

QUERIES = ["passage 3", "passage 17", "t41 passage 41", "完全无关的查询", "passage"]


def target(tmp_path, name="piccolo"):
    return MilvusTarget.parse(f"milvus:{tmp_path / 'm.db'}#{name}")


def rows_by_id(store):
    return {row["id"]: row for row in iter_rows(store)}


def test_parse_target(tmp_path):
    assert MilvusTarget.parse("milvus:http://h:19530#c") == MilvusTarget("http://h:19530", "c")
    local = MilvusTarget.parse("milvus:rel/x.db")
    assert local.is_lite and Path(local.uri).is_absolute() and local.collection == "piccolo"
    for bad in ("x.db", "milvus:"):
        with pytest.raises(ValueError, match="milvus"):
            MilvusTarget.parse(bad)


def test_round_trip_append_and_topk_equals_exact_flat(tmp_path):
    enc = HashEncoder()
    store = build_milvus(enc, write_corpus(tmp_path / "a.jsonl", 30), target(tmp_path), chunk_size=8)
    assert store.state.committed and store.count == 30 and store.state.model.name == "hash-0"
    with pytest.raises(FileExistsError, match="--append"):
        build_milvus(enc, tmp_path / "a.jsonl", target(tmp_path))
    # Append 20 new passages plus 5 already stored (same ids): upserted, not duplicated.
    write_corpus(tmp_path / "b.jsonl", 25, start=25)
    store = build_milvus(enc, tmp_path / "b.jsonl", target(tmp_path), mode="append", chunk_size=8)
    assert store.count == 50 and store.state.generation == 2
    stored = rows_by_id(store)
    assert sorted(stored) == sorted(f"d{i}" for i in range(50))
    np.testing.assert_allclose(stored["d7"]["vector"], enc.vector("t7 passage 7"), atol=1e-6)
    assert stored["d7"]["text"] == "passage 7" and stored["d7"]["title"] == "t7"

    exact = build_index(enc, write_corpus(tmp_path / "all.jsonl", 50), tmp_path / "flat", chunk_size=8)
    got = MilvusSearcher(MilvusStore.open(target(tmp_path)), enc).search(QUERIES, k=10)
    want = Searcher(exact, enc).search(QUERIES, k=10)
    for hits, reference in zip(got, want, strict=True):
        assert [h.id for h in hits] == [h.id for h in reference]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in reference], atol=1e-5)


def test_model_mismatch_and_missing_collection(tmp_path):
    build_milvus(HashEncoder(), write_corpus(tmp_path / "a.jsonl", 10), target(tmp_path))
    store = MilvusStore.open(target(tmp_path))
    with pytest.raises(ModelMismatchError, match="probe embeddings differ"):
        MilvusSearcher(store, HashEncoder(seed=1))
    with pytest.raises(ModelMismatchError):
        build_milvus(HashEncoder(seed=1), tmp_path / "a.jsonl", target(tmp_path), mode="append")
    with pytest.raises(IndexNotFoundError, match="no such collection"):
        MilvusStore.open(target(tmp_path, "other"))


KILLED_BUILD = """
import os, sys
sys.path.insert(0, {tests!r})
from test_index_store import HashEncoder
from piccolo_embed.index.milvus import build_milvus

class DiesAtPassage30(HashEncoder):
    def encode(self, texts, *, role=None):
        if any(t.endswith("passage 30") for t in texts):
            os._exit(9)  # like a SIGKILL: no cleanup, no exception handling
        return super().encode(texts, role=role)

build_milvus(DiesAtPassage30(), {corpus!r}, {target!r}, chunk_size=7)
"""


@pytest.mark.slow
def test_killed_build_resumes_without_duplicates(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    spec = f"milvus:{tmp_path / 'm.db'}#piccolo"
    script = KILLED_BUILD.format(tests=str(Path(__file__).parent), corpus=str(corpus), target=spec)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    with pytest.raises(IncompleteIndexError, match="rerun"):
        MilvusStore.open(spec)
    partial = MilvusStore.open(spec, allow_incomplete=True)
    assert partial.state.progress["lines_done"] == 28 and partial.count == 28  # four chunks of 7 finished

    enc = HashEncoder()
    store = build_milvus(enc, corpus, spec, chunk_size=7)
    encoded = [t for role, texts in enc.calls if role.value == "passage" and len(texts) == 7 for t in texts]
    assert encoded[0] == "t28 passage 28" and "t0 passage 0" not in encoded  # resumed after line 28
    stored = rows_by_id(store)
    assert store.count == 50 and len(stored) == 50
    assert sorted(row["row"] for row in stored.values()) == list(range(50))


def test_index_and_search_cli_with_milvus_store(tiny_bert_dir, tmp_path, capsys):
    from piccolo_embed.cli import build_parser

    def cli(*argv):
        args = build_parser(("piccolo_embed.cli.index", "piccolo_embed.cli.search")).parse_args([str(a) for a in argv])
        return args.func(args)

    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    spec = f"milvus:{tmp_path / 'cli.db'}"
    assert cli("index", "--model", tiny_bert_dir, "--corpus", corpus, "--store", spec, "--chunk-size", 6) == 0
    assert "indexed 20 passages" in capsys.readouterr().out
    assert cli("search", "--store", spec, "passage 3", "-k", 3, "--json") == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["query"] == "passage 3" and len(result["hits"]) == 3
    assert all(hit["id"].startswith("d") for hit in result["hits"])
