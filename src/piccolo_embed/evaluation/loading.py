"""Read task folders into :class:`~piccolo_embed.evaluation.tasks.Task` objects, checking every line.

A bad folder, file, line or field raises :class:`~piccolo_embed.evaluation.tasks.TaskFormatError` naming all
three; nothing is skipped silently. The only rows left out are those the format itself excludes (reranking
queries without a positive, retrieval queries without a relevant document: mteb drops both), and their counts
travel with the task into the results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from piccolo_embed.errors import TaskFormatError
from piccolo_embed.evaluation.tasks import (
    ClassificationData,
    LabelledTexts,
    PairData,
    RerankingData,
    RetrievalData,
    Task,
    TaskData,
    TaskSpec,
    TaskType,
)
from piccolo_embed.textfiles import EncodingError, read_utf8, utf8_lines
from piccolo_embed.types import TaskKind

TASK_FILE = "task.json"
QRELS_HEADER = ("query-id", "corpus-id", "score")


def document_text(title: str, text: str) -> str:
    """The text a model reads for a corpus entry: mteb's ``(title + " " + text).strip()``, or ``text`` untitled.

    Matching mteb here keeps our retrieval scores comparable with ``mteb`` runs on the same corpus.
    """
    return (title + " " + text).strip() if title else text.strip()


@dataclass(frozen=True)
class _Row:
    """One parsed JSONL line, with accessors that raise errors naming file, line and field."""

    path: Path
    line: int
    record: dict[str, Any]

    def fail(self, field: str, problem: str) -> TaskFormatError:
        return TaskFormatError(self.path, problem, line=self.line, field=field)

    def get(self, field: str) -> Any:
        if field not in self.record:
            raise self.fail(field, "missing")
        return self.record[field]

    def text(self, field: str) -> str:
        value = self.get(field)
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {type(value).__name__}")
        if not value.strip():
            raise self.fail(field, "empty text")
        return value

    def optional_string(self, field: str) -> str:
        value = self.record.get(field, "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {type(value).__name__}")
        return value

    def number(self, field: str) -> float:
        value = self.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(field, f"must be a finite number, got {value!r}")
        return float(value)

    def binary(self, field: str) -> int:
        value = self.get(field)
        if isinstance(value, bool) or value not in (0, 1):
            raise self.fail(field, f"must be 0 or 1, got {value!r}")
        return int(value)

    def label(self, field: str) -> str:
        value = self.get(field)
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
            raise self.fail(field, f"must be a non-empty string or an integer, got {value!r}")
        return str(value)

    def texts(self, field: str) -> tuple[str, ...]:
        value = self.get(field)
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of strings, got {type(value).__name__}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(field, f"item {index} must be a non-empty string, got {item!r}")
        return tuple(value)


def _rows(path: Path) -> Iterator[_Row]:
    """Yield each line of a JSONL file as a :class:`_Row`; blank lines and non-objects are errors."""
    if not path.is_file():
        raise TaskFormatError(path, "file not found")
    try:
        for number, raw in utf8_lines(path):
            if not raw.strip():
                raise TaskFormatError(path, "blank line", line=number)
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise TaskFormatError(path, f"invalid JSON ({err.msg}, column {err.colno})", line=number) from None
            if not isinstance(record, dict):
                raise TaskFormatError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
            yield _Row(path, number, record)
    except EncodingError as err:
        raise _not_utf8(err) from None


def _not_utf8(err: EncodingError) -> TaskFormatError:
    return TaskFormatError(err.path, f"not valid UTF-8 (byte {err.column} of the line)", line=err.line)


def read_spec(folder: Path) -> TaskSpec:
    """Parse and check ``folder/task.json``."""
    path = folder / TASK_FILE
    try:
        record = json.loads(read_utf8(path))
    except FileNotFoundError:
        raise TaskFormatError(path, "file not found") from None
    except EncodingError as err:
        raise _not_utf8(err) from None
    except json.JSONDecodeError as err:
        raise TaskFormatError(path, f"invalid JSON ({err.msg})", line=err.lineno) from None
    if not isinstance(record, dict):
        raise TaskFormatError(path, "expected a JSON object")
    row = _Row(path, 1, record)
    try:
        task_type = TaskType.parse(row.text("type"))
    except ValueError as err:
        raise row.fail("type", str(err)) from None
    s2p = row.get("s2p")
    if not isinstance(s2p, bool):
        raise row.fail("s2p", f"must be true or false, got {s2p!r}")
    n = record.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise row.fail("n", f"must be a non-negative integer, got {n!r}")
    return TaskSpec(
        name=row.text("name"),
        type=task_type,
        split=row.text("split"),
        main_score=row.text("main_score"),
        kind=TaskKind.S2P if s2p else TaskKind.S2S,
        path=folder,
        n=n,
    )


# Each loader returns (data, dropped-by-format counts, rows in the main file before anything is dropped).
LoaderResult = tuple[TaskData, dict[str, int], int]


def _load_pairs(spec: TaskSpec, target: Callable[[_Row], float]) -> LoaderResult:
    first, second, targets = [], [], []
    for row in _rows(spec.path / f"{spec.split}.jsonl"):
        first.append(row.text("sentence1"))
        second.append(row.text("sentence2"))
        targets.append(target(row))
    if not first:
        raise TaskFormatError(spec.path / f"{spec.split}.jsonl", "no rows")
    return PairData(tuple(first), tuple(second), np.asarray(targets)), {}, len(first)


def _load_sts(spec: TaskSpec) -> LoaderResult:
    return _load_pairs(spec, lambda row: row.number("score"))


def _load_pair_classification(spec: TaskSpec) -> LoaderResult:
    return _load_pairs(spec, lambda row: row.binary("label"))


def _labelled(path: Path) -> tuple[LabelledTexts, list[_Row]]:
    rows = list(_rows(path))
    if not rows:
        raise TaskFormatError(path, "no rows")
    texts = tuple(row.text("text") for row in rows)
    return LabelledTexts(texts, tuple(row.label("label") for row in rows)), rows


def _load_classification(spec: TaskSpec) -> LoaderResult:
    train, _ = _labelled(spec.path / "train.jsonl")
    test, rows = _labelled(spec.path / f"{spec.split}.jsonl")
    known = set(train.labels)
    if len(known) < 2:
        raise TaskFormatError(spec.path / "train.jsonl", f"needs at least 2 labels, found {len(known)}")
    for row, label in zip(rows, test.labels, strict=True):
        if label not in known:
            raise row.fail("label", f"label {label!r} does not occur in train.jsonl")
    return ClassificationData(train, test), {}, len(test)


def _load_clustering(spec: TaskSpec) -> LoaderResult:
    path = spec.path / f"{spec.split}.jsonl"
    data, _ = _labelled(path)
    if len(set(data.labels)) < 2:
        raise TaskFormatError(path, "clustering needs at least 2 labels")
    return data, {}, len(data)


def _load_reranking(spec: TaskSpec) -> LoaderResult:
    queries, positives, negatives = [], [], []
    raw = 0
    for row in _rows(spec.path / f"{spec.split}.jsonl"):
        raw += 1
        query, positive, negative = row.text("query"), row.texts("positive"), row.texts("negative")
        if overlap := set(positive) & set(negative):
            raise row.fail("negative", f"{len(overlap)} text(s) also listed as positive")
        if positive:
            queries.append(query)
            positives.append(positive)
            negatives.append(negative)
    if not queries:
        raise TaskFormatError(spec.path / f"{spec.split}.jsonl", "no query with a positive")
    dropped = {"queries_without_positive": raw - len(queries)}
    return RerankingData(tuple(queries), tuple(positives), tuple(negatives)), dropped, raw


def _id_texts(path: Path, text_of: Callable[[_Row], str]) -> dict[str, str]:
    """``{_id: text}`` from a BEIR JSONL file; ids may be strings or integers, and must be unique."""
    out: dict[str, str] = {}
    for row in _rows(path):
        key = row.label("_id")
        if key in out:
            raise row.fail("_id", f"duplicate id {key!r}")
        out[key] = text_of(row)
    if not out:
        raise TaskFormatError(path, "no rows")
    return out


def _document(row: _Row) -> str:
    text = document_text(row.optional_string("title"), row.optional_string("text"))
    if not text:
        raise row.fail("text", "empty document (no title and no text)")
    return text


def _read_qrels(path: Path, queries: dict[str, str], corpus: dict[str, str]) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise TaskFormatError(path, "file not found")
    try:
        lines = read_utf8(path).splitlines()
    except EncodingError as err:
        raise _not_utf8(err) from None
    if not lines or tuple(lines[0].split("\t")) != QRELS_HEADER:
        raise TaskFormatError(path, f"first line must be the header {chr(9).join(QRELS_HEADER)!r}", line=1)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise TaskFormatError(path, f"expected 3 tab-separated fields, got {len(fields)}", line=number)
        qid, did, score = fields
        if qid not in queries:
            raise TaskFormatError(path, f"unknown query id {qid!r}", line=number, field="query-id")
        if did not in corpus:
            raise TaskFormatError(path, f"unknown corpus id {did!r}", line=number, field="corpus-id")
        try:
            value = int(score)
        except ValueError:
            raise TaskFormatError(path, f"must be an integer, got {score!r}", line=number, field="score") from None
        if did in qrels.setdefault(qid, {}):
            raise TaskFormatError(path, f"duplicate judgement for ({qid!r}, {did!r})", line=number)
        qrels[qid][did] = value
    return qrels


def _load_retrieval(spec: TaskSpec) -> LoaderResult:
    corpus = _id_texts(spec.path / "corpus.jsonl", _document)
    queries = _id_texts(spec.path / "queries.jsonl", lambda row: row.text("text"))
    qrels = _read_qrels(spec.path / "qrels" / f"{spec.split}.tsv", queries, corpus)
    # mteb drops queries without a relevant document (their nDCG is undefined); we do the same and count them.
    kept = [qid for qid in queries if any(score > 0 for score in qrels.get(qid, {}).values())]
    if not kept:
        raise TaskFormatError(
            spec.path / "qrels" / f"{spec.split}.tsv", "no query has a relevant document (every score is 0 or less)"
        )
    data = RetrievalData(
        corpus_ids=tuple(corpus),
        corpus_texts=tuple(corpus.values()),
        query_ids=tuple(kept),
        query_texts=tuple(queries[qid] for qid in kept),
        qrels={qid: qrels[qid] for qid in kept},
    )
    return data, {"queries_without_relevant": len(queries) - len(kept)}, len(queries)


LOADERS: dict[TaskType, Callable[[TaskSpec], LoaderResult]] = {
    TaskType.STS: _load_sts,
    TaskType.PAIR_CLASSIFICATION: _load_pair_classification,
    TaskType.CLASSIFICATION: _load_classification,
    TaskType.CLUSTERING: _load_clustering,
    TaskType.RERANKING: _load_reranking,
    TaskType.RETRIEVAL: _load_retrieval,
}


def load_task(folder: str | Path, spec: TaskSpec | None = None) -> Task:
    """Load and check one task folder."""
    spec = spec or read_spec(Path(folder))
    data, dropped, raw = LOADERS[spec.type](spec)
    if spec.n is not None and spec.n != raw:
        raise TaskFormatError(spec.path / TASK_FILE, f"says n={spec.n} but the data has {raw}", field="n")
    return Task(spec=spec, data=data, dropped={k: v for k, v in dropped.items() if v}, n_total=len(data))


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Task folders under ``paths``: each path is a task folder, or a folder whose subfolders are tasks."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise FileNotFoundError(f"no such task folder: {path}")
        if (path / TASK_FILE).is_file():
            found.append(path)
            continue
        children = sorted(child for child in path.iterdir() if (child / TASK_FILE).is_file())
        if not children:
            raise FileNotFoundError(f"{path} has no {TASK_FILE}, and neither has any of its subfolders")
        found.extend(children)
    return found


def select_specs(
    specs: list[TaskSpec], *, only: Iterable[str] | None = None, types: Iterable[str] | None = None
) -> list[TaskSpec]:
    """Keep the specs named in ``only`` (case-insensitive) and of the given ``types``; unknown names are errors."""
    if types is not None:
        wanted_types = {TaskType.parse(t) for t in types}
        specs = [s for s in specs if s.type in wanted_types]
    if only is not None:
        by_name = {s.name.lower(): s for s in specs}
        missing = [name for name in only if name.lower() not in by_name]
        if missing:
            available = ", ".join(s.name for s in specs) or "none"
            raise ValueError(f"unknown task(s) {', '.join(missing)}; available: {available}")
        specs = [by_name[name.lower()] for name in dict.fromkeys(only)]
    return specs


def load_tasks(
    paths: Iterable[str | Path], *, only: Iterable[str] | None = None, types: Iterable[str] | None = None
) -> list[Task]:
    """Discover, filter and load tasks; every file is checked before any model time is spent."""
    specs = [read_spec(folder) for folder in discover(paths)]
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"task name {spec.name!r} appears twice: {seen[spec.name]} and {spec.path}")
        seen[spec.name] = spec.path
    return [load_task(spec.path, spec) for spec in select_specs(specs, only=only, types=types)]
