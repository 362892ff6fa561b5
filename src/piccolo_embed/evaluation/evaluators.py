"""One evaluator per task type, looked up in :data:`EVALUATORS`: encode with the right roles, then score.

Each evaluator takes a loaded :class:`~piccolo_embed.evaluation.tasks.Task`, any
:class:`~piccolo_embed.protocols.Encoder` and the run's :class:`EvalOptions`, and returns every metric it
computes, keyed by mteb's metric names. The maths lives in :mod:`~piccolo_embed.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from piccolo_embed.evaluation import metrics
from piccolo_embed.evaluation.search import exact_top_k
from piccolo_embed.evaluation.tasks import (
    ClassificationData,
    LabelledTexts,
    PairData,
    RerankingData,
    RetrievalData,
    Task,
    TaskType,
)

if TYPE_CHECKING:
    from piccolo_embed.protocols import Encoder
    from piccolo_embed.types import Role


@dataclass(frozen=True)
class EvalOptions:
    """Protocol settings; the defaults are mteb's for the C-MTEB tasks.

    Attributes:
        seed: Seeds subsampling, the classification probe's undersampling and k-means.
        samples_per_label: Training texts per label in each classification experiment (C-MTEB: 32).
        n_experiments: Classification experiments averaged (mteb: 10).
        clustering_runs: k-means runs averaged, with seeds ``seed, seed + 1, ...``.
        kmeans_batch_size: Mini-batch size of k-means (mteb: 500).
        k_values: Retrieval/reranking cut-offs; the largest is how many documents each query keeps.
        corpus_chunk_size: Corpus texts encoded and scored at once in retrieval.
        query_block_size: Queries scored at once against a corpus chunk.
    """

    seed: int = 42
    samples_per_label: int = 32
    n_experiments: int = 10
    clustering_runs: int = 10
    kmeans_batch_size: int = 500
    k_values: tuple[int, ...] = metrics.K_VALUES
    corpus_chunk_size: int = 16384
    query_block_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("samples_per_label", "n_experiments", "clustering_runs", "kmeans_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalOptions.{name} must be at least 1, got {getattr(self, name)}")
        if not self.k_values or min(self.k_values) < 1:
            raise ValueError(f"EvalOptions.k_values must be positive integers, got {self.k_values}")


Metrics = dict[str, float]
Evaluator = Callable[[Task, "Encoder", EvalOptions], Metrics]
D = TypeVar("D")


def _data(task: Task, kind: type[D]) -> D:
    if not isinstance(task.data, kind):
        raise TypeError(f"task {task.name}: {task.spec.type} expects {kind.__name__}, got {type(task.data).__name__}")
    return task.data


def evaluate_sts(task: Task, encoder: Encoder, options: EvalOptions) -> Metrics:
    """Spearman/Pearson of gold scores against the pairs' cosine similarity."""
    data = _data(task, PairData)
    first, second = task.spec.roles
    return metrics.sts_scores(
        encoder.encode(data.sentence1, role=first), encoder.encode(data.sentence2, role=second), data.targets
    )


def evaluate_pair_classification(task: Task, encoder: Encoder, options: EvalOptions) -> Metrics:
    """Average precision, best-threshold accuracy and F1 of the pairs' similarities against 0/1 labels."""
    data = _data(task, PairData)
    first, second = task.spec.roles
    return metrics.pair_classification_scores(
        encoder.encode(data.sentence1, role=first), encoder.encode(data.sentence2, role=second), data.targets
    )


def evaluate_classification(task: Task, encoder: Encoder, options: EvalOptions) -> Metrics:
    """Logistic-regression probe on frozen embeddings, averaged over undersampled training sets (mteb)."""
    data = _data(task, ClassificationData)
    role = task.spec.roles[0]
    experiments = metrics.undersample(data.train.labels, options.samples_per_label, options.n_experiments, options.seed)
    # Encode only the training texts some experiment uses (mteb does the same).
    union = sorted(set().union(*experiments))
    position = {index: row for row, index in enumerate(union)}
    train = encoder.encode([data.train.texts[i] for i in union], role=role)
    test = encoder.encode(data.test.texts, role=role)
    runs = [
        metrics.logistic_regression_scores(
            train[[position[i] for i in chosen]],
            [data.train.labels[i] for i in chosen],
            test,
            data.test.labels,
            seed=options.seed,
        )
        for chosen in experiments
    ]
    return metrics.mean_scores(runs)


