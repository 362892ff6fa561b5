import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.index import (
    CorruptIndexError,
    IndexNotFoundError,
    IndexStore,
    ModelMismatchError,
    Passage,
    Searcher,
    build_index,
)
from piccolo_embed.index.ann import exact_search
from piccolo_embed.index.fingerprint import check_same_model, fingerprint_encoder
from piccolo_embed.types import Role, RoleSpec

DIM = 8


class HashEncoder:
    """Deterministic unit vectors from (seed, role, text); records every call."""

    def __init__(self, seed: int = 0, noise: float = 0.0, prefix: str = "q:") -> None:
        self.seed, self.noise, self.name = seed, noise, f"hash-{seed}"
        self.roles = {r: RoleSpec(prefix if r is Role.QUERY else "", 64) for r in Role}
        self.calls: list[tuple[Role, list[str]]] = []

    def vector(self, text: str, role: Role = Role.PASSAGE) -> np.ndarray:
        # Queries and passages share vectors, so a query equal to a passage finds it with score 1.
        rng = np.random.default_rng([self.seed, zlib.crc32(text.encode())])
        v = rng.standard_normal(DIM)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode(self, texts, *, role=None) -> np.ndarray:
        role = Role.coerce(role)
        self.calls.append((role, list(texts)))
        out = np.stack([self.vector(t, role) for t in texts]) if texts else np.zeros((0, DIM), np.float32)
        if self.noise:
            out = out + self.noise
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    def encoded(self) -> list[str]:
        return [t for _, texts in self.calls for t in texts]


def write_corpus(path: Path, n: int, start: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(start, start + n):
            handle.write(json.dumps({"_id": f"d{i}", "title": f"t{i}", "text": f"passage {i}"}) + "\n")
    return path


def test_build_and_exact_search_finds_planted_passage(tmp_path):
    enc = HashEncoder()
    store = build_index(enc, write_corpus(tmp_path / "c.jsonl", 50), tmp_path / "idx", chunk_size=7)
    assert store.count == 50 and store.dim == DIM
    hits = Searcher(store, enc).search(["t17 passage 17", "t3 passage 3"], k=5)
    assert [h[0].id for h in hits] == ["d17", "d3"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0][0].text == "passage 17" and hits[0][0].title == "t17"
    assert all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:], strict=False))
    np.testing.assert_allclose(store.embeddings()[17], enc.vector("t17 passage 17"), atol=1e-6)


def test_passages_are_encoded_with_the_passage_role_in_bounded_chunks(tmp_path):
    enc = HashEncoder()
    build_index(enc, write_corpus(tmp_path / "c.jsonl", 50), tmp_path / "idx", chunk_size=7)
    passage_calls = [texts for role, texts in enc.calls if role is Role.PASSAGE and texts[0].startswith("t")]
    assert [len(t) for t in passage_calls] == [7] * 7 + [1]


def test_iterable_source_is_consumed_lazily(tmp_path):
    enc, pulled = HashEncoder(), []

    def source():
        for i in range(30):
            pulled.append(i)
            yield Passage(None, f"text {i}")

    original = enc.encode

    def encode(texts, *, role=None):
        if texts and texts[0].startswith("text"):
            assert len(pulled) <= texts_seen[0] + 11  # at most one chunk (+1 look-ahead) beyond what is encoded
            texts_seen[0] += len(texts)
        return original(texts, role=role)

    texts_seen = [0]
    enc.encode = encode
    store = build_index(enc, source(), tmp_path / "idx", chunk_size=10)
    assert store.entries([0, 29]) == [{"id": "0", "text": "text 0"}, {"id": "29", "text": "text 29"}]


def test_exact_search_matches_brute_force_across_blocks():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((103, DIM)).astype(np.float32)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    blocks = [(s, corpus[s : s + 10]) for s in range(0, 103, 10)]
    scores, rows = exact_search(queries, blocks, 12)
    expected = np.argsort(-(queries @ corpus.T), axis=1)[:, :12]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ corpus.T, expected, 1), rtol=1e-5)


