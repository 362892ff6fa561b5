"""Data safety of indexes (issue 18): no loss on overwrite, confined manifest paths, checksums, refused input."""

import contextlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.cli import main
from piccolo_embed.data.records import RecordError
from piccolo_embed.index import (
    CorruptIndexError,
    DuplicateIdError,
    EmptyCorpusError,
    IndexStore,
    Passage,
    Searcher,
    build_index,
    checksum,
)
from piccolo_embed.types import Role, RoleSpec

DIM = 8


class HashEncoder:
    """Unit vectors from a text hash; ``nan_for`` texts get NaN rows; counts the passages it encodes."""

    name = "hash"

    def __init__(self, nan_for: str | None = None) -> None:
        self.nan_for, self.passages = nan_for, []
        self.roles = {r: RoleSpec("", 64) for r in Role}

    def encode(self, texts, *, role=None):
        rows = []
        for text in texts:
            v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM)
            rows.append(np.full(DIM, np.nan) if text == self.nan_for else v / np.linalg.norm(v))
        if Role.coerce(role) is Role.PASSAGE and texts and texts[0].startswith("p"):
            self.passages.extend(texts)
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), DIM)


def write_corpus(path: Path, ids: list[int] | range, *, bad_line: int | None = None) -> Path:
    lines = [json.dumps({"_id": f"d{i}", "text": f"p{i}"}) for i in ids]
    if bad_line is not None:
        lines[bad_line - 1] = "{not json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def top_id(directory: Path, text: str) -> str:
    return Searcher(IndexStore.open(directory), HashEncoder()).search([text], k=1)[0][0].id


# --- overwrite builds beside the old index and swaps only when complete ---


def test_a_failed_overwrite_keeps_the_old_index_searchable(tmp_path):
    idx = tmp_path / "idx"
    build_index(HashEncoder(), write_corpus(tmp_path / "a.jsonl", range(20)), idx, chunk_size=5)
    before = {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(RecordError, match=r"b\.jsonl:12"):
        build_index(
            HashEncoder(),
            write_corpus(tmp_path / "b.jsonl", range(100, 130), bad_line=12),
            idx,
            mode="overwrite",
            chunk_size=5,
        )
    assert {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert IndexStore.open(idx).count == 20 and top_id(idx, "p7") == "d7"

    store = build_index(HashEncoder(), write_corpus(tmp_path / "b.jsonl", range(100, 130)), idx, mode="overwrite")
    assert store.count == 30 and top_id(idx, "p107") == "d107"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "idx"]  # nothing staged is left


def test_overwrite_refuses_a_directory_holding_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        build_index(HashEncoder(), write_corpus(tmp_path / "a.jsonl", range(3)), tmp_path, mode="overwrite")
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


# --- paths read from the manifest stay inside the index directory ---


def test_a_manifest_path_outside_the_index_is_refused_and_never_deleted(tmp_path):
    idx = tmp_path / "idx"
    build_index(HashEncoder(), write_corpus(tmp_path / "a.jsonl", range(10)), idx, index_type="hnsw")
    victim = tmp_path / "victim.faiss"
    (idx / "ann-1.faiss").replace(victim)
    manifest = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    manifest["ann_file"] = "../victim.faiss"
    (idx / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    with pytest.raises(CorruptIndexError, match="victim"):
        IndexStore.open(idx)
    with pytest.raises(CorruptIndexError, match="victim"):
        build_index(HashEncoder(), write_corpus(tmp_path / "b.jsonl", range(10, 15)), idx, mode="append")
    assert victim.is_file()


# --- checksums: verified cheaply at open, fully by verify() / index --verify ---


def two_generations(tmp_path: Path) -> Path:
    build_index(HashEncoder(), write_corpus(tmp_path / "a.jsonl", range(12)), tmp_path / "idx", chunk_size=5)
    build_index(HashEncoder(), write_corpus(tmp_path / "b.jsonl", range(12, 20)), tmp_path / "idx", mode="append")
    return tmp_path / "idx"


@pytest.fixture
def index_dir(tmp_path) -> Path:
    return two_generations(tmp_path)


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda d: patch(d / "embeddings.f32", 4 * DIM * 3, np.full(DIM, np.nan, "<f4").tobytes()), id="nan-row"
        ),
        pytest.param(
            lambda d: patch(d / "embeddings.f32", 0, (d / "embeddings.f32").read_bytes()[4 * DIM : 8 * DIM]),
            id="rows-overwritten",
        ),
        pytest.param(
            lambda d: patch(
                d / "offsets.u64", 8, (d / "offsets.u64").read_bytes()[16:24] + (d / "offsets.u64").read_bytes()[8:16]
            ),
            id="offsets-swapped",
        ),
        pytest.param(lambda d: patch(d / "texts.jsonl", 12, b"X"), id="text-edited"),
        pytest.param(lambda d: patch(d / "probes.npy", 140, b"\x01"), id="probes-edited"),
    ],
)
def test_an_edited_file_fails_at_open(index_dir, damage):
    IndexStore.open(index_dir).verify(full=True)  # intact before
    damage(index_dir)
    with pytest.raises(CorruptIndexError, match="checksum mismatch"):
        IndexStore.open(index_dir)


