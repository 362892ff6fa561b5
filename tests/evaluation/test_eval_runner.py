"""evaluate(): averages, JSON, table, roles, caching, subsampling; the ``eval`` CLI end to end on a tiny BERT."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.cli import build_parser
from piccolo_embed.evaluation import EvalOptions, Results, TaskResult, TaskType, evaluate, format_table, load_tasks
from piccolo_embed.types import Role

DIM = 32
OPTIONS = EvalOptions(n_experiments=2, clustering_runs=2, samples_per_label=4)


class RecordingEncoder:
    """Hashed character bag per text (unit norm), remembering which texts each role was asked for."""

    def __init__(self) -> None:
        self.requests: list[tuple[Role, list[str]]] = []

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        self.requests.append((Role.coerce(role), list(texts)))
        out = np.full((len(texts), DIM), 0.01, dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text:
                out[row, zlib.crc32(ch.encode()) % DIM] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def texts_for(self, role: Role) -> list[str]:
        return [t for r, texts in self.requests if r is role for t in texts]


def dump(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write(folder: Path, kind: str, main: str, files: dict[str, str], *, s2p: bool = False) -> None:
    (folder / "qrels").mkdir(parents=True)
    spec = {"name": folder.name, "type": kind, "split": "test", "main_score": main, "s2p": s2p}
    (folder / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """One small task of each type; texts are built from the tiny BERT's vocabulary."""
    words = [
        "今天天气很好",
        "明天会下雨吗",
        "北京的美食推荐",
        "上海城市旅游",
        "医院看病感冒",
        "手机电脑价格",
        "外卖送餐速度慢",
        "服务态度差",
    ]
    pairs = [
        {"sentence1": a, "sentence2": b, "score": float(i % 5)}
        for i, (a, b) in enumerate(zip(words, words[1:] + words[:1], strict=True))
    ]
    write(tmp_path / "STSB", "STS", "cosine_spearman", {"test.jsonl": dump(pairs)})
    labelled = [
        {"sentence1": a, "sentence2": b, "label": i % 2}
        for i, (a, b) in enumerate(zip(words, words[::-1], strict=True))
    ]
    write(tmp_path / "OCNLI", "PairClassification", "cosine_ap", {"test.jsonl": dump(labelled)})
    texts = [{"text": w + s, "label": "甲乙"[i % 2]} for i, w in enumerate(words) for s in ("", "！")]
    write(
        tmp_path / "TNews",
        "Classification",
        "accuracy",
        {"train.jsonl": dump(texts[:10]), "test.jsonl": dump(texts[10:])},
    )
    write(tmp_path / "CLS", "Clustering", "v_measure", {"test.jsonl": dump(texts)})
    rerank = [{"query": w, "positive": [w + "。"], "negative": [x for x in words if x != w][:3]} for w in words[:4]]
    write(tmp_path / "MedQA", "Reranking", "map", {"test.jsonl": dump(rerank)}, s2p=True)
    corpus = [{"_id": f"d{i}", "title": "标题" if i % 2 else "", "text": w} for i, w in enumerate(words)]
    queries = [{"_id": f"q{i}", "text": w[:3]} for i, w in enumerate(words)]
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(words)))
    files = {"corpus.jsonl": dump(corpus), "queries.jsonl": dump(queries), "qrels/test.tsv": qrels}
    write(tmp_path / "CMRC", "Retrieval", "ndcg_at_10", files, s2p=True)
    return tmp_path


def test_evaluate_scores_every_type_and_averages_over_tasks(suite: Path) -> None:
    results = evaluate(RecordingEncoder(), [suite], options=OPTIONS, model_name="fake")
    assert len(results.tasks) == 6
    assert {t.type for t in results.tasks} == set(TaskType)
    mains = [t.main_score for t in results.tasks]
    assert results.average == pytest.approx(np.mean(mains))  # mean over tasks, not over types
    assert results.by_type()[TaskType.RETRIEVAL] == next(t.main_score for t in results.tasks if t.name == "CMRC")
    for task in results.tasks:
        assert task.main_score == task.metrics[task.main_score_name]
        assert -1.0 <= task.main_score <= 1.0 and task.seconds >= 0
    reranking = next(t for t in results.tasks if t.type is TaskType.RERANKING)
    assert reranking.main_score == 1.0  # each positive is its query plus a full stop


def test_roles_follow_s2p(suite: Path) -> None:
    encoder = RecordingEncoder()
    evaluate(encoder, load_tasks([suite], only=["CMRC", "STSB"]), options=OPTIONS, cache=False)
    assert "今天天" in encoder.texts_for(Role.QUERY)
    assert "标题 明天会下雨吗" in encoder.texts_for(Role.PASSAGE)  # mteb's title + " " + text
    assert "今天天气很好" in encoder.texts_for(Role.NONE)  # STS: no instruction


