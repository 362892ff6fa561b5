"""Mining against a planted corpus: a fake encoder returns hand-designed vectors, so every score is known."""

import json
import zlib

import numpy as np
import pytest

from piccolo_embed.data.records import TripletRecord, read_records
from piccolo_embed.index import Searcher, build_index
from piccolo_embed.mining import (
    MiningConfig,
    NegativeMode,
    NegativePolicy,
    TaskKind,
    corpus_from_positives,
    mine,
    mine_file,
)
from piccolo_embed.types import Role

DIM = 16


def unit(score: float, slot: int) -> np.ndarray:
    """A unit vector whose inner product with e0 is exactly ``score``; ``slot`` picks an orthogonal direction."""
    v = np.zeros(DIM)
    v[0], v[1 + slot] = score, np.sqrt(1 - score**2)
    return v.astype(np.float32)


class PlantedEncoder:
    """Planted vectors for known texts, hash vectors for anything else (the fingerprint probes)."""

    name = "planted"

    def __init__(self, planted: dict[str, np.ndarray]) -> None:
        self.planted, self.calls = planted, []

    def encode(self, texts, *, role=None):
        self.calls.append((Role.coerce(role), list(texts)))
        rows = []
        for text in texts:
            if text in self.planted:
                rows.append(self.planted[text])
                continue
            v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), DIM)


# One query (e0) against a corpus whose scores are planted: rank order follows the scores.
SCORES = {
    "fn-above": 0.97,  # rank 0: scores above the positive, an unlabelled positive
    "the positive": 0.90,  # rank 1
    "fn-near": 0.87,  # rank 2: above 0.95 * 0.9 = 0.855
    "hard-1": 0.85,  # rank 3
    "hard-2": 0.80,  # rank 4
    "hard-3": 0.75,  # rank 5
    "hard-4": 0.70,  # rank 6
    "easy-1": 0.20,  # rank 7
    "easy-2": 0.10,  # rank 8
}


@pytest.fixture
def planted(tmp_path):
    vectors = {text: unit(score, slot) for slot, (text, score) in enumerate(SCORES.items())}
    vectors["Q"] = unit(1.0, 0)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in SCORES), encoding="utf-8")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "Q", "pos": ["the positive"], "neg": ["old neg"]}) + "\n", encoding="utf-8")
    return PlantedEncoder(vectors), corpus, pairs


def run(tmp_path, encoder, pairs, corpus, **config):
    out = tmp_path / "out.jsonl"
    stats = mine_file(encoder, pairs, out, corpus=corpus, config=MiningConfig(**config))
    return list(read_records(out, "triplet")), stats


def test_planted_corpus_yields_exactly_the_hard_negatives(tmp_path, planted):
    encoder, corpus, pairs = planted
    policy = NegativePolicy(rank_start=0, rank_end=7, num_negatives=4, max_score_ratio=0.95)
    records, stats = run(tmp_path, encoder, pairs, corpus, policy=policy)
    assert records == [TripletRecord("Q", ("the positive",), ("hard-1", "hard-2", "hard-3", "hard-4"))]
    assert stats.dropped_positive == 1 and stats.dropped_false_negative == 2
    assert stats.positive_scores == [pytest.approx(0.9, abs=1e-6)]
    assert stats.negative_scores == pytest.approx([0.85, 0.80, 0.75, 0.70], abs=1e-6)


def test_window_and_margin_rules_end_to_end(tmp_path, planted):
    encoder, corpus, pairs = planted
    policy = NegativePolicy(rank_start=3, rank_end=6, num_negatives=7, max_score_ratio=None, margin=0.12)
    records, stats = run(tmp_path, encoder, pairs, corpus, policy=policy)
    assert records[0].neg == ("hard-3",)  # window: hard-1..3; margin limit 0.78 drops hard-1 and hard-2
    assert stats.short == 1 and stats.dropped_false_negative == 2


def test_existing_negatives_can_be_kept(tmp_path, planted):
    encoder, corpus, pairs = planted
    policy = NegativePolicy(rank_start=3, rank_end=5, num_negatives=7)
    records, _ = run(tmp_path, encoder, pairs, corpus, policy=policy, negative_mode=NegativeMode.APPEND)
    assert records[0].neg == ("old neg", "hard-1", "hard-2")
    records, _ = run(tmp_path, encoder, pairs, corpus, policy=policy)
    assert records[0].neg == ("hard-1", "hard-2")


def test_queries_without_negatives_are_dropped_and_counted_unless_kept(tmp_path, planted):
    encoder, corpus, pairs = planted
    policy = NegativePolicy(rank_start=0, rank_end=3, num_negatives=2)  # only the positive and false negatives
    records, stats = run(tmp_path, encoder, pairs, corpus, policy=policy)
    assert records == [] and stats.without_negatives == 1 and stats.written == 0
    records, stats = run(tmp_path, encoder, pairs, corpus, policy=policy, keep_empty=True)
    assert records[0].neg == () and stats.written == 1