def test_exact_search_pads_when_corpus_is_smaller_than_k():
    scores, rows = exact_search(np.eye(2, dtype=np.float32), [(0, np.eye(2, dtype=np.float32))], 4)
    assert rows[0].tolist() == [0, 1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_indexes_agree_with_flat_on_small_data(tmp_path, index_type):
    enc = HashEncoder()
    corpus = write_corpus(tmp_path / "c.jsonl", 200)
    store = build_index(enc, corpus, tmp_path / index_type, index_type=index_type, chunk_size=64)
    assert store.manifest.ann_file == "ann-1.faiss"
    queries = [f"t{i} passage {i}" for i in (0, 77, 199)]
    hits = Searcher(store, enc, nprobe=10_000).search(queries, k=1)
    assert [h[0].id for h in hits] == ["d0", "d77", "d199"]


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_append_encodes_only_new_passages(tmp_path, index_type):
    enc = HashEncoder()
    build_index(enc, write_corpus(tmp_path / "a.jsonl", 20), tmp_path / "idx", index_type=index_type)
    enc.calls.clear()
    store = build_index(enc, write_corpus(tmp_path / "b.jsonl", 5, start=20), tmp_path / "idx", mode="append")
    passages = [t for t in enc.encoded() if t[0] == "t" and t[1].isdigit()]
    assert passages == [f"t{i} passage {i}" for i in range(20, 25)]
    assert store.count == 25 and store.manifest.generation == 2
    assert [s["rows"] for s in store.manifest.sources] == [20, 5]
    assert Searcher(store, enc).search(["t22 passage 22", "t4 passage 4"], k=1)[0][0].id == "d22"
    assert not list((tmp_path / "idx").glob("ann-1.faiss"))  # the old generation's faiss file is gone


def test_auto_ids_continue_across_appends(tmp_path):
    enc = HashEncoder()
    (tmp_path / "a.jsonl").write_text('{"text": "甲"}\n{"text": "乙"}\n', encoding="utf-8")
    build_index(enc, tmp_path / "a.jsonl", tmp_path / "idx")
    store = build_index(enc, tmp_path / "a.jsonl", tmp_path / "idx", mode="append")
    assert [e["id"] for e in store.entries(range(4))] == ["0", "1", "2", "3"]


def test_modes_guard_existing_and_missing_indexes(tmp_path):
    enc, corpus = HashEncoder(), write_corpus(tmp_path / "c.jsonl", 3)
    with pytest.raises(FileNotFoundError, match="no index to append"):
        build_index(enc, corpus, tmp_path / "idx", mode="append")
    build_index(enc, corpus, tmp_path / "idx")
    with pytest.raises(FileExistsError, match="--append"):
        build_index(enc, corpus, tmp_path / "idx")
    with pytest.raises(ValueError, match="cannot append"):
        build_index(enc, corpus, tmp_path / "idx", mode="append", index_type="hnsw")
    store = build_index(enc, write_corpus(tmp_path / "d.jsonl", 2), tmp_path / "idx", mode="overwrite")
    assert store.count == 2 and store.manifest.generation == 1


def test_other_model_is_refused_for_append_and_search(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    store = build_index(HashEncoder(seed=0), corpus, tmp_path / "idx")
    with pytest.raises(ModelMismatchError, match="probe embeddings differ"):
        Searcher(store, HashEncoder(seed=1))
    with pytest.raises(ModelMismatchError):
        build_index(HashEncoder(seed=1), corpus, tmp_path / "idx", mode="append")
    with pytest.raises(ModelMismatchError, match="query prefix differs"):
        Searcher(store, HashEncoder(seed=0, prefix="查询："))


def test_fingerprint_tolerates_numeric_noise_but_not_other_dims():
    base = fingerprint_encoder(HashEncoder())
    check_same_model(base, fingerprint_encoder(HashEncoder(noise=1e-4)))
    other = fingerprint_encoder(HashEncoder())
    other = type(other)(name="x", dim=4, roles={}, probes=other.probes[:, :4])
    with pytest.raises(ModelMismatchError, match="dimensions differ"):
        check_same_model(base, other)


def test_s2s_index_searches_with_the_none_role(tmp_path):
    enc = HashEncoder()
    store = build_index(enc, write_corpus(tmp_path / "c.jsonl", 3), tmp_path / "idx", passage_role="none")
    searcher = Searcher(store, enc)
    assert searcher.query_role is Role.NONE
    enc.calls.clear()
    searcher.search(["x"], k=1)
    assert enc.calls == [(Role.NONE, ["x"])]


def test_missing_and_truncated_indexes_fail_loudly(tmp_path):
    with pytest.raises(IndexNotFoundError, match="no index"):
        IndexStore.open(tmp_path)
    build_index(HashEncoder(), write_corpus(tmp_path / "c.jsonl", 4), tmp_path / "idx")
    path = tmp_path / "idx" / "embeddings.f32"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CorruptIndexError, match=r"embeddings\.f32"):
        IndexStore.open(tmp_path / "idx")


def test_encoder_output_is_validated(tmp_path):
    class Unnormalised(HashEncoder):
        def encode(self, texts, *, role=None):
            return super().encode(texts, role=role) * 2

    with pytest.raises(ValueError, match="not L2-normalised"):
        build_index(Unnormalised(), write_corpus(tmp_path / "c.jsonl", 2), tmp_path / "idx")


def test_append_inherits_the_index_role_and_type(tmp_path):
    enc = HashEncoder()
    build_index(enc, write_corpus(tmp_path / "a.jsonl", 3), tmp_path / "idx", passage_role="none", index_type="hnsw")
    store = build_index(enc, write_corpus(tmp_path / "b.jsonl", 2, start=3), tmp_path / "idx", mode="append")
    assert store.count == 5 and store.manifest.passage_role is Role.NONE
    with pytest.raises(ValueError, match="cannot append"):
        build_index(enc, tmp_path / "b.jsonl", tmp_path / "idx", mode="append", passage_role="passage")


def test_concurrent_builds_are_refused(tmp_path):
    import fcntl

    from piccolo_embed.index import IndexLockedError

    (tmp_path / "idx").mkdir()
    with (tmp_path / "idx" / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(IndexLockedError, match="another build"):
            build_index(HashEncoder(), write_corpus(tmp_path / "c.jsonl", 2), tmp_path / "idx")
