"""Dev evaluation during training: score local tasks every N steps and keep the best model by their average.

The scores use the same evaluators as ``piccolo-embed eval`` (optionally on a seeded subsample per task), so a
curve logged here and a final evaluation measure the same thing. Only the main process evaluates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_embed.atomic import write_json_atomic
from piccolo_embed.evaluation.loading import load_tasks
from piccolo_embed.evaluation.runner import evaluate
from piccolo_embed.inference.embedder import Embedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from piccolo_embed.evaluation.tasks import Task
    from piccolo_embed.types import RoleSpecs

log = logging.getLogger(__name__)

BEST_DIR = "best"
BEST_FILE = "best.json"


class DevEvaluator:
    """Scores the model under training on dev tasks and saves it to ``output_dir/best`` when the average improves.

    Args:
        tasks: Task folders (or folders of task folders); loaded and checked once, before training starts.
        roles: The roles the saved model will carry, so dev scores use the model as it will be used.
        output_dir: The run's directory; ``best/`` and ``best.json`` go there.
        save: Writes a model directory exactly as the run's final save does (vocabulary restored and all), atomically.
        max_per_task: Seeded subsample per task (``None``: whole tasks).
    """

    def __init__(
        self,
        tasks: Sequence[str | Path],
        roles: RoleSpecs,
        output_dir: Path,
        save: Callable[[SentenceTransformer, Path], None],
        *,
        max_per_task: int | None = None,
    ) -> None:
        self.tasks: list[Task] = load_tasks(list(tasks))
        self.roles = roles
        self.output_dir = output_dir
        self.save = save
        self.max_per_task = max_per_task
        best = output_dir / BEST_FILE
        self.best = json.loads(best.read_text(encoding="utf-8"))["average"] if best.is_file() else float("-inf")

    def __call__(self, model: SentenceTransformer, step: int) -> dict[str, float]:
        """Scores (0-1) as ``dev/average``, ``dev/<type>`` and ``dev/<task>``; the model is left in train mode."""
        try:
            results = evaluate(Embedder(model, self.roles), self.tasks, max_per_task=self.max_per_task)
        finally:
            model.train()
        scores = {"dev/average": results.average}
        scores.update({f"dev/{kind.value}": value for kind, value in results.by_type().items()})
        scores.update({f"dev/{task.name}": task.main_score for task in results.tasks})
        if results.average > self.best:
            self.best = results.average
            self.save(model, self.output_dir / BEST_DIR)
            model.train()
            record = {"step": step, "average": results.average, "scores": scores}
            write_json_atomic(self.output_dir / BEST_FILE, record)
            log.info("step %d: new best dev average %.2f, saved to %s", step, 100 * results.average, BEST_DIR)
        return scores
