"""scripts/build_long_doc_task.py on a tiny synthetic Retrieval task: format, spans, qrels, seeding, refusals."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piccolo_embed.evaluation.loading import document_text, load_task
from piccolo_embed.types import TaskKind

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_long_doc_task.py"
PARAGRAPHS = 23


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_long_doc_task", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


build = _load_script()


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Paragraph-level task: P0..P22 with titles; Q_i asks about P_i for even i; Q_multi about P1 and P20."""
    folder = tmp_path / "src"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"P{i}", "title": f"标题{i}" if i % 3 else "", "text": f"第{i}段。" * (i + 1)} for i in range(23)]
    _jsonl(folder / "corpus.jsonl", corpus)
    qrels = [(f"Q{i}", f"P{i}", 1) for i in range(0, PARAGRAPHS, 2)] + [("Qmulti", "P1", 1), ("Qmulti", "P20", 2)]
    queries = [*sorted({q for q, _, _ in qrels}), "Qnone"]  # Qnone has no judgement: the loader drops it
    _jsonl(folder / "queries.jsonl", [{"_id": q, "text": f"问题{q}"} for q in queries])
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = {"name": "Tiny", "type": "Retrieval", "split": "test", "main_score": "ndcg_at_10", "s2p": True}
    (folder / "task.json").write_text(json.dumps({**task, "license": "CC0", "n": len(queries)}), encoding="utf-8")
    return folder


def _run(source: Path, output: Path, *extra: str) -> None:
    argv = [str(output), "--source", str(source), "--min-paragraphs", "2", "--max-paragraphs", "4", *extra]
    assert build.main(argv) == 0


def test_builds_a_loadable_task_whose_sections_hold_the_paragraphs(source: Path, tmp_path: Path) -> None:
    _run(source, tmp_path / "out", "--seed", "3")
    task = load_task(tmp_path / "out")
    assert task.spec.name == "CMRC2018LongDoc" and task.spec.kind is TaskKind.S2P
    documents = dict(zip(task.data.corpus_ids, task.data.corpus_texts, strict=True))
    paragraphs = [json.loads(line) for line in (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    sections = [json.loads(line) for line in (tmp_path / "out" / "sections.jsonl").read_text().splitlines()]
    assert [s["paragraph_id"] for s in sections] == [p["_id"] for p in paragraphs]  # each once, in order
    for section, paragraph in zip(sections, paragraphs, strict=True):
        text = documents[section["doc_id"]][section["start"] : section["end"]]
        assert text == document_text(paragraph["title"], paragraph["text"])
    per_doc = [sum(s["doc_id"] == doc for s in sections) for doc in documents]
    assert all(2 <= size <= 5 for size in per_doc) and sum(per_doc) == PARAGRAPHS
    home = {s["paragraph_id"]: s["doc_id"] for s in sections}
    assert task.data.qrels["Q4"] == {home["P4"]: 1}
    assert task.data.qrels["Qmulti"] == {home["P1"]: 1, home["P20"]: 2}
    assert "Qnone" not in task.data.query_ids and len(task.data.query_ids) == task.spec.n == 13


def test_seeded(source: Path, tmp_path: Path) -> None:
    def files(folder: Path) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in folder.rglob("*") if p.is_file()}

    _run(source, tmp_path / "a", "--seed", "7")
    _run(source, tmp_path / "b", "--seed", "7")
    assert files(tmp_path / "a") == files(tmp_path / "b")
    groupings = set()
    for seed in range(5):
        _run(source, tmp_path / f"s{seed}", "--seed", str(seed))
        groupings.add((tmp_path / f"s{seed}" / "sections.jsonl").read_text())
    assert len(groupings) > 1
    _run(source, tmp_path / "few", "--max-queries", "5")
    assert len(load_task(tmp_path / "few").data.query_ids) == 5


def test_refuses_the_repository_and_existing_folders(source: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build.main([str(SCRIPT.parents[1] / "long-doc-task"), "--source", str(source)])
    (tmp_path / "exists").mkdir()
    with pytest.raises(SystemExit):
        build.main([str(tmp_path / "exists"), "--source", str(source)])
    assert not (SCRIPT.parents[1] / "long-doc-task").exists()


@given(total=st.integers(1, 200), low=st.integers(1, 10), extra=st.integers(0, 10), seed=st.integers(0, 9))
def test_group_sizes_add_up_and_stay_in_range(total: int, low: int, extra: int, seed: int) -> None:
    high = low + extra
    sizes = build.group_sizes(total, low, high, random.Random(seed))
    assert sum(sizes) == total
    if total >= low:
        assert all(low <= size <= high for size in sizes[:-1])
        assert low <= sizes[-1] <= high + low - 1  # a short tail joins the last group


def test_max_documents_keeps_the_first_documents_and_their_whole_queries(source: Path, tmp_path: Path) -> None:
    _run(source, tmp_path / "all", "--seed", "3")
    _run(source, tmp_path / "few", "--seed", "3", "--max-documents", "3")
    every, few = load_task(tmp_path / "all").data, load_task(tmp_path / "few").data
    assert few.corpus_ids == every.corpus_ids[:3] and few.corpus_texts == every.corpus_texts[:3]
    sections = [json.loads(line) for line in (tmp_path / "few" / "sections.jsonl").read_text().splitlines()]
    assert {s["doc_id"] for s in sections} == set(few.corpus_ids)
    kept = {q for q in every.query_ids if set(every.qrels[q]) <= set(few.corpus_ids)}
    assert set(few.query_ids) == kept and 0 < len(kept) < len(every.query_ids)
    assert "Qmulti" not in kept  # P20 sits in a later document
    assert all(few.qrels[q] == every.qrels[q] for q in kept)
