"""C-MTEB-style evaluation: offline task folders scored by our evaluators, or mteb's own benchmark.

``evaluate(encoder, tasks)`` works with any :class:`~piccolo_embed.protocols.Encoder`. The real C-MTEB runs
through :mod:`piccolo_embed.evaluation.mteb_bridge`, which is not imported here: importing mteb takes seconds,
and only the benchmark path needs it (retrieval metrics import it on first use).
"""

from piccolo_embed.evaluation.cache import CachedEncoder
from piccolo_embed.evaluation.evaluators import EVALUATORS, EvalOptions
from piccolo_embed.evaluation.loading import discover, load_task, load_tasks
from piccolo_embed.evaluation.runner import Results, TaskResult, evaluate, format_table
from piccolo_embed.evaluation.tasks import Task, TaskFormatError, TaskSpec, TaskType

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
