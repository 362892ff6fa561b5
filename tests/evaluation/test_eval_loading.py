"""Task folders: every type loads into its dataclass; every malformed file names file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from piccolo_embed.evaluation import TaskFormatError, TaskType, discover, load_task, load_tasks
from piccolo_embed.evaluation.loading import document_text
from piccolo_embed.evaluation.tasks import ClassificationData, PairData, RetrievalData

MAIN = {
    "STS": "cosine_spearman",
    "PairClassification": "cosine_ap",
    "Classification": "accuracy",
    "Clustering": "v_measure",
    "Reranking": "map",
    "Retrieval": "ndcg_at_10",
}


def write_task(root: Path, name: str, kind: str, files: dict[str, list | str], **spec: object) -> Path:
    """A task folder: ``task.json`` plus files given as row lists (JSONL) or raw strings."""
    folder = root / name
    folder.mkdir(parents=True)
    meta = {
        "name": name,
        "type": kind,
        "split": "test",
        "main_score": MAIN[kind],
        "s2p": kind in ("Reranking", "Retrieval"),
    }
    (folder / "task.json").write_text(json.dumps({**meta, **spec}), encoding="utf-8")
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (
            content if isinstance(content, str) else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in content)
        )
        path.write_text(text, encoding="utf-8")
    return folder


STS_ROWS = [
    {"sentence1": "今天天气好", "sentence2": "天气很好", "score": 4.5},
    {"sentence1": "我去公园", "sentence2": "他在医院", "score": 0},
    {"sentence1": "北京美食", "sentence2": "上海美食", "score": 2.0},
]
CLS_TRAIN = [{"text": "好吃", "label": "pos"}, {"text": "难吃", "label": "neg"}, {"text": "很好", "label": 1}]
CLS_TEST = [{"text": "不好", "label": "neg"}, {"text": "美味", "label": "pos"}]
CORPUS = [{"_id": "d1", "title": "北京", "text": "中国首都"}, {"_id": 2, "title": "", "text": "上海的美食"}]
QUERIES = [{"_id": "q1", "text": "中国首都是哪里"}, {"_id": "q2", "text": "上海"}, {"_id": "q3", "text": "没有答案"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t2\t1\nq3\td1\t0\n"


def test_each_type_loads(tmp_path: Path) -> None:
    sts = load_task(write_task(tmp_path, "S", "STS", {"test.jsonl": STS_ROWS}, n=3))
    assert isinstance(sts.data, PairData)
    assert sts.data.targets.tolist() == [4.5, 0.0, 2.0]
    assert sts.spec.type is TaskType.STS and sts.n_samples == 3 and not sts.dropped

    cls = load_task(write_task(tmp_path, "C", "Classification", {"train.jsonl": CLS_TRAIN, "test.jsonl": CLS_TEST}))
    assert isinstance(cls.data, ClassificationData)
    assert cls.data.train.labels == ("pos", "neg", "1")  # integer labels become strings
    assert len(cls.data) == 2

    ret = load_task(
        write_task(
            tmp_path, "R", "Retrieval", {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": QRELS}, n=3
        )
    )
    assert isinstance(ret.data, RetrievalData)
    assert ret.data.corpus_texts == ("北京 中国首都", "上海的美食")  # mteb's title + " " + text
    assert ret.data.query_ids == ("q1", "q2")
    assert ret.dropped == {"queries_without_relevant": 1}  # q3 has only a score-0 judgement
    assert ret.spec.roles[0].value == "query"


def test_document_text_follows_mteb() -> None:
    assert document_text("标题", "正文") == "标题 正文"
    assert document_text("", " 正文 ") == "正文"


def test_reranking_drops_and_counts_queries_without_positive(tmp_path: Path) -> None:
    rows = [
        {"query": "头疼怎么办", "positive": ["多休息"], "negative": ["买手机", "去旅游"]},
        {"query": "发烧", "positive": [], "negative": ["吃饭"]},
    ]
    task = load_task(write_task(tmp_path, "M", "Reranking", {"test.jsonl": rows}))
    assert task.n_samples == 1
    assert task.dropped == {"queries_without_positive": 1}


BAD_CASES = {
    "score-not-number": (
        "STS",
        {"test.jsonl": [STS_ROWS[0], {**STS_ROWS[1], "score": "high"}]},
        "test.jsonl:2: field 'score': must be a finite number",
    ),
    "missing-field": (
        "STS",
        {"test.jsonl": [{"sentence1": "好", "score": 1}]},
        "test.jsonl:1: field 'sentence2': missing",
    ),
    "empty-text": (
        "STS",
        {"test.jsonl": [{**STS_ROWS[0], "sentence1": " "}]},
        "test.jsonl:1: field 'sentence1': empty text",
    ),
    "invalid-json": ("STS", {"test.jsonl": json.dumps(STS_ROWS[0]) + "\n{oops\n"}, "test.jsonl:2: invalid JSON"),
    "blank-line": ("STS", {"test.jsonl": json.dumps(STS_ROWS[0]) + "\n\n"}, "test.jsonl:2: blank line"),
    "missing-file": ("STS", {}, "test.jsonl: file not found"),
    "label-not-binary": (
        "PairClassification",
        {"test.jsonl": [{"sentence1": "a", "sentence2": "b", "label": 2}]},
        "test.jsonl:1: field 'label': must be 0 or 1",
    ),
    "unseen-test-label": (
        "Classification",
        {"train.jsonl": CLS_TRAIN, "test.jsonl": [*CLS_TEST, {"text": "一般", "label": "neutral"}]},
        "test.jsonl:3: field 'label': label 'neutral' does not occur in train.jsonl",
    ),
    "positive-not-list": (
        "Reranking",
        {"test.jsonl": [{"query": "q", "positive": "p", "negative": []}]},
        "test.jsonl:1: field 'positive': must be a list of strings",
    ),
    "positive-also-negative": (
        "Reranking",
        {"test.jsonl": [{"query": "q", "positive": ["p"], "negative": ["p"]}]},
        "test.jsonl:1: field 'negative': 1 text(s) also listed as positive",
    ),
    "one-cluster": (
        "Clustering",
        {"test.jsonl": [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]},
        "clustering needs at least 2 labels",
    ),
    "duplicate-corpus-id": (
        "Retrieval",
        {"corpus.jsonl": [*CORPUS, CORPUS[0]], "queries.jsonl": QUERIES, "qrels/test.tsv": QRELS},
        "corpus.jsonl:3: field '_id': duplicate id 'd1'",
    ),
    "qrels-unknown-doc": (
        "Retrieval",
        {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": QRELS + "q1\tnope\t1\n"},
        "test.tsv:5: field 'corpus-id': unknown corpus id 'nope'",
    ),
    "qrels-bad-score": (
        "Retrieval",
        {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": QRELS.replace("q2\t2\t1", "q2\t2\tyes")},
        "test.tsv:3: field 'score': must be an integer",
    ),
    "qrels-no-header": (
        "Retrieval",
        {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": "q1\td1\t1\n"},
        "test.tsv:1: first line must be the header",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_data_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    kind, files, message = BAD_CASES[case]
    folder = write_task(tmp_path, "T", kind, files)
    with pytest.raises(TaskFormatError, match=None) as info:
        load_task(folder)
    assert message in str(info.value)
    assert str(folder) in str(info.value)


def test_task_json_errors(tmp_path: Path) -> None:
    with pytest.raises(
        TaskFormatError, match=r"task.json:1: field 'type': unknown TaskType 'Regression'; choose one of: STS"
    ):
        load_task(write_task(tmp_path, "A", "STS", {"test.jsonl": STS_ROWS}, type="Regression"))
    with pytest.raises(TaskFormatError, match=r"field 'n': says n=5 but the data has 3"):
        load_task(write_task(tmp_path, "B", "STS", {"test.jsonl": STS_ROWS}, n=5))
    with pytest.raises(TaskFormatError, match=r"field 's2p': must be true or false"):
        load_task(write_task(tmp_path, "C", "STS", {"test.jsonl": STS_ROWS}, s2p="yes"))


def test_task_type_parse_is_case_insensitive_and_helpful() -> None:
    assert TaskType.parse("pairclassification") is TaskType.PAIR_CLASSIFICATION
    assert TaskType.parse("STS") is TaskType.STS
    with pytest.raises(ValueError, match="choose one of: STS, PairClassification"):
        TaskType.parse("bitext")


def test_discover_and_filter(tmp_path: Path) -> None:
    write_task(tmp_path, "STSB", "STS", {"test.jsonl": STS_ROWS})
    write_task(
        tmp_path, "Pairs", "PairClassification", {"test.jsonl": [{"sentence1": "a", "sentence2": "b", "label": 1}]}
    )
    (tmp_path / "notes").mkdir()
    assert [p.name for p in discover([tmp_path])] == ["Pairs", "STSB"]
    assert [p.name for p in discover([tmp_path / "STSB"])] == ["STSB"]
    assert [t.name for t in load_tasks([tmp_path], only=["stsb"])] == ["STSB"]
    assert [t.name for t in load_tasks([tmp_path], types=["PairClassification"])] == ["Pairs"]
    with pytest.raises(ValueError, match=r"unknown task.*Nope; available: Pairs, STSB"):
        load_tasks([tmp_path], only=["Nope"])
    with pytest.raises(FileNotFoundError, match=r"no task\.json"):
        discover([tmp_path / "notes"])
    with pytest.raises(ValueError, match="appears twice"):
        load_tasks([tmp_path, tmp_path / "STSB"])


def test_subsample_is_seeded_and_keeps_file_order(tmp_path: Path) -> None:
    rows = [{"sentence1": f"句{i}", "sentence2": f"子{i}", "score": float(i)} for i in range(50)]
    task = load_task(write_task(tmp_path, "S", "STS", {"test.jsonl": rows}))
    small = task.subsample(10, seed=3)
    assert small.n_samples == 10 and small.n_total == 50
    assert list(small.data.targets) == sorted(small.data.targets)
    assert list(task.subsample(10, seed=3).data.targets) == list(small.data.targets)
    assert list(task.subsample(10, seed=4).data.targets) != list(small.data.targets)
    assert task.subsample(None, seed=3) is task and task.subsample(500, seed=3) is task


def test_retrieval_subsample_caps_corpus_but_keeps_judged_documents(tmp_path: Path) -> None:
    corpus = [{"_id": f"d{i}", "text": f"文档{i}"} for i in range(20)]
    queries = [{"_id": f"q{i}", "text": f"问题{i}"} for i in range(10)]
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{2 * i}\t1\n" for i in range(10))
    files = {"corpus.jsonl": corpus, "queries.jsonl": queries, "qrels/test.tsv": qrels}
    task = load_task(write_task(tmp_path, "R", "Retrieval", files)).subsample(4, seed=0)
    assert isinstance(task.data, RetrievalData)
    assert len(task.data.query_ids) == 4 and set(task.data.qrels) == set(task.data.query_ids)
    judged = {doc for docs in task.data.qrels.values() for doc in docs}
    assert judged <= set(task.data.corpus_ids) and len(task.data.corpus_ids) == 4
    assert task.dropped == {"corpus_subsampled": 16}
    whole = load_task(tmp_path / "R").subsample(10, seed=0)
    assert len(whole.data.corpus_ids) == 20 and not whole.dropped


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "cmteb-mini"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared cmteb-mini data not present")
def test_shared_cmteb_mini_folders_load() -> None:
    tasks = load_tasks([SHARED])
    assert len(tasks) == 12
    assert {t.spec.type for t in tasks} == set(TaskType)
    for task in tasks:
        assert task.n_total == task.spec.n, task.name
