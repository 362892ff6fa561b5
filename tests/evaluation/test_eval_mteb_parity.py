"""Our evaluators agree with mteb's on the same embeddings, and the mteb bridge works with injected data.

Each test builds a small synthetic task, scores it with our evaluator, injects the same data into the real mteb
task class of that C-MTEB type (no download: ``data_loaded`` is set), runs it through
:func:`evaluate_mteb_tasks` (our adapter + ``mteb.evaluate``), and compares every shared metric within 1e-4.
The fake encoder depends on the role, so a wrong prompt-type mapping would show up as a score mismatch.
"""

from __future__ import annotations

import json
import socket
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")
from datasets import Dataset  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from piccolo_embed.evaluation import EVALUATORS, EvalOptions, Task, TaskSpec, TaskType, load_task  # noqa: E402
from piccolo_embed.evaluation.mteb_bridge import (  # noqa: E402
    HubUnreachableError,
    MtebEncoder,
    evaluate_mteb_tasks,
    role_for,
)
from piccolo_embed.evaluation.tasks import ClassificationData, LabelledTexts, PairData, RerankingData  # noqa: E402
from piccolo_embed.types import Role, TaskKind  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The task .* is superseded:UserWarning")

DIM = 48
ALPHABET = [chr(0x4E00 + i) for i in range(400)]


