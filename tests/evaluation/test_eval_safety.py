"""Evaluation never writes NaN, and bad input fails with file and line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from test_eval_loading import CORPUS, QUERIES, write_task

from piccolo_embed.evaluation import TaskFormatError, TaskType, load_task
from piccolo_embed.evaluation.runner import Results, TaskResult, evaluate
from piccolo_embed.textfiles import EncodingError, read_utf8


class ConstantEncoder:
    def encode(self, texts, *, role=None) -> np.ndarray:
        out = np.zeros((len(texts), 4), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def test_constant_sts_gold_scores_are_written_as_null_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"sentence1": "今天", "sentence2": "明天", "score": 3.0},
        {"sentence1": "北京", "sentence2": "上海", "score": 3.0},
    ]
    task = load_task(write_task(tmp_path, "S", "STS", {"test.jsonl": rows}))
    with caplog.at_level(logging.WARNING):
        results = evaluate(ConstantEncoder(), [task])
        path = results.save(tmp_path / "results.json")
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["tasks"]["S"]["main_score"] is None and data["average"] is None
    assert "constant" in caplog.text and "written as null" in caplog.text


def test_results_save_is_strict_json(tmp_path: Path) -> None:
    results = Results([TaskResult("A", TaskType.STS, "m", float("nan"), {"m": float("inf")}, 1, 1, 0.1)])
    data = json.loads(results.save(tmp_path / "r.json").read_text())
    assert data["tasks"]["A"]["metrics"] == {"m": None}


def test_retrieval_with_only_zero_judgements_is_a_clear_error(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\t2\t0\n"
    folder = write_task(
        tmp_path, "R", "Retrieval", {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": qrels}
    )
    with pytest.raises(TaskFormatError, match=r"qrels/test\.tsv: no query has a relevant document"):
        load_task(folder)


def _bad_utf8_at_line(path: Path, line: int) -> None:
    """Make line ``line`` of ``path`` invalid UTF-8, after enough text that a block decoder reads ahead."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b'"', b'"\xff', 1)
    path.write_bytes(b"".join(lines))


def test_non_utf8_task_files_name_the_right_line(tmp_path: Path) -> None:
    rows = [{"sentence1": "今天" * 50, "sentence2": "明天", "score": float(i)} for i in range(200)]
    folder = write_task(tmp_path, "S", "STS", {"test.jsonl": rows})
    _bad_utf8_at_line(folder / "test.jsonl", 150)
    with pytest.raises(TaskFormatError, match=r"test\.jsonl:150: not valid UTF-8"):
        load_task(folder)


def test_non_utf8_qrels_and_task_json_name_file_and_line(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t2\t1\n"
    folder = write_task(
        tmp_path, "R", "Retrieval", {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": qrels}
    )
    path = folder / "qrels" / "test.tsv"
    path.write_bytes(path.read_bytes().replace(b"q2\t2", b"q2\t\xfe2"))
    with pytest.raises(TaskFormatError, match=r"test\.tsv:3: not valid UTF-8"):
        load_task(folder)
    spec = folder / "task.json"
    spec.write_bytes(spec.read_bytes().replace(b'"R"', b'"R\xc3"'))
    with pytest.raises(TaskFormatError, match=r"task\.json:1: not valid UTF-8"):
        load_task(folder)


def test_read_utf8_locates_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"ok\nab\xffc\n")
    with pytest.raises(EncodingError, match=r"x\.txt:2: not valid UTF-8 at byte 3"):
        read_utf8(path)
