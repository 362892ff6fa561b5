"""Statistics of a mining run, so a bad policy or a weak model shows up before training on its output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from piccolo_embed.mining.policy import Selection

PERCENTILES = (5, 25, 50, 75, 95)


def describe(values: Sequence[float]) -> dict[str, float | int]:
    """Count, min, mean, percentiles and max of ``values`` (only the count when empty)."""
    if not len(values):
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64)
    summary: dict[str, float | int] = {"count": len(array), "min": float(array.min()), "mean": float(array.mean())}
    for p, value in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True):
        summary[f"p{p}"] = float(value)
    summary["max"] = float(array.max())
    return summary


@dataclass
class MiningStats:
    """Counts and score samples collected while mining.

    Attributes:
        num_negatives: The policy's target ``k``, to count queries that fell short of it.
        queries: Queries mined.
        written: Records written.
        without_negatives: Queries for which no negative survived (dropped unless kept explicitly).
        short: Queries that got some, but fewer than ``k``, negatives.
        dropped_positive: Window candidates equal to a positive or the query.
        dropped_false_negative: Window candidates above the false-negative score limit.
        positive_scores: Score of each query's weakest positive.
        negative_scores: Score of every chosen negative.
        seconds: Wall time of the run.
    """

    num_negatives: int
    queries: int = 0
    written: int = 0
    without_negatives: int = 0
    short: int = 0
    dropped_positive: int = 0
    dropped_false_negative: int = 0
    positive_scores: list[float] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, selection: Selection, positive_score: float) -> None:
        """Record one query's outcome."""
        self.queries += 1
        count = len(selection.negatives)
        self.without_negatives += count == 0
        self.short += 0 < count < self.num_negatives
        self.dropped_positive += selection.dropped_positive
        self.dropped_false_negative += selection.dropped_false_negative
        self.positive_scores.append(positive_score)
        self.negative_scores.extend(c.score for c in selection.negatives)

    def summary(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "queries": self.queries,
            "written": self.written,
            "target_negatives": self.num_negatives,
            "queries_without_negatives": self.without_negatives,
            "queries_with_fewer_than_k": self.short + self.without_negatives,
            "negatives_chosen": len(self.negative_scores),
            "dropped_equal_to_positive_or_query": self.dropped_positive,
            "dropped_likely_false_negative": self.dropped_false_negative,
            "positive_scores": describe(self.positive_scores),
            "negative_scores": describe(self.negative_scores),
            "seconds": round(self.seconds, 2),
        }

    def format(self) -> str:
        """Human-readable multi-line report."""
        s = self.summary()
        lines = [
            f"queries mined            {s['queries']}",
            f"records written          {s['written']}  ({self.seconds:.1f} s)",
            f"negatives chosen         {s['negatives_chosen']} (target {self.num_negatives} per query)",
            f"queries with < k negs    {s['queries_with_fewer_than_k']} ({self.without_negatives} with none)",
            f"dropped: = positive      {self.dropped_positive}",
            f"dropped: false negative  {self.dropped_false_negative}",
        ]
        for name in ("positive_scores", "negative_scores"):
            d = s[name]
            if d["count"]:  # type: ignore[index]
                cells = "  ".join(f"{key} {value:.3f}" for key, value in d.items() if key != "count")  # type: ignore[union-attr]
                lines.append(f"{name:<24} {cells}")
        return "\n".join(lines)
