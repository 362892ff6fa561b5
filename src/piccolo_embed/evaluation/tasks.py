"""Typed, validated evaluation tasks: one frozen dataclass per data shape, one :class:`Task` per folder.

Loading (and every format check) lives in :mod:`piccolo_embed.evaluation.loading`; this module only holds the
shapes, so evaluators can depend on them without pulling in file parsing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Self

from piccolo_embed.types import HelpfulEnum, Role, TaskKind

if TYPE_CHECKING:
    import numpy as np


class TaskType(HelpfulEnum):
    """The six C-MTEB task families; values are spelled as in ``task.json`` and in mteb's metadata."""

    STS = "STS"
    PAIR_CLASSIFICATION = "PairClassification"
    CLASSIFICATION = "Classification"
    CLUSTERING = "Clustering"
    RERANKING = "Reranking"
    RETRIEVAL = "Retrieval"

    @classmethod
    def _missing_(cls, value: object) -> TaskType | None:
        # HelpfulEnum.parse lower-cases its input; our values are CamelCase, so match case-insensitively.
        wanted = str(value).lower()
        return next((member for member in cls if member.value.lower() == wanted), None)


class Benchmark(HelpfulEnum):
    """Named mteb benchmarks we can run (through :mod:`~piccolo_embed.evaluation.mteb_bridge`)."""

    CMTEB = "cmteb"

    @property
    def mteb_name(self) -> str:
        """The benchmark's name in mteb."""
        return _MTEB_NAMES[self]


_MTEB_NAMES: dict[Benchmark, str] = {Benchmark.CMTEB: "MTEB(cmn, v1)"}

#: Display order of types in tables and per-type averages (the order of the C-MTEB paper).
TYPE_ORDER: tuple[TaskType, ...] = tuple(TaskType)


@dataclass(frozen=True)
class TaskSpec:
    """What ``task.json`` says about a task.

    Attributes:
        name: Task name, unique within a run.
        type: Task family; picks the loader and the evaluator.
        split: Name of the evaluated split; its file is ``<split>.jsonl`` (``qrels/<split>.tsv`` for retrieval).
        main_score: Metric reported as the task's score.
        kind: Short-to-long (query and passage roles) or short-to-short (no instruction); task.json's ``s2p``.
        path: The task folder.
        n: Declared size of the main test set (rows; queries for reranking/retrieval), checked on load.
    """

    name: str
    type: TaskType
    split: str
    main_score: str
    kind: TaskKind
    path: Path
    n: int | None = None

    @property
    def roles(self) -> tuple[Role, Role]:
        """Roles of the first side (sentence1, text, query) and the second side (sentence2, passages)."""
        return self.kind.roles


def _pick(items: Sequence, indices: Sequence[int]) -> tuple:
    return tuple(items[i] for i in indices)


@dataclass(frozen=True, eq=False)
class PairData:
    """Sentence pairs with a target: a similarity score (STS) or a 0/1 label (pair classification)."""

    sentence1: tuple[str, ...]
    sentence2: tuple[str, ...]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.sentence1)

    def select(self, indices: Sequence[int]) -> Self:
        """The pairs at ``indices``."""
        return replace(
            self,
            sentence1=_pick(self.sentence1, indices),
            sentence2=_pick(self.sentence2, indices),
            targets=self.targets[list(indices)],
        )


