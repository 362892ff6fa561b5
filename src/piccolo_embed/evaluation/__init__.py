"""C-MTEB-style evaluation: offline task folders scored by our evaluators, or mteb's own benchmark.

``evaluate(encoder, tasks)`` works with any :class:`~piccolo_embed.protocols.Encoder`. The real C-MTEB runs
through :mod:`piccolo_embed.evaluation.mteb_bridge`, which is not imported here: importing mteb takes seconds,
and only the benchmark path needs it. The names below load on first use, so ``piccolo-embed --help`` (which
reads :class:`TaskType` from :mod:`~piccolo_embed.evaluation.tasks`) does not import scipy and scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from piccolo_embed.lazy import lazy_exports

if TYPE_CHECKING:
    from piccolo_embed.errors import TaskFormatError
    from piccolo_embed.evaluation.cache import CachedEncoder
    from piccolo_embed.evaluation.evaluators import EVALUATORS, EvalOptions
    from piccolo_embed.evaluation.loading import discover, load_task, load_tasks
    from piccolo_embed.evaluation.runner import Results, TaskResult, evaluate, format_table
    from piccolo_embed.evaluation.tasks import Task, TaskSpec, TaskType

_MODULES = {
    "cache": ("CachedEncoder",),
    "evaluators": ("EVALUATORS", "EvalOptions"),
    "loading": ("discover", "load_task", "load_tasks"),
    "runner": ("Results", "TaskResult", "evaluate", "format_table"),
    "tasks": ("Task", "TaskSpec", "TaskType"),
}
__getattr__ = lazy_exports(
    __name__,
    {"TaskFormatError": "piccolo_embed.errors"}
    | {name: f"{__name__}.{module}" for module, names in _MODULES.items() for name in names},
)

__all__ = [
    "EVALUATORS",
    "CachedEncoder",
    "EvalOptions",
    "Results",
    "Task",
    "TaskFormatError",
    "TaskResult",
    "TaskSpec",
    "TaskType",
    "discover",
    "evaluate",
    "format_table",
    "load_task",
    "load_tasks",
]
