"""Run mteb's own tasks (the real C-MTEB) with any :class:`~piccolo_embed.protocols.Encoder`.

:class:`MtebEncoder` adapts our protocol to mteb 2.x's ``EncoderProtocol``: it reads the texts out of mteb's
dataloader and maps mteb's ``prompt_type`` to our roles (``query`` -> :attr:`Role.QUERY`, ``document`` ->
:attr:`Role.PASSAGE`) on retrieval and reranking, and uses :attr:`Role.NONE` (no instruction) on every
symmetric task. The benchmark's data comes from the Hugging Face hub; where the hub cannot be reached the run
stops with :class:`HubUnreachableError`, one line naming the task and what to do instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import mteb
import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from piccolo_embed.errors import HubUnreachableError
from piccolo_embed.evaluation.cache import CachedEncoder
from piccolo_embed.evaluation.runner import Results, TaskResult
from piccolo_embed.evaluation.tasks import Benchmark, TaskType
from piccolo_embed.types import Role

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    from piccolo_embed.protocols import Encoder

log = logging.getLogger(__name__)


#: Task types whose two sides are asymmetric; mteb's prompt types pick our roles only there.
ASYMMETRIC_TYPES: frozenset[str] = frozenset({TaskType.RETRIEVAL.value, TaskType.RERANKING.value})
_PROMPT_ROLES: dict[str, Role] = {"query": Role.QUERY, "document": Role.PASSAGE}


def role_for(task_type: str, prompt_type: PromptType | str | None) -> Role:
    """Our role for an mteb encode call: query/passage on retrieval and reranking, none elsewhere."""
    if task_type not in ASYMMETRIC_TYPES or prompt_type is None:
        return Role.NONE
    return _PROMPT_ROLES[getattr(prompt_type, "value", str(prompt_type))]


class MtebEncoder(AbsEncoder):
    """mteb ``EncoderProtocol`` over one of our encoders; cosine similarity, as our vectors are unit-norm.

    Attributes:
        encoder: The wrapped encoder (a :class:`CachedEncoder` in :func:`evaluate_mteb_tasks`).
        calls: ``(task name, role, number of texts)`` of every encode call, for logs and tests.
    """

    def __init__(self, encoder: Encoder, *, name: str = "piccolo-embed/model") -> None:
        self.encoder = encoder
        self.mteb_model_meta = ModelMeta.create_empty(
            {"name": name, "revision": "local", "similarity_fn_name": ScoringFunction.COSINE}
        )
        self.calls: list[tuple[str, Role, int]] = []

    def encode(
        self,
        inputs: DataLoader[Any],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of ``inputs`` in one call to the wrapped encoder (it batches for itself)."""
        texts = [text for batch in inputs for text in batch["text"]]
        role = role_for(task_metadata.type, prompt_type)
        self.calls.append((task_metadata.name, role, len(texts)))
        return np.asarray(self.encoder.encode(texts, role=role), dtype=np.float32)


def _ensure_loaded(task: AbsTask) -> bool:
    """Load the task's data unless injected already; True if we loaded it (and should unload it)."""
    if task.data_loaded:
        return False
    try:
        task.load_data()
    except OSError as err:  # ConnectionError, offline-mode and missing-file errors from datasets/huggingface_hub
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubUnreachableError(
            f"cannot load C-MTEB task {task.metadata.name} ({task.metadata.dataset['path']}) from the Hugging Face "
            f"hub: {message}. Run where the hub is reachable (or with a filled HF cache and HF_DATASETS_OFFLINE=1), "
            "or evaluate local task folders with --tasks"
        ) from None
    return True


def _to_result(task: AbsTask, scores: dict[str, list[dict[str, Any]]], seconds: float) -> TaskResult:
    """Average mteb's per-split, per-subset score dicts into one :class:`TaskResult`."""
    entries = [entry for split in task.eval_splits for entry in scores.get(split, [])]
    numeric = {
        key
        for entry in entries
        for key, value in entry.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    metrics = {key: float(np.mean([e[key] for e in entries if key in e])) for key in sorted(numeric)}
    return TaskResult(
        name=task.metadata.name,
        type=TaskType.parse(task.metadata.type),
        main_score_name=task.metadata.main_score,
        main_score=metrics["main_score"],
        metrics=metrics,
        n_samples=None,
        n_total=None,
        seconds=seconds,
        source=f"mteb:{task.metadata.dataset['path']}",
    )


def evaluate_mteb_tasks(
    encoder: Encoder, tasks: Iterable[AbsTask], *, model_name: str = "", batch_size: int = 256
) -> Results:
    """Score ``encoder`` on mteb task objects with mteb's own evaluators, one task at a time.

    The embedding cache is cleared between tasks (C-MTEB corpora are large and rarely shared), and data we
    loaded is unloaded again, so memory holds one task at a time.
    """
    cached = CachedEncoder(encoder)
    adapter = MtebEncoder(cached, name=f"piccolo-embed/{model_name or 'model'}")
    out: list[TaskResult] = []
    for task in tasks:
        loaded_here = _ensure_loaded(task)
        start = time.perf_counter()
        run = mteb.evaluate(
            adapter,
            task,
            cache=None,
            co2_tracker=False,
            overwrite_strategy="always",
            encode_kwargs={"batch_size": batch_size},
            show_progress_bar=False,
        )
        result = _to_result(task, run.task_results[0].scores, time.perf_counter() - start)
        log.info("%s: %s = %.2f (%.1f s)", result.name, result.main_score_name, 100 * result.main_score, result.seconds)
        out.append(result)
        cached.clear()
        if loaded_here:
            task.unload_data()
    settings = {"mteb_version": mteb.__version__, "tasks": [t.name for t in out]}
    return Results(tasks=out, model=model_name, settings=settings)


def benchmark_tasks(benchmark: Benchmark | str, only: Sequence[str] | None = None) -> list[AbsTask]:
    """The benchmark's mteb tasks, optionally only those named (case-insensitive)."""
    benchmark = Benchmark.parse(benchmark)
    tasks = list(mteb.get_benchmark(benchmark.mteb_name).tasks)
    if only is None:
        return tasks
    by_name = {t.metadata.name.lower(): t for t in tasks}
    if missing := [name for name in only if name.lower() not in by_name]:
        raise ValueError(f"unknown {benchmark.value} task(s) {', '.join(missing)}; available: {', '.join(by_name)}")
    return [by_name[name.lower()] for name in dict.fromkeys(only)]