@dataclass(frozen=True, eq=False)
class LabelledTexts:
    """Texts with a string label each (classification splits, clustering sets)."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> Self:
        """The texts at ``indices``."""
        return replace(self, texts=_pick(self.texts, indices), labels=_pick(self.labels, indices))


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """A train split to fit the probe on and the evaluated test split; ``len`` and ``select`` act on test."""

    train: LabelledTexts
    test: LabelledTexts

    def __len__(self) -> int:
        return len(self.test)

    def select(self, indices: Sequence[int]) -> Self:
        """Keep the whole train split (the probe undersamples it anyway) and the test rows at ``indices``."""
        return replace(self, test=self.test.select(indices))


@dataclass(frozen=True, eq=False)
class RerankingData:
    """Queries, each with its own positive and negative candidate passages."""

    queries: tuple[str, ...]
    positives: tuple[tuple[str, ...], ...]
    negatives: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.queries)

    def select(self, indices: Sequence[int]) -> Self:
        """The queries (with their candidates) at ``indices``."""
        return replace(
            self,
            queries=_pick(self.queries, indices),
            positives=_pick(self.positives, indices),
            negatives=_pick(self.negatives, indices),
        )


@dataclass(frozen=True, eq=False)
class RetrievalData:
    """A BEIR-style corpus, queries and graded relevance judgements.

    ``corpus_texts`` already hold the text the model reads: mteb's convention, ``title + " " + text`` when the
    title is non-empty, else ``text`` (see :func:`piccolo_embed.evaluation.loading.document_text`).
    """

    corpus_ids: tuple[str, ...]
    corpus_texts: tuple[str, ...]
    query_ids: tuple[str, ...]
    query_texts: tuple[str, ...]
    qrels: Mapping[str, Mapping[str, int]]

    def __len__(self) -> int:
        return len(self.query_ids)

    def select(self, indices: Sequence[int]) -> Self:
        """The queries at ``indices`` and their judgements; the corpus stays whole."""
        query_ids = _pick(self.query_ids, indices)
        return replace(
            self,
            query_ids=query_ids,
            query_texts=_pick(self.query_texts, indices),
            qrels={qid: self.qrels[qid] for qid in query_ids},
        )

    def cap_corpus(self, n: int, rng: random.Random) -> Self:
        """Keep every judged document plus random others, ``n`` documents in all (more if more are judged).

        Quick runs need this because the corpus, not the queries, dominates encoding time; with fewer
        distractors retrieval gets easier, so capped scores are for smoke tests, not for comparison.
        """
        if len(self.corpus_ids) <= n:
            return self
        judged = {doc for docs in self.qrels.values() for doc in docs}
        others = [i for i, doc in enumerate(self.corpus_ids) if doc not in judged]
        extra = set(rng.sample(others, max(0, min(len(others), n - len(judged)))))
        keep = [i for i, doc in enumerate(self.corpus_ids) if doc in judged or i in extra]
        return replace(self, corpus_ids=_pick(self.corpus_ids, keep), corpus_texts=_pick(self.corpus_texts, keep))


TaskData = PairData | ClassificationData | LabelledTexts | RerankingData | RetrievalData


@dataclass(frozen=True, eq=False)
class Task:
    """A loaded task: its spec, its data, and what was dropped by the format's own rules.

    Attributes:
        spec: The parsed ``task.json``.
        data: Samples, shaped for the task type.
        dropped: Counts of samples the format says to leave out (e.g. retrieval queries without a relevant
            document, which mteb also drops), keyed by reason; reported in the results.
        n_total: Number of samples before any ``--max-per-task`` subsampling.
    """

    spec: TaskSpec
    data: TaskData
    dropped: Mapping[str, int] = field(default_factory=dict)
    n_total: int = -1

    def __post_init__(self) -> None:
        if self.n_total < 0:
            object.__setattr__(self, "n_total", len(self.data))

    @property
    def name(self) -> str:
        """The task's name."""
        return self.spec.name

    @property
    def n_samples(self) -> int:
        """Samples that will be scored (after subsampling)."""
        return len(self.data)

    def subsample(self, n: int | None, seed: int) -> Task:
        """At most ``n`` samples, drawn without replacement by a ``random.Random(seed)``, kept in file order.

        ``None`` or ``n >= len`` returns the task unchanged, so a full run and an over-large cap agree exactly.
        A retrieval corpus is capped at ``n`` documents too (see :meth:`RetrievalData.cap_corpus`); the number of
        documents left out is reported under ``dropped["corpus_subsampled"]``.
        """
        if n is None or n >= len(self.data):
            return self
        if n < 1:
            raise ValueError(f"max_per_task must be at least 1, got {n}")
        rng = random.Random(seed)
        data = self.data.select(sorted(rng.sample(range(len(self.data)), n)))
        dropped = dict(self.dropped)
        if isinstance(data, RetrievalData):
            capped = data.cap_corpus(n, rng)
            dropped["corpus_subsampled"] = len(data.corpus_ids) - len(capped.corpus_ids)
            data = capped
        return replace(self, data=data, dropped=dropped)