def evaluate_clustering(task: Task, encoder: Encoder, options: EvalOptions) -> Metrics:
    """V-measure of k-means (k = number of labels), averaged over ``clustering_runs`` seeds.

    mteb's legacy C-MTEB protocol fits one k-means per cluster set and averages over its sets; a cmteb-mini
    folder is a single set, so we average over seeded runs instead (run ``i`` equals mteb's evaluator with
    seed ``seed + i``).
    """
    data = _data(task, LabelledTexts)
    embeddings = encoder.encode(data.texts, role=task.spec.roles[0])
    runs = [
        {
            "v_measure": metrics.kmeans_v_measure(
                embeddings, data.labels, seed=seed, batch_size=options.kmeans_batch_size
            )
        }
        for seed in range(options.seed, options.seed + options.clustering_runs)
    ]
    return metrics.mean_scores(runs)


def _with_aliases(scores: Metrics, k: int) -> Metrics:
    # "map"/"mrr" are the whole-list scores the legacy C-MTEB reranking reports; with no more than
    # max(k_values) candidates per query they equal map_at_k / mrr_at_k for the largest k.
    return {**scores, "map": scores[f"map_at_{k}"], "mrr": scores[f"mrr_at_{k}"]}


def evaluate_reranking(task: Task, encoder: Encoder, options: EvalOptions) -> Metrics:
    """MAP and MRR of each query's own candidates ranked by cosine similarity.

    Candidate ids number positives before negatives, so on an exact score tie pytrec_eval's tie-break
    (descending id) ranks the negative first: ties can only lower the score, never flatter it.
    """
    data = _data(task, RerankingData)
    query_role, passage_role = task.spec.roles
    queries = metrics.unit_rows(encoder.encode(data.queries, role=query_role))
    candidates = [pos + neg for pos, neg in zip(data.positives, data.negatives, strict=True)]
    passages = metrics.unit_rows(encoder.encode([t for group in candidates for t in group], role=passage_role))
    results, qrels, start = {}, {}, 0
    for i, group in enumerate(candidates):
        scores = passages[start : start + len(group)] @ queries[i]
        start += len(group)
        ids = [f"{i}/{j:06d}" for j in range(len(group))]
        results[str(i)] = dict(zip(ids, scores.tolist(), strict=True))
        qrels[str(i)] = dict.fromkeys(ids[: len(data.positives[i])], 1)
    k = max(options.k_values)
    return _with_aliases(metrics.retrieval_scores(results, qrels, options.k_values), k)


def _chunks(texts: Sequence[str], encoder: Encoder, role: Role, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(texts), size):
        yield encoder.encode(texts[start : start + size], role=role)


def evaluate_retrieval(task: Task, encoder: Encoder, options: EvalOptions) -> Metrics:
    """nDCG@10 and friends of exact cosine search over the whole corpus, encoded and scored in chunks."""
    data = _data(task, RetrievalData)
    query_role, passage_role = task.spec.roles
    queries = encoder.encode(data.query_texts, role=query_role)
    chunks = _chunks(data.corpus_texts, encoder, passage_role, options.corpus_chunk_size)
    top = exact_top_k(queries, chunks, max(options.k_values), query_block=options.query_block_size)
    results = {
        qid: {data.corpus_ids[j]: s for j, s in zip(idx.tolist(), scores.tolist(), strict=True)}
        for qid, idx, scores in zip(data.query_ids, top.indices, top.scores, strict=True)
    }
    return metrics.retrieval_scores(results, data.qrels, options.k_values)


EVALUATORS: dict[TaskType, Evaluator] = {
    TaskType.STS: evaluate_sts,
    TaskType.PAIR_CLASSIFICATION: evaluate_pair_classification,
    TaskType.CLASSIFICATION: evaluate_classification,
    TaskType.CLUSTERING: evaluate_clustering,
    TaskType.RERANKING: evaluate_reranking,
    TaskType.RETRIEVAL: evaluate_retrieval,
}
