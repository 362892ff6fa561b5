"""Metric functions against values worked out by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from piccolo_embed.evaluation import metrics
from piccolo_embed.evaluation.search import exact_top_k


def pairs_with_cosines(cosines: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose row-wise cosine is exactly ``cosines``: [1, 0] against [c, sqrt(1 - c^2)]."""
    c = np.asarray(cosines)
    first = np.tile([1.0, 0.0], (len(c), 1))
    second = np.stack([c, np.sqrt(1 - c**2)], axis=1)
    return first, second


def test_sts_scores_by_hand() -> None:
    # cosines rank [2, 1, 4, 3] against gold [1, 2, 3, 4]: d^2 sums to 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6.
    e1, e2 = pairs_with_cosines([0.2, 0.1, 0.9, 0.5])
    scores = metrics.sts_scores(e1, e2, [1, 2, 3, 4])
    assert scores["cosine_spearman"] == pytest.approx(0.6)
    x, y = np.array([1, 2, 3, 4.0]), np.array([0.2, 0.1, 0.9, 0.5])
    xc, yc = x - x.mean(), y - y.mean()
    assert scores["cosine_pearson"] == pytest.approx((xc @ yc) / math.sqrt((xc @ xc) * (yc @ yc)))


def test_paired_cosine_normalises() -> None:
    assert metrics.paired_cosine(np.array([[3.0, 0.0]]), np.array([[2.0, 2.0]]))[0] == pytest.approx(math.sqrt(0.5))


SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
LABELS = [1, 1, 0, 1, 0]


def test_best_accuracy_by_hand() -> None:
    # Cuts after rank 1..4 give accuracy 3/5, 4/5, 3/5, 4/5.
    assert metrics.best_accuracy(SCORES, LABELS) == pytest.approx(0.8)


def test_best_f1_by_hand() -> None:
    # Cuts: (P, R) = (1, 1/3), (1, 2/3), (2/3, 2/3), (3/4, 1) -> F1 0.5, 0.8, 0.667, 6/7.
    f1, precision, recall = metrics.best_f1(SCORES, LABELS)
    assert (f1, precision, recall) == pytest.approx((6 / 7, 0.75, 1.0))


def test_average_precision_by_hand() -> None:
    # Hits at ranks 1, 2, 4: AP = (1/1 + 2/2 + 3/4) / 3.
    assert metrics.threshold_scores(SCORES, LABELS)["ap"] == pytest.approx(2.75 / 3)


def test_thresholds_never_split_ties() -> None:
    # Cutting between the tied 0.9s would score 3/3; the only legal cut (after both) scores 2/3.
    assert metrics.best_accuracy([0.9, 0.9, 0.5], [1, 0, 0]) == pytest.approx(2 / 3)
    assert metrics.best_f1([0.9, 0.9, 0.5], [1, 0, 0]) == pytest.approx((2 / 3, 0.5, 1.0))
    assert metrics.best_accuracy([0.5, 0.5], [1, 0]) == 0.0


def test_pair_classification_takes_best_of_similarity_functions() -> None:
    e1, e2 = pairs_with_cosines([0.9, 0.8, 0.7, 0.6, 0.5])
    scores = metrics.pair_classification_scores(e1, e2, LABELS)
    assert scores["cosine_ap"] == pytest.approx(2.75 / 3)
    assert scores["cosine_accuracy"] == pytest.approx(0.8)
    # Unit vectors: dot = cosine and euclidean ranks like cosine, so all three agree.
    assert scores["dot_f1"] == scores["euclidean_f1"] == pytest.approx(scores["cosine_f1"])
    assert scores["max_accuracy"] == max(scores[f"{n}_accuracy"] for n in ("cosine", "dot", "euclidean", "manhattan"))


def test_undersample_compounds_one_shuffle_per_experiment() -> None:
    labels = ["a"] * 6 + ["b"] * 6 + ["c"] * 2
    experiments = metrics.undersample(labels, per_label=3, n_experiments=3, seed=7)
    order = list(range(len(labels)))
    for chosen in experiments:
        np.random.RandomState(7).shuffle(order)
        taken: dict[str, int] = {}
        expected = []
        for i in order:
            if taken.get(labels[i], 0) < 3:
                expected.append(i)
                taken[labels[i]] = taken.get(labels[i], 0) + 1
        assert chosen == expected
        assert sorted(labels[i] for i in chosen) == ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    assert experiments[0] != experiments[1]


