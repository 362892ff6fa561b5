"""Metric functions over embeddings, scores and labels: pure, small, each checked by hand in the tests.

Where mteb exposes a plain function we call it (retrieval: ``calculate_retrieval_scores``, pytrec_eval
underneath). Where mteb keeps the computation inside a task class tied to Hugging Face ``datasets`` and
dataloaders (STS correlations, pair-classification thresholds, classification undersampling, clustering), we
re-state its protocol here with scipy/scikit-learn, line for line; ``tests/evaluation`` pins every one of
them to mteb's own task classes on the same embeddings.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    v_measure_score,
)
from sklearn.metrics.pairwise import (
    paired_cosine_distances,
    paired_euclidean_distances,
    paired_manhattan_distances,
)
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

#: BLAS/OpenMP threads for the probe and k-means. Their matrices are small (hundreds to ten thousand rows), so
#: threading buys little and, on a loaded 2-core machine, oversubscription made them 15-30x slower than one
#: thread (k-means on 10k x 384: 4.9 s vs 0.16 s). Results do not depend on the thread count.
SINGLE_THREAD = 1

#: mteb's retrieval cut-offs (``AbsTaskRetrieval.k_values``).
K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 20, 100, 1000)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), in float64 for stable scoring."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def paired_similarities(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Row-wise similarities of two embedding arrays, higher = more similar, computed exactly as mteb does.

    Distances are negated. The arithmetic (scikit-learn's paired distances in the encoder's dtype, a per-row
    ``np.dot``) is mteb's on purpose: pairs with identical embeddings then tie, or fail to tie, exactly as they
    do in mteb, and tie handling moves rank correlations and thresholds by more than our 1e-4 tolerance.
    """
    a, b = np.asarray(a), np.asarray(b)
    return {
        "cosine": 1 - paired_cosine_distances(a, b),
        "dot": np.asarray([np.dot(a[i], b[i]) for i in range(len(a))]),
        "euclidean": -paired_euclidean_distances(a, b),
        "manhattan": -paired_manhattan_distances(a, b),
    }


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (mteb's arithmetic)."""
    return 1 - paired_cosine_distances(np.asarray(a), np.asarray(b))


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of gold scores with the pairs' cosine similarity (mteb ``AbsTaskSTS``).

    mteb min-max-normalises gold scores first; correlations are invariant to that, so we skip it.
    """
    cosine = paired_cosine(emb1, emb2).tolist()
    gold = np.asarray(gold, dtype=np.float64).tolist()
    if len(set(gold)) < 2 or len(set(cosine)) < 2:  # scipy would return NaN with a ConstantInputWarning
        log.warning("STS: %s are constant, so correlations are undefined (reported as null)", _constant(gold))
        return {"cosine_pearson": float("nan"), "cosine_spearman": float("nan")}
    pearson, spearman = float(pearsonr(gold, cosine)[0]), float(spearmanr(gold, cosine)[0])
    return {"cosine_pearson": pearson, "cosine_spearman": spearman}


def _constant(gold: Sequence[float]) -> str:
    return "the gold scores" if len(set(gold)) < 2 else "the model's similarities"


def _sorted_by_score(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.asarray(scores, dtype=np.float64)[order], np.asarray(labels, dtype=np.int64)[order]


def best_accuracy(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Best accuracy of "similar iff score > threshold" over thresholds between distinct adjacent scores.

    Mirrors mteb's ``_find_best_acc_and_threshold``: a threshold may not split tied scores (their order would
    leak into the metric), and the "everything negative" cut is not considered. Higher score = more similar.
    """
    s, y = _sorted_by_score(scores, labels)
    if len(s) < 2:
        return 0.0
    positives_above = np.cumsum(y)[:-1]
    negatives_below = (y == 0).sum() - np.cumsum(y == 0)[:-1]
    accuracy = (positives_above + negatives_below) / len(y)
    valid = s[:-1] != s[1:]
    return float(accuracy[valid].max()) if valid.any() else 0.0


def best_f1(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float, float]:
    """Best F1 (with its precision and recall) over the same thresholds as :func:`best_accuracy`.

    Mirrors mteb's ``_find_best_f1_and_threshold``; ties keep the first (highest-threshold) best cut.
    """
    s, y = _sorted_by_score(scores, labels)
    if len(s) < 2 or y.sum() == 0:
        return 0.0, 0.0, 0.0
    correct = np.cumsum(y)[:-1]
    extracted = np.arange(1, len(y))
    precision = correct / extracted
    recall = correct / y.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(s[:-1] != s[1:], f1, 0.0)
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return 0.0, 0.0, 0.0
    return float(f1[best]), float(precision[best]), float(recall[best])


def threshold_scores(scores: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, F1, precision, recall (best thresholds) and average precision of one similarity function."""
    f1, precision, recall = best_f1(scores, labels)
    return {
        "accuracy": best_accuracy(scores, labels),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "ap": float(average_precision_score(np.asarray(labels), np.asarray(scores, dtype=np.float64))),
    }


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """Mteb's pair-classification metrics: per similarity function, then the best of each over the functions.

    Negated distances rank like mteb's ascending sort of distances, so one threshold search serves all four.
    """
    similarities = paired_similarities(emb1, emb2)
    out: dict[str, float] = {}
    for name, values in similarities.items():
        out.update({f"{name}_{metric}": value for metric, value in threshold_scores(values, labels).items()})
    for metric in ("accuracy", "f1", "precision", "recall", "ap"):
        out[f"max_{metric}"] = max(out[f"{name}_{metric}"] for name in similarities)
    return out


def undersample(labels: Sequence[Hashable], per_label: int, n_experiments: int, seed: int) -> list[list[int]]:
    """Training indices of each experiment, exactly as mteb's ``AbsTaskClassification._undersample_data``.

    One index list is shuffled in place by a fresh ``RandomState(seed)`` before every experiment (so the
    shuffles compound), then the first ``per_label`` indices of each label are taken in shuffled order.
    """
    order = list(range(len(labels)))
    experiments = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(order)
        counts: dict[Hashable, int] = defaultdict(int)
        chosen = []
        for index in order:
            if counts[labels[index]] < per_label:
                chosen.append(index)
                counts[labels[index]] += 1
        experiments.append(chosen)
    return experiments


def classification_scores(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> dict[str, float]:
    """Accuracy and macro/weighted F1, precision and recall (undefined ratios count as 0, as in mteb)."""
    kwargs = {"zero_division": 0}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", **kwargs)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", **kwargs)),
        "precision": float(precision_score(y_true, y_pred, average="macro", **kwargs)),
        "recall": float(recall_score(y_true, y_pred, average="macro", **kwargs)),
    }


def logistic_regression_scores(
    train: np.ndarray,
    train_labels: Sequence[Hashable],
    test: np.ndarray,
    test_labels: Sequence[Hashable],
    *,
    seed: int,
    max_iter: int = 100,
) -> dict[str, float]:
    """Fit mteb's probe (``LogisticRegression(max_iter=100, random_state=seed)``) and score its predictions.

    Runs single-threaded (see :data:`SINGLE_THREAD`).
    """
    probe = LogisticRegression(max_iter=max_iter, random_state=seed)
    with threadpool_limits(limits=SINGLE_THREAD):
        probe.fit(train, list(train_labels))
        predicted = probe.predict(test).tolist()
    return classification_scores(list(test_labels), predicted)


def kmeans_v_measure(embeddings: np.ndarray, labels: Sequence[Hashable], *, seed: int, batch_size: int = 500) -> float:
    """V-measure of mini-batch k-means with k = number of labels (mteb's ``ClusteringEvaluator`` settings).

    Runs single-threaded (see :data:`SINGLE_THREAD`).
    """
    model = MiniBatchKMeans(
        n_clusters=len(set(labels)), batch_size=batch_size, n_init="auto", compute_labels=True, random_state=seed
    )
    with threadpool_limits(limits=SINGLE_THREAD):
        model.fit(embeddings)
    return float(v_measure_score(list(labels), model.labels_.tolist()))


def mean_scores(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over runs, adding ``<metric>_std`` (population std, as mteb) for the first one."""
    out = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    first = next(iter(runs[0]))
    out[f"{first}_std"] = float(np.std([run[first] for run in runs]))
    return out


def retrieval_scores(
    results: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = K_VALUES,
) -> dict[str, float]:
    """nDCG, MAP, recall, precision, MRR and hit rate at each k, by mteb's ``calculate_retrieval_scores``.

    Args:
        results: ``{query_id: {doc_id: score}}``, the retrieved (or reranked) documents of each query.
        qrels: ``{query_id: {doc_id: relevance}}``; relevance > 0 is relevant, graded for nDCG.
        k_values: Cut-offs.

    Returns:
        ``ndcg_at_10``-style keys (mteb's names, values rounded to 5 decimals by mteb). mteb's abstention (nAUC)
        metrics are left out: they depend on how many documents each query keeps, not on ranking quality.
    """
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    result = calculate_retrieval_scores(
        {qid: dict(docs) for qid, docs in results.items()},
        {qid: dict(docs) for qid, docs in qrels.items()},
        list(k_values),
    )
    out: dict[str, float] = {}
    for prefix, values in (
        ("ndcg_at_", result.ndcg),
        ("map_at_", result.map),
        ("recall_at_", result.recall),
        ("precision_at_", result.precision),
        ("mrr_at_", result.mrr),
        ("hit_rate_at_", result.hit_rate),
    ):
        # mteb keys look like "NDCG@10"; its results files (and ours) say "ndcg_at_10".
        out.update({prefix + key.split("@")[1]: float(value) for key, value in values.items()})
    return out
