"""``piccolo-embed eval``: score a model on local C-MTEB-style task folders, or on the real C-MTEB via mteb."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_embed.cli.common import add_model_arguments, load_embedder
from piccolo_embed.evaluation.tasks import Benchmark, TaskType

if TYPE_CHECKING:
    from piccolo_embed.evaluation.runner import Results


def _names(values: list[str] | None) -> list[str] | None:
    """Flatten repeated and comma-separated options: ``--only A,B --only C`` -> ``[A, B, C]``."""
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on C-MTEB-style tasks",
        description="Score a model on local task folders (offline) or on the real C-MTEB through mteb.",
    )
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--tasks", nargs="+", metavar="PATH", type=Path, help="task folders, or folders whose subfolders are tasks"
    )
    source.add_argument(
        "--benchmark", choices=[b.value for b in Benchmark], help="run mteb's benchmark (needs the Hugging Face hub)"
    )
    parser.add_argument(
        "--only", action="append", metavar="NAMES", help="comma-separated task names to run (repeatable)"
    )
    parser.add_argument(
        "--types",
        action="append",
        metavar="TYPES",
        help=f"comma-separated task types to run: {', '.join(t.value for t in TaskType)}",
    )
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--max-per-task", type=int, metavar="N", help="score at most N samples per task (seeded; quick runs)"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of subsampling and the protocols (mteb: 42)")
    parser.add_argument("--no-cache", action="store_true", help="do not reuse embeddings of repeated texts")
    parser.set_defaults(func=run)


def _local(args: argparse.Namespace) -> Results:
    from piccolo_embed.evaluation.evaluators import EvalOptions
    from piccolo_embed.evaluation.loading import load_tasks
    from piccolo_embed.evaluation.runner import evaluate

    # Check every task file before paying for the model load.
    tasks = load_tasks(args.tasks, only=_names(args.only), types=_names(args.types))
    if not tasks:
        raise ValueError("no task left after --only/--types")
    embedder = load_embedder(args)
    return evaluate(
        embedder,
        tasks,
        options=EvalOptions(seed=args.seed),
        max_per_task=args.max_per_task,
        cache=not args.no_cache,
        model_name=args.model,
    )


def _benchmark(args: argparse.Namespace) -> Results:
    if args.max_per_task is not None or args.types is not None:
        raise ValueError("--max-per-task and --types apply to --tasks only; use --only to pick benchmark tasks")
    from piccolo_embed.evaluation.mteb_bridge import benchmark_tasks, evaluate_mteb_tasks

    tasks = benchmark_tasks(args.benchmark, _names(args.only))
    return evaluate_mteb_tasks(load_embedder(args), tasks, model_name=args.model, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table (scores x100), and write the JSON if asked."""
    if args.max_per_task is not None and args.max_per_task < 1:
        raise ValueError(f"--max-per-task must be at least 1, got {args.max_per_task}")
    from piccolo_embed.evaluation.runner import format_table

    start = time.perf_counter()
    results = _benchmark(args) if args.benchmark else _local(args)
    print(format_table(results))
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    if args.output:
        print(f"results written to {results.save(args.output)}")
    return 0