def test_cache_encodes_each_text_once_per_role(suite: Path) -> None:
    encoder = RecordingEncoder()
    tasks = load_tasks([suite], only=["TNews", "CLS"])  # same texts in both tasks
    evaluate(encoder, tasks, options=OPTIONS)
    seen = encoder.texts_for(Role.NONE)
    assert len(seen) == len(set(seen)) == 16
    uncached = RecordingEncoder()
    evaluate(uncached, tasks, options=OPTIONS, cache=False)
    assert len(uncached.texts_for(Role.NONE)) > 16


def test_max_per_task_is_seeded(suite: Path) -> None:
    first = evaluate(RecordingEncoder(), [suite / "STSB"], max_per_task=5, options=OPTIONS)
    again = evaluate(RecordingEncoder(), [suite / "STSB"], max_per_task=5, options=OPTIONS)
    assert first.tasks[0].n_samples == 5 and first.tasks[0].n_total == 8
    assert first.tasks[0].main_score == again.tasks[0].main_score
    assert first.settings["max_per_task"] == 5


def test_unknown_main_score_lists_the_computed_ones(suite: Path) -> None:
    spec = json.loads((suite / "STSB" / "task.json").read_text())
    (suite / "STSB" / "task.json").write_text(json.dumps({**spec, "main_score": "ndcg_at_10"}))
    with pytest.raises(
        ValueError, match=r"main_score 'ndcg_at_10' is not computed for STS; choose one of: cosine_pearson"
    ):
        evaluate(RecordingEncoder(), [suite / "STSB"])


def result(name: str, kind: TaskType, score: float) -> TaskResult:
    return TaskResult(name, kind, "m", score, {"m": score}, 10, 10, 1.5)


def test_results_json_and_table() -> None:
    results = Results(
        [result("A", TaskType.STS, 0.5), result("B", TaskType.STS, 0.7), result("C", TaskType.RETRIEVAL, 0.9)],
        model="fake",
    )
    data = results.to_dict()
    assert data["average"] == pytest.approx(0.7)  # (0.5 + 0.7 + 0.9) / 3, not the mean of type means (0.75)
    assert data["by_type"] == {
        "STS": {"average": pytest.approx(0.6), "n_tasks": 2},
        "Retrieval": {"average": 0.9, "n_tasks": 1},
    }
    assert data["tasks"]["C"]["type"] == "Retrieval" and data["tasks"]["C"]["n_samples"] == 10
    table = format_table(results)
    assert "| A | STS | m | 10 | 50.00 | 1.5 |" in table
    assert "| **STS** (2 tasks) | | mean | | 60.00 | |" in table
    assert table.splitlines()[-1] == "| **Average** (3 tasks) | | mean | | 70.00 | 4.5 |"


def test_eval_cli_end_to_end(suite: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = build_parser(("piccolo_embed.cli.eval",))
    out = tmp_path / "out" / "results.json"
    args = parser.parse_args(
        ["eval", "--model", str(tiny_bert_dir), "--tasks", str(suite), "--only", "STSB,CMRC", "--output", str(out)]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| STSB | STS | cosine_spearman | 8 |" in printed and "**Average** (2 tasks)" in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert set(saved["tasks"]) == {"STSB", "CMRC"}
    assert saved["settings"]["seed"] == 42 and saved["model"] == str(tiny_bert_dir)


def test_eval_cli_rejects_bad_combinations(suite: Path) -> None:
    parser = build_parser(("piccolo_embed.cli.eval",))
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--model", "m", "--tasks", str(suite), "--benchmark", "cmteb"])
    args = parser.parse_args(["eval", "--model", "m", "--benchmark", "cmteb", "--max-per-task", "5"])
    with pytest.raises(ValueError, match="apply to --tasks only"):
        args.func(args)
    args = parser.parse_args(["eval", "--model", "m", "--tasks", str(suite), "--types", "Bitext"])
    with pytest.raises(ValueError, match="unknown TaskType 'Bitext'"):
        args.func(args)


def test_eval_cli_offline_benchmark_is_one_line(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mteb.abstasks.abstask import AbsTask

    import piccolo_embed.cli as cli

    def unreachable(self: AbsTask, *args: object, **kwargs: object) -> None:
        raise ConnectionError(f"Couldn't reach '{self.metadata.dataset['path']}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(AbsTask, "load_data", unreachable)
    original = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: original(("piccolo_embed.cli.eval",)))
    code = cli.main(["eval", "--model", str(tiny_bert_dir), "--benchmark", "cmteb", "--only", "LCQMC"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("piccolo-embed eval: error: cannot load C-MTEB task LCQMC (C-MTEB/LCQMC)")


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "cmteb-mini"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared cmteb-mini data not present")
def test_shared_cmteb_mini_runs_quickly_with_a_fake_encoder() -> None:
    results = evaluate(RecordingEncoder(), [SHARED], max_per_task=30, options=OPTIONS)
    assert len(results.tasks) == 12
    assert all(t.n_samples == 30 for t in results.tasks)
    assert all(np.isfinite(t.main_score) for t in results.tasks)