def test_s2s_encodes_both_sides_without_instruction(tmp_path, planted):
    encoder, corpus, pairs = planted
    run(tmp_path, encoder, pairs, corpus, kind=TaskKind.S2S)
    roles_of = {text: role for role, texts in encoder.calls for text in texts}
    assert roles_of["Q"] is Role.NONE and roles_of["hard-1"] is Role.NONE
    encoder.calls.clear()
    run(tmp_path, encoder, pairs, corpus, kind=TaskKind.S2P)
    roles_of = {text: role for role, texts in encoder.calls for text in texts}
    assert roles_of["Q"] is Role.QUERY and roles_of["hard-1"] is Role.PASSAGE


def test_prebuilt_index_must_match_the_kind(tmp_path, planted):
    encoder, corpus, pairs = planted
    build_index(encoder, corpus, tmp_path / "idx")
    records, _ = run(tmp_path, encoder, pairs, tmp_path / "idx", policy=NegativePolicy(3, 5, 7))
    assert records[0].neg == ("hard-1", "hard-2")
    with pytest.raises(ValueError, match="s2s mining needs none"):
        run(tmp_path, encoder, pairs, tmp_path / "idx", kind=TaskKind.S2S)


def random_records(n: int, seed: int = 0) -> tuple[list[TripletRecord], PlantedEncoder]:
    rng = np.random.default_rng(seed)
    vectors: dict[str, np.ndarray] = {}
    records = []
    for i in range(n):
        texts = [f"q{i}", *(f"p{i}-{j}" for j in range(1 + i % 3))]
        for text in texts:
            v = rng.standard_normal(DIM)
            vectors[text] = (v / np.linalg.norm(v)).astype(np.float32)
        records.append(TripletRecord(texts[0], tuple(texts[1:])))
    return records, PlantedEncoder(vectors)


def mine_all(tmp_path, records, encoder, policy, query_batch):
    rows: dict[str, int] = {}
    store = build_index(encoder, corpus_from_positives(records, rows), tmp_path / "idx", mode="overwrite")
    searcher = Searcher(store, encoder)
    return list(mine(records, searcher, policy, positive_rows=rows, query_batch=query_batch))


def test_positive_is_never_a_negative_and_results_do_not_depend_on_batching(tmp_path):
    records, encoder = random_records(60)
    policy = NegativePolicy(rank_start=0, rank_end=30, num_negatives=5, max_score_ratio=None)
    by_one = mine_all(tmp_path, records, encoder, policy, query_batch=1)
    by_all = mine_all(tmp_path, records, encoder, policy, query_batch=1000)
    assert [m.record for m in by_one] == [m.record for m in by_all]
    for mined in by_all:
        assert mined.record.neg and not set(mined.record.neg) & set(mined.record.pos)
        assert all(neg.startswith("p") for neg in mined.record.neg)
    reseeded = mine_all(tmp_path, records, encoder, NegativePolicy(0, 30, 5, None, seed=7), query_batch=7)
    assert [m.record for m in reseeded] != [m.record for m in by_all]


def test_positive_scores_from_the_index_match_re_encoding(tmp_path):
    records, encoder = random_records(10, seed=1)
    mined = mine_all(tmp_path, records, encoder, NegativePolicy(0, 10, 3, None), query_batch=4)
    for item, record in zip(mined, records, strict=True):
        expected = min(float(encoder.planted[record.query] @ encoder.planted[p]) for p in record.pos)
        assert item.positive_score == pytest.approx(expected, abs=1e-5)


def test_corpus_from_positives_deduplicates_stripped_texts():
    records = [TripletRecord("a", ("x", " y")), TripletRecord("b", ("y", "x ", "z"))]
    rows: dict[str, int] = {}
    assert [p.text for p in corpus_from_positives(records, rows)] == ["x", "y", "z"]
    assert rows == {"x": 0, "y": 1, "z": 2}


def test_positives_found_in_the_corpus_are_not_re_encoded(tmp_path, planted):
    encoder, corpus, pairs = planted
    _, stats = run(tmp_path, encoder, pairs, corpus)
    encoded = [text for _, texts in encoder.calls for text in texts]
    assert encoded.count("the positive") == 1  # once, while indexing
    assert stats.positive_scores == [pytest.approx(0.9, abs=1e-6)]


def test_titled_passages_are_not_mistaken_for_positive_vectors(tmp_path, planted):
    encoder, _, pairs = planted
    corpus = tmp_path / "titled.jsonl"
    lines = [json.dumps({"title": "T", "text": t}) for t in SCORES]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run(tmp_path, encoder, pairs, corpus)
    encoded = [text for _, texts in encoder.calls for text in texts]
    assert encoded.count("the positive") == 1 and "T the positive" in encoded  # encoded on its own, untitled