def test_large_files_are_sampled_at_open_and_hashed_in_full_by_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checksum, "FULL_AT_OPEN_BYTES", 0)
    monkeypatch.setattr(checksum, "SAMPLE_BLOCK_BYTES", 8)  # so most bytes of the tiny files are not sampled
    index_dir = two_generations(tmp_path)
    assert main(["index", "--verify", "--output", str(index_dir)]) == 0
    assert "ok (20 passages" in capsys.readouterr().out
    step = max(8, (4 * DIM * 20) // checksum.SAMPLE_BLOCKS)
    patch(index_dir / "embeddings.f32", step + 16, b"\x00\x00\x80\x7f")  # +inf between two sampled blocks
    IndexStore.open(index_dir)  # the cheap check does not read that byte
    assert main(["index", "--verify", "--output", str(index_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "embeddings.f32" in err and "checksum mismatch" in err and len(err.splitlines()) == 1
    patch(index_dir / "embeddings.f32", 0, b"\x00")  # the first block is always sampled
    with pytest.raises(CorruptIndexError, match="sampled"):
        IndexStore.open(index_dir)


def test_a_broken_ann_file_or_manifest_is_a_one_line_error(tmp_path):
    idx = tmp_path / "idx"
    build_index(HashEncoder(), write_corpus(tmp_path / "a.jsonl", range(10)), idx, index_type="hnsw")
    (idx / "ann-1.faiss").write_bytes(b"garbage")
    with pytest.raises(CorruptIndexError, match=r"ann-1\.faiss"):
        IndexStore.open(idx)
    manifest = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    del manifest["checksums"], manifest["count"]
    (idx / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(CorruptIndexError, match=r"manifest\.json: missing key 'count'"):
        IndexStore.open(idx)


# --- refused input: NaN vectors, duplicate ids, empty corpus or query ---


def test_nan_rows_are_refused_naming_the_passage(tmp_path):
    with pytest.raises(ValueError, match=r"NaN or infinite values for the passage at line 4 \(id 'd3'\)"):
        build_index(HashEncoder(nan_for="p3"), write_corpus(tmp_path / "a.jsonl", range(6)), tmp_path / "idx")
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_duplicate_ids_are_refused_before_encoding_or_skipped_and_counted(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "a.jsonl", [0, 1, 2, 1, 3, 2])
    encoder = HashEncoder()
    with pytest.raises(DuplicateIdError, match=r"a\.jsonl:4: id 'd1' .* \(2 passages repeat an id"):
        build_index(encoder, corpus, tmp_path / "idx")
    assert encoder.passages == [] and not (tmp_path / "idx" / "manifest.json").exists()

    store = build_index(HashEncoder(), corpus, tmp_path / "idx", skip_duplicates=True, chunk_size=2)
    assert [e["id"] for e in store.iter_entries()] == ["d0", "d1", "d2", "d3"]
    assert store.manifest.sources[-1]["skipped_duplicates"] == 2


def fake_model(monkeypatch, module, encoder) -> None:
    """Make ``module``'s CLI handler get ``encoder`` for any --model (no model files needed)."""

    @contextlib.contextmanager
    def open_encoder(args, name):
        encoder.dim = DIM
        yield encoder

    monkeypatch.setattr(module, "open_encoder", open_encoder)


def test_reappending_the_same_corpus_is_refused_or_adds_nothing(tmp_path, capsys, monkeypatch):
    from piccolo_embed.cli import index as index_cli

    corpus, idx = write_corpus(tmp_path / "a.jsonl", range(5)), tmp_path / "idx"
    build_index(HashEncoder(), corpus, idx)
    with pytest.raises(DuplicateIdError, match="5 passages repeat an id"):
        build_index(HashEncoder(), corpus, idx, mode="append")
    assert IndexStore.open(idx).count == 5
    fake_model(monkeypatch, index_cli, HashEncoder())
    argv = ["index", "--model", "m", "--corpus", str(corpus), "--output", str(idx), "--append"]
    assert main(argv) == 2 and "--skip-duplicates" in capsys.readouterr().err
    assert main([*argv, "--skip-duplicates"]) == 0
    out = capsys.readouterr().out
    assert "indexed 0 passages" in out and "skipped 5 with duplicate ids" in out
    store = IndexStore.open(idx)
    assert store.count == 5 and store.manifest.sources[-1] == {
        "path": str(corpus.resolve()),
        "first_row": 5,
        "rows": 0,
        "skipped_duplicates": 5,
    }


def test_duplicates_from_an_iterable_source_are_refused(tmp_path):
    passages = [Passage("a", "p1"), Passage("b", "p2"), Passage("a", "p3")]
    with pytest.raises(DuplicateIdError, match="id 'a'"):
        build_index(HashEncoder(), passages, tmp_path / "idx")


@pytest.mark.parametrize("source", ["file", "iterable"])
def test_an_empty_corpus_is_an_error(tmp_path, source):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(EmptyCorpusError, match="no passages"):
        build_index(HashEncoder(), corpus if source == "file" else [], tmp_path / "idx")
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_an_empty_query_is_an_error(index_dir):
    searcher = Searcher(IndexStore.open(index_dir), HashEncoder())
    with pytest.raises(ValueError, match="query 1 is empty"):
        searcher.search(["p1", "  "], k=1)


# --- durability: every file an index publishes is synced, renamed into place, and its directory synced ---


def test_probes_manifest_and_ann_file_are_written_atomically_with_fsync(tmp_path, sync_log):
    idx = (tmp_path / "idx").resolve()
    build_index(HashEncoder(), write_corpus(tmp_path / "a.jsonl", range(6)), idx, index_type="hnsw", chunk_size=3)
    for name in ("probes.npy", "manifest.json", "ann-1.faiss", "checkpoint.json"):
        sync_log.assert_published(idx / name)
    checkpoint = next(i for i, (kind, what) in enumerate(sync_log) if kind == "rename" and "checkpoint" in what)
    for name in ("embeddings.f32", "texts.jsonl", "offsets.u64"):
        assert ("fsync", str(idx / name)) in sync_log[:checkpoint], f"{name} was not synced before the checkpoint"


def test_encode_refuses_nan_output_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from piccolo_embed.cli import encode

    fake_model(monkeypatch, encode, HashEncoder(nan_for="b"))
    source = tmp_path / "in.txt"
    source.write_text("a\nb\nc\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert main(["encode", "--model", "unused", "--input", str(source), "--output", str(out)]) == 2
    assert "NaN or infinite values for row 2" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
