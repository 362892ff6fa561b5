"""Markdown table of one or more ``piccolo-embed eval --output`` files side by side (scores x100).

    python scripts/results_table.py runs/eval/starter.json runs/recipe-42/eval-final.json [--mean LABEL=A,B]

Rows are the tasks (grouped by type), then the per-type means and the plain mean over tasks (C-MTEB's average).
``--mean LABEL=1,2`` adds a column with the mean of columns 1 and 2 (1-based), for seeds of one recipe.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TYPES = ("STS", "PairClassification", "Classification", "Clustering", "Reranking", "Retrieval")


def load(path: Path) -> dict[str, tuple[str, float]]:
    """Task name -> (type, main score x100)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: (task["type"], 100 * task["main_score"]) for name, task in data["tasks"].items()}


def label(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name not in ("", ".") else path.stem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--mean", action="append", default=[], help="LABEL=i,j: mean of columns i and j (1-based)")
    args = parser.parse_args()
    columns = {label(path): load(path) for path in args.files}
    for spec in args.mean:
        name, _, picks = spec.partition("=")
        chosen = [list(columns.values())[int(i) - 1] for i in picks.split(",")]
        columns[name] = {t: (kind, statistics.fmean(c[t][1] for c in chosen)) for t, (kind, _) in chosen[0].items()}
    tasks = sorted({t for c in columns.values() for t in c}, key=lambda t: (TYPES.index(_type(columns, t)), t))
    print("| Task | Type | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for task in tasks:
        cells = [f"{c[task][1]:.2f}" if task in c else "" for c in columns.values()]
        print(f"| {task} | {_type(columns, task)} | " + " | ".join(cells) + " |")
    for kind in TYPES:
        means = [_mean([s for t, (k, s) in c.items() if k == kind]) for c in columns.values()]
        print(f"| **{kind}** | mean | " + " | ".join(means) + " |")
    overall = [_mean([s for _, s in c.values()]) for c in columns.values()]
    print("| **Average** | all tasks | " + " | ".join(overall) + " |")
    return 0


def _type(columns: dict[str, dict[str, tuple[str, float]]], task: str) -> str:
    return next(c[task][0] for c in columns.values() if task in c)


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" if values else ""


if __name__ == "__main__":
    raise SystemExit(main())
