"""Run tasks against an encoder and collect :class:`Results`: JSON for machines, a table for people.

The overall score is the plain mean over tasks, the way C-MTEB averages (and piccolo-large-zh's 64.11 was
computed); per-type means are reported next to it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from piccolo_embed.atomic import write_json_atomic
from piccolo_embed.evaluation.cache import CachedEncoder
from piccolo_embed.evaluation.evaluators import EVALUATORS, EvalOptions
from piccolo_embed.evaluation.loading import load_tasks
from piccolo_embed.evaluation.tasks import TYPE_ORDER, Task, TaskType

if TYPE_CHECKING:
    from piccolo_embed.protocols import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    """Scores of one task.

    Attributes:
        name: Task name.
        type: Task family.
        main_score_name: Which metric is the task's score.
        main_score: Its value (0-1 scale).
        metrics: Every metric the evaluator computed.
        n_samples: Samples scored (after ``max_per_task``); ``None`` when unknown (mteb benchmark runs).
        n_total: Samples in the task before subsampling.
        seconds: Wall time, encoding included (a text already encoded by an earlier task costs nothing).
        dropped: Samples the task format leaves out, by reason.
        source: Where the task came from (a folder, or ``mteb:<name>``).
    """

    name: str
    type: TaskType
    main_score_name: str
    main_score: float
    metrics: Mapping[str, float]
    n_samples: int | None
    n_total: int | None
    seconds: float
    dropped: Mapping[str, int] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["type"] = self.type.value
        out["metrics"] = dict(self.metrics)
        out["dropped"] = dict(self.dropped)
        return out


@dataclass(frozen=True)
class Results:
    """Scores of a run: per task, per type, overall.

    Attributes:
        tasks: One result per task, in run order.
        model: Name of the evaluated model.
        settings: How the run was made (seed, subsampling, protocol options), stored with the scores.
        created: When the run finished (UTC, ISO 8601).
    """

    tasks: Sequence[TaskResult]
    model: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(tz=UTC).isoformat(timespec="seconds"))

    @property
    def average(self) -> float:
        """Mean main score over tasks (C-MTEB's overall average)."""
        return float(np.mean([t.main_score for t in self.tasks])) if self.tasks else float("nan")

    def by_type(self) -> dict[TaskType, float]:
        """Mean main score of each task type present, in C-MTEB order."""
        groups = {kind: [t.main_score for t in self.tasks if t.type is kind] for kind in TYPE_ORDER}
        return {kind: float(np.mean(scores)) for kind, scores in groups.items() if scores}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; see ``docs/results.md`` for the layout."""
        counts = {kind: sum(t.type is kind for t in self.tasks) for kind in TYPE_ORDER}
        return {
            "model": self.model,
            "created": self.created,
            "settings": dict(self.settings),
            "average": self.average,
            "n_tasks": len(self.tasks),
            "by_type": {k.value: {"average": v, "n_tasks": counts[k]} for k, v in self.by_type().items()},
            "tasks": {t.name: t.to_dict() for t in self.tasks},
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as UTF-8 JSON, atomically; undefined scores (NaN) become ``null`` with a warning."""
        path = Path(path)
        write_json_atomic(path, _nan_to_null(self.to_dict(), ""))
        return path


def _nan_to_null(value: Any, where: str) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (bare ``NaN`` is not JSON), each one logged."""
    if isinstance(value, Mapping):
        return {key: _nan_to_null(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_null(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        log.warning("results: %s is %s (undefined); written as null", where, value)
        return None
    return value


def format_table(results: Results) -> str:
    """A Markdown table (readable on a terminal too): tasks grouped by type, then type means, then the average.

    Scores are x100 with two decimals, as C-MTEB reports them.
    """
    lines = ["| Task | Type | Metric | N | Score | Seconds |", "|---|---|---|---:|---:|---:|"]
    ordered = sorted(results.tasks, key=lambda t: (TYPE_ORDER.index(t.type), t.name.lower()))
    for t in ordered:
        n = "" if t.n_samples is None else str(t.n_samples)
        lines.append(
            f"| {t.name} | {t.type.value} | {t.main_score_name} | {n} | {100 * t.main_score:.2f} | {t.seconds:.1f} |"
        )
    for kind, score in results.by_type().items():
        count = sum(t.type is kind for t in results.tasks)
        lines.append(f"| **{kind.value}** ({count} task{'s' * (count != 1)}) | | mean | | {100 * score:.2f} | |")
    total = sum(t.seconds for t in results.tasks)
    lines.append(f"| **Average** ({len(results.tasks)} tasks) | | mean | | {100 * results.average:.2f} | {total:.1f} |")
    return "\n".join(lines)


def evaluate_task(task: Task, encoder: Encoder, options: EvalOptions) -> TaskResult:
    """Score one task (already subsampled if wanted) with the evaluator registered for its type."""
    start = time.perf_counter()
    scores = EVALUATORS[task.spec.type](task, encoder, options)
    seconds = time.perf_counter() - start
    if task.spec.main_score not in scores:
        raise ValueError(
            f"task {task.name}: main_score {task.spec.main_score!r} is not computed for {task.spec.type.value}; "
            f"choose one of: {', '.join(sorted(scores))}"
        )
    return TaskResult(
        name=task.name,
        type=task.spec.type,
        main_score_name=task.spec.main_score,
        main_score=scores[task.spec.main_score],
        metrics=scores,
        n_samples=task.n_samples,
        n_total=task.n_total,
        seconds=seconds,
        dropped=dict(task.dropped),
        source=str(task.spec.path),
    )


def evaluate(
    encoder: Encoder,
    tasks: Iterable[Task | str | Path],
    *,
    options: EvalOptions | None = None,
    max_per_task: int | None = None,
    cache: bool = True,
    model_name: str = "",
) -> Results:
    """Score ``encoder`` on ``tasks``.

    Args:
        encoder: Anything with ``encode(texts, *, role) -> np.ndarray`` (unit-norm float32 rows).
        tasks: Loaded tasks, or task folders / folders of task folders (all loaded and checked first).
        options: Protocol settings; mteb's C-MTEB defaults when omitted.
        max_per_task: Score at most this many samples per task, drawn with ``options.seed`` (quick runs).
        cache: Encode each (role, text) once across the whole run.
        model_name: Stored in the results.
    """
    options = options or EvalOptions()
    loaded: list[Task] = []
    for item in tasks:
        loaded.extend([item] if isinstance(item, Task) else load_tasks([item]))
    names = [t.name for t in loaded]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"task names must be unique in a run; repeated: {', '.join(duplicates)}")
    runner = CachedEncoder(encoder) if cache else encoder
    out = []
    for number, task in enumerate(loaded, start=1):
        task = task.subsample(max_per_task, options.seed)  # noqa: PLW2901 - the subsampled task replaces it
        log.info("[%d/%d] %s (%s, %d samples)", number, len(loaded), task.name, task.spec.type.value, task.n_samples)
        result = evaluate_task(task, runner, options)
        log.info("[%d/%d] %s: %s = %.2f (%.1f s)", number, len(loaded), task.name, result.main_score_name,
                 100 * result.main_score, result.seconds)  # fmt: skip
        out.append(result)
    settings = {"seed": options.seed, "max_per_task": max_per_task, "cache": cache, "options": asdict(options)}
    return Results(tasks=out, model=model_name, settings=settings)
