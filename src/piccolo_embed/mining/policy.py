"""Which retrieved passages become hard negatives: a frozen policy and a pure selection function.

The rules follow BGE's ``hn_mine`` (a rank window, by default ranks 10-100, so the very top, where
unlabelled positives crowd, is skipped) plus a false-negative filter relative to the positive's score, in
the spirit of sentence-transformers' ``mine_hard_negatives`` margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A retrieved passage.

    Attributes:
        text: Passage text.
        score: Similarity to the query.
        rank: 0-based position in the retrieval list (before any filtering).
    """

    text: str
    score: float
    rank: int


@dataclass(frozen=True)
class Selection:
    """What :meth:`NegativePolicy.apply` chose for one query, with counts of what it dropped and why.

    Attributes:
        negatives: The chosen negatives, in rank order.
        eligible: Candidates in the window that passed every rule (the pool sampled from).
        dropped_positive: Window candidates equal to a positive or to the query.
        dropped_false_negative: Window candidates scoring above :meth:`NegativePolicy.score_limit`.
    """

    negatives: tuple[Candidate, ...]
    eligible: int
    dropped_positive: int
    dropped_false_negative: int


@dataclass(frozen=True)
class NegativePolicy:
    """How hard negatives are picked from a query's retrieval list.

    Attributes:
        rank_start: First rank (0-based, inclusive) of the sampling window.
        rank_end: End of the window (exclusive); also how many passages are retrieved per query.
        num_negatives: Negatives sampled per query (fewer when the window has fewer eligible passages).
        max_score_ratio: Drop a candidate scoring above ``ratio * positive_score`` as a likely false
            negative; ``None`` disables the rule.
        margin: Drop a candidate scoring above ``positive_score - margin``; ``None`` disables the rule.
        seed: Base seed; each query's generator is seeded with ``(seed, query_index)``, so results do not
            depend on batching or on which other queries are mined.
    """

    rank_start: int = 10
    rank_end: int = 100
    num_negatives: int = 7
    max_score_ratio: float | None = 0.95
    margin: float | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 <= self.rank_start < self.rank_end:
            raise ValueError(f"rank window must satisfy 0 <= start < end, got {self.rank_start}-{self.rank_end}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be positive, got {self.num_negatives}")
        if self.max_score_ratio is not None and not 0 < self.max_score_ratio <= 1:
            raise ValueError(f"max_score_ratio must be in (0, 1], got {self.max_score_ratio}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be non-negative, got {self.margin}")

    def score_limit(self, positive_score: float) -> float:
        """Highest score a negative may have, given the (weakest) positive's score; ``inf`` with no rule.

        For a negative positive score the ratio would put the limit above the positive, so with the ratio
        rule on the limit never exceeds the positive score itself.
        """
        limit = np.inf
        if self.max_score_ratio is not None:
            limit = min(positive_score, positive_score * self.max_score_ratio)
        if self.margin is not None:
            limit = min(limit, positive_score - self.margin)
        return float(limit)

    def apply(
        self,
        candidates: Sequence[Candidate],
        *,
        query: str,
        positives: Sequence[str],
        positive_score: float,
        query_index: int,
        exclude: Sequence[str] = (),
    ) -> Selection:
        """Choose negatives for one query; a pure function of its arguments.

        Args:
            candidates: Retrieved passages, any order (ranks are read from them).
            query: The query text; a candidate equal to it is not a negative.
            positives: The query's positives; candidates equal to any of them (after stripping) are dropped.
            positive_score: Score of the weakest positive; the false-negative limit is relative to it.
            query_index: Position of the query in the input; seeds its generator.
            exclude: Further texts that must not be chosen (existing negatives being kept).

        Returns:
            The chosen negatives in rank order, and counts of what was dropped.
        """
        not_negative = {text.strip() for text in positives} | {query.strip()}
        excluded = {text.strip() for text in exclude}
        limit = self.score_limit(positive_score)
        seen: set[str] = set()
        eligible: list[Candidate] = []
        dropped_positive = dropped_false = 0
        for cand in sorted(candidates, key=lambda c: c.rank):
            key = cand.text.strip()
            if not self.rank_start <= cand.rank < self.rank_end or key in seen or key in excluded:
                continue
            seen.add(key)
            if key in not_negative:
                dropped_positive += 1
            elif cand.score > limit:
                dropped_false += 1
            else:
                eligible.append(cand)
        chosen = eligible
        if len(eligible) > self.num_negatives:
            rng = np.random.default_rng([self.seed, query_index])
            picks = np.sort(rng.choice(len(eligible), size=self.num_negatives, replace=False))
            chosen = [eligible[i] for i in picks]
        return Selection(tuple(chosen), len(eligible), dropped_positive, dropped_false)