def test_classification_scores_by_hand() -> None:
    # a: P=1, R=1/2, F1=2/3; b: P=1/3, R=1, F1=1/2; c: never predicted, P=R=F1=0. Supports 2, 1, 1.
    scores = metrics.classification_scores(["a", "a", "b", "c"], ["a", "b", "b", "b"])
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((2 / 3 + 0.5) / 3)
    assert scores["f1_weighted"] == pytest.approx((2 * 2 / 3 + 0.5) / 4)
    assert scores["precision"] == pytest.approx((1 + 1 / 3) / 3)
    assert scores["recall"] == pytest.approx(0.5)


def blobs(n_per: int, centers: int, dim: int = 8, spread: float = 0.01) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    means = np.eye(dim)[:centers] * 5
    x = np.concatenate([m + spread * rng.normal(size=(n_per, dim)) for m in means])
    return x, [f"label{i}" for i in range(centers) for _ in range(n_per)]


def test_logistic_regression_separates_blobs() -> None:
    x, y = blobs(10, 3)
    scores = metrics.logistic_regression_scores(x[::2], y[::2], x[1::2], y[1::2], seed=42)
    assert scores["accuracy"] == 1.0
    assert scores["f1"] == 1.0


def test_kmeans_v_measure_is_one_on_separated_blobs_and_label_names_do_not_matter() -> None:
    x, y = blobs(20, 4)
    assert metrics.kmeans_v_measure(x, y, seed=42) == pytest.approx(1.0)
    renamed = [label[::-1] for label in y]
    assert metrics.kmeans_v_measure(x, renamed, seed=42) == pytest.approx(1.0)


def test_mean_scores_adds_std_of_first_metric() -> None:
    assert metrics.mean_scores([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]) == {"a": 2.0, "b": 3.0, "a_std": 1.0}


def test_retrieval_scores_by_hand() -> None:
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d4": 1}}
    results = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6}, "q2": {"d1": 0.9, "d2": 0.5, "d4": 0.4}}
    scores = metrics.retrieval_scores(results, qrels, k_values=(1, 3, 10))
    # q1 hits at ranks 1 and 3: DCG@3 = 1 + 1/log2(4), IDCG@3 = 1 + 1/log2(3). q2 hits at rank 3: nDCG@3 = 1/2.
    ndcg_q1 = 1.5 / (1 + 1 / math.log2(3))
    assert scores["ndcg_at_3"] == pytest.approx((ndcg_q1 + 0.5) / 2, abs=1e-5)
    assert scores["mrr_at_10"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-5)
    assert scores["mrr_at_1"] == pytest.approx(0.5, abs=1e-5)
    assert scores["recall_at_1"] == pytest.approx(0.25, abs=1e-5)
    assert scores["recall_at_3"] == pytest.approx(1.0, abs=1e-5)
    assert scores["map_at_3"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2, abs=1e-5)
    assert scores["precision_at_3"] == pytest.approx((2 / 3 + 1 / 3) / 2, abs=1e-5)
    assert not any(key.startswith("nauc") for key in scores)


@pytest.mark.parametrize(("chunk", "block", "k"), [(1000, 1000, 5), (7, 3, 5), (4, 64, 40)])
def test_exact_top_k_matches_brute_force(chunk: int, block: int, k: int) -> None:
    rng = np.random.default_rng(1)
    queries, corpus = rng.normal(size=(11, 6)), rng.normal(size=(30, 6))
    chunks = (corpus[i : i + chunk] for i in range(0, len(corpus), chunk))
    top = exact_top_k(queries, chunks, k, query_block=block)
    full = metrics.unit_rows(queries) @ metrics.unit_rows(corpus).T
    width = min(k, len(corpus))
    expected = np.argsort(-full, axis=1)[:, :width]
    assert top.indices.shape == (11, width)
    np.testing.assert_array_equal(top.indices, expected)
    np.testing.assert_allclose(top.scores, np.take_along_axis(full, expected, axis=1))