class CharBagEncoder:
    """Bag of hashed characters, a role-specific bump and a little text-seeded noise, unit-normalised.

    The noise keeps different texts from tying exactly (tie order is float-precision noise, not a metric);
    identical texts still get identical vectors. Records the roles it sees.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[Role, int]] = []

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        role = Role.coerce(role)
        self.seen.append((role, len(texts)))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text:
                out[row, zlib.crc32(ch.encode()) % DIM] += 1.0
            out[row, list(Role).index(role)] += 1.5
            out[row] += 0.05 * np.random.default_rng(zlib.crc32(text.encode())).normal(size=DIM)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection (e.g. to the hub) fails the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


def spec(name: str, kind: TaskType, main: str, *, s2p: bool = False) -> TaskSpec:
    task_kind = TaskKind.S2P if s2p else TaskKind.S2S
    return TaskSpec(name=name, type=kind, split="test", main_score=main, kind=task_kind, path=Path(name))


def rand_text(rng: np.random.Generator, pool: Sequence[str], length: int) -> str:
    return "".join(rng.choice(pool, size=length))


def mutate(rng: np.random.Generator, text: str, changes: int) -> str:
    chars = list(text)
    for i in rng.choice(len(chars), size=changes, replace=False):
        chars[i] = rng.choice(ALPHABET)
    return "".join(chars)


def pairs(n: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    rng = np.random.default_rng(seed)
    first, second, changes = [], [], []
    for _ in range(n):
        text = rand_text(rng, ALPHABET, 10)
        k = int(rng.integers(0, 11))
        first.append(text)
        second.append(mutate(rng, text, k))
        changes.append(k)
    return first, second, changes


def labelled(n_per: int, n_labels: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    pools = [ALPHABET[30 * i : 30 * i + 30] for i in range(n_labels)]
    texts, labels = [], []
    for i in range(n_per * n_labels):
        label = i % n_labels
        texts.append(rand_text(rng, pools[label], 8) + rand_text(rng, ALPHABET, 2))
        labels.append(f"类{label}")
    return texts, labels


def run_mteb(name: str, dataset: object, encoder: CharBagEncoder) -> dict[str, float]:
    task = mteb.get_task(name)
    task.dataset = dataset
    task.data_loaded = True
    with threadpool_limits(limits=1):  # mteb's probe and k-means crawl when threads oversubscribe small CPUs
        return dict(evaluate_mteb_tasks(encoder, [task]).tasks[0].metrics)


def assert_agree(ours: dict[str, float], theirs: dict[str, float], must: set[str]) -> None:
    shared = set(ours) & set(theirs)
    assert must <= shared, must - shared
    for key in sorted(shared):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key


def test_sts_matches_mteb() -> None:
    s1, s2, changes = pairs(80, seed=0)
    gold = [10.0 - k for k in changes]
    task = Task(spec("LCQMC", TaskType.STS, "cosine_spearman"), PairData(tuple(s1), tuple(s2), np.asarray(gold)))
    ours = EVALUATORS[TaskType.STS](task, CharBagEncoder(), EvalOptions())
    theirs = run_mteb(
        "LCQMC", {"test": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": gold})}, CharBagEncoder()
    )
    assert_agree(ours, theirs, {"cosine_spearman", "cosine_pearson"})
    assert ours["cosine_spearman"] > 0.5


def test_pair_classification_matches_mteb_including_ties() -> None:
    s1, s2, changes = pairs(70, seed=1)
    s1, s2 = s1 + s1[:10], s2 + s2[:10]  # repeated pairs: tied scores, half with flipped labels
    labels = [int(k < 5) for k in changes] + [int(k >= 5) for k in changes[:10]]
    task = Task(
        spec("Ocnli", TaskType.PAIR_CLASSIFICATION, "cosine_ap"), PairData(tuple(s1), tuple(s2), np.asarray(labels))
    )
    ours = EVALUATORS[TaskType.PAIR_CLASSIFICATION](task, CharBagEncoder(), EvalOptions())
    dataset = {"validation": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "labels": labels})}
    theirs = run_mteb("Ocnli", dataset, CharBagEncoder())
    assert_agree(ours, theirs, {"cosine_ap", "cosine_accuracy", "cosine_f1", "max_accuracy", "max_f1", "manhattan_ap"})


def test_classification_matches_mteb() -> None:
    train_texts, train_labels = labelled(40, 4, seed=2)
    test_texts, test_labels = labelled(12, 4, seed=3)
    data = ClassificationData(
        LabelledTexts(tuple(train_texts), tuple(train_labels)), LabelledTexts(tuple(test_texts), tuple(test_labels))
    )
    ours = EVALUATORS[TaskType.CLASSIFICATION](
        Task(spec("TNews", TaskType.CLASSIFICATION, "accuracy"), data), CharBagEncoder(), EvalOptions()
    )
    dataset = {
        "train": Dataset.from_dict({"text": train_texts, "label": train_labels}),
        "validation": Dataset.from_dict({"text": test_texts, "label": test_labels}),
    }
    theirs = run_mteb("TNews", dataset, CharBagEncoder())  # samples_per_label=32, n_experiments=10, as ours
    assert_agree(ours, theirs, {"accuracy", "f1", "f1_weighted", "precision", "recall"})
    assert 0.4 < ours["accuracy"] < 1.0


def test_clustering_matches_mteb_legacy_protocol() -> None:
    texts, labels = labelled(30, 5, seed=4)
    task = Task(spec("CLSClusteringS2S", TaskType.CLUSTERING, "v_measure"), LabelledTexts(tuple(texts), tuple(labels)))
    ours = EVALUATORS[TaskType.CLUSTERING](task, CharBagEncoder(), EvalOptions(clustering_runs=1))
    theirs = run_mteb(
        "CLSClusteringS2S", {"test": Dataset.from_dict({"sentences": [texts], "labels": [labels]})}, CharBagEncoder()
    )
    assert_agree(ours, theirs, {"v_measure"})
    assert ours["v_measure"] > 0.15


def test_reranking_matches_mteb() -> None:
    rng = np.random.default_rng(5)
    queries, positives, negatives = [], [], []
    for i in range(20):
        query = rand_text(rng, ALPHABET, 10)
        queries.append(query)
        positives.append(tuple(mutate(rng, query, int(rng.integers(3, 9))) for _ in range(1 + i % 2)))
        negatives.append(tuple(rand_text(rng, ALPHABET, 12) for _ in range(6)))
    data = RerankingData(tuple(queries), tuple(positives), tuple(negatives))
    ours = EVALUATORS[TaskType.RERANKING](
        Task(spec("T2Reranking", TaskType.RERANKING, "map", s2p=True), data), CharBagEncoder(), EvalOptions()
    )
    corpus = {text: f"doc{n}" for n, text in enumerate(dict.fromkeys(t for g in positives + negatives for t in g))}
    split = {
        "corpus": Dataset.from_dict({"id": list(corpus.values()), "title": [""] * len(corpus), "text": list(corpus)}),
        "queries": Dataset.from_dict({"id": [f"q{i}" for i in range(20)], "text": queries}),
        "relevant_docs": {f"q{i}": {corpus[t]: 1 for t in positives[i]} for i in range(20)},
        "top_ranked": {f"q{i}": [corpus[t] for t in positives[i] + negatives[i]] for i in range(20)},
    }
    theirs = run_mteb("T2Reranking", {"default": {"dev": split}}, CharBagEncoder())
    assert_agree(ours, theirs, {"map_at_1000", "mrr_at_10", "ndcg_at_10", "recall_at_3"})
    assert ours["map"] == ours["map_at_1000"]


def write_retrieval_folder(root: Path, seed: int) -> tuple[Path, list[dict], list[dict], dict[str, dict[str, int]]]:
    rng = np.random.default_rng(seed)
    corpus = [
        {"_id": f"d{i}", "title": rand_text(rng, ALPHABET, 3) if i % 3 else "", "text": rand_text(rng, ALPHABET, 15)}
        for i in range(60)
    ]
    queries, qrels = [], {}
    for i in range(25):
        targets = [int(t) for t in rng.choice(60, size=1 + i % 2, replace=False)]
        queries.append({"_id": f"q{i}", "text": mutate(rng, corpus[targets[0]]["text"][:8], 3)})
        qrels[f"q{i}"] = {f"d{t}": 1 + (j == 0) for j, t in enumerate(targets)}
    folder = root / "T2Retrieval"
    (folder / "qrels").mkdir(parents=True)
    meta = {"name": "T2Retrieval", "type": "Retrieval", "split": "test", "main_score": "ndcg_at_10", "s2p": True}
    (folder / "task.json").write_text(json.dumps(meta), encoding="utf-8")
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lines = [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n", encoding="utf-8"
    )
    return folder, corpus, queries, qrels


def test_retrieval_matches_mteb_including_title_convention(tmp_path: Path) -> None:
    folder, corpus, queries, qrels = write_retrieval_folder(tmp_path, seed=6)
    options = EvalOptions(corpus_chunk_size=16, query_block_size=7)  # several chunks and blocks
    ours = EVALUATORS[TaskType.RETRIEVAL](load_task(folder), CharBagEncoder(), options)
    split = {
        "corpus": Dataset.from_dict(
            {key: [row[key.replace("id", "_id")] for row in corpus] for key in ("id", "title", "text")}
        ),
        "queries": Dataset.from_dict({"id": [q["_id"] for q in queries], "text": [q["text"] for q in queries]}),
        "relevant_docs": qrels,
        "top_ranked": None,
    }
    encoder = CharBagEncoder()
    theirs = run_mteb("T2Retrieval", {"default": {"dev": split}}, encoder)
    assert_agree(ours, theirs, {"ndcg_at_10", "mrr_at_10", "recall_at_100", "map_at_1000", "precision_at_1"})
    assert ours["ndcg_at_10"] > 0.2
    assert {role for role, _ in encoder.seen} == {Role.QUERY, Role.PASSAGE}


def test_role_mapping() -> None:
    assert role_for("Retrieval", "query") is Role.QUERY
    assert role_for("Reranking", mteb.types.PromptType.document) is Role.PASSAGE
    assert role_for("STS", "query") is Role.NONE
    assert role_for("Retrieval", None) is Role.NONE


def test_bridge_result_and_roles_on_symmetric_task() -> None:
    s1, s2, changes = pairs(10, seed=7)
    task = mteb.get_task("LCQMC")
    task.dataset = {"test": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": [float(k) for k in changes]})}
    task.data_loaded = True
    encoder = CharBagEncoder()
    results = evaluate_mteb_tasks(encoder, [task], model_name="fake")
    (result,) = results.tasks
    assert (result.name, result.type, result.main_score_name) == ("LCQMC", TaskType.STS, "cosine_spearman")
    assert result.main_score == result.metrics["cosine_spearman"]
    assert {role for role, _ in encoder.seen} == {Role.NONE}
    assert results.to_dict()["tasks"]["LCQMC"]["source"] == "mteb:C-MTEB/LCQMC"
    assert isinstance(MtebEncoder(encoder), mteb.models.EncoderProtocol)


def test_offline_hub_gives_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    task = mteb.get_task("LCQMC")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'C-MTEB/LCQMC' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(task, "load_data", unreachable)
    with pytest.raises(HubUnreachableError) as info:
        evaluate_mteb_tasks(CharBagEncoder(), [task])
    message = str(info.value)
    assert "\n" not in message
    assert "LCQMC" in message and "Couldn't reach" in message and "--tasks" in message
