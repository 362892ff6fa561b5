"""The collator: per-role instructions and lengths, seeded positive/negative choice, scored labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from piccolo_embed.data.collator import RoleAwareCollator
from piccolo_embed.data.records import RecordKind
from piccolo_embed.data.sampler import encode_key
from piccolo_embed.data.sources import RawBatch, SourceSpec
from piccolo_embed.types import Role, RoleSpec, TaskKind

ROLES = {
    Role.QUERY: RoleSpec("查询: ", 8),
    Role.PASSAGE: RoleSpec("结果: ", 20),
    Role.NONE: RoleSpec("", 12),
}
LONG = "今天天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程"


@pytest.fixture
def tokenizer(tiny_bert_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


def _triplets(kind: TaskKind, rows: int = 3, negs: int = 3) -> RawBatch:
    spec = SourceSpec("demo", Path("demo.jsonl"), kind, RecordKind.TRIPLET)
    data = {
        "query": [LONG] * rows,
        "pos": [[f"{LONG}{i}", f"北京{i}", f"上海{i}"] for i in range(rows)],
        "neg": [[f"医院{i}{j}" for j in range(negs)] for i in range(rows)],
    }
    return RawBatch(spec, data, tuple(range(rows)))


def _decoded(tokenizer, column: dict[str, torch.Tensor]) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") for ids in column["input_ids"]]


def test_s2p_columns_get_role_instructions_and_lengths(tokenizer) -> None:
    batch = RoleAwareCollator(tokenizer, ROLES, num_negatives=2)(_triplets(TaskKind.S2P))
    assert len(batch.features) == 4  # query, positive, two negatives
    query, positive = batch.features[:2]
    assert query["input_ids"].shape[1] == 8 and positive["input_ids"].shape[1] <= 20
    assert all(text.startswith("查询:") for text in _decoded(tokenizer, query))
    assert all(text.startswith("结果:") for text in _decoded(tokenizer, positive))
    assert batch.records is RecordKind.TRIPLET and batch.labels.tolist() == [0, 0, 0]
    assert batch.num_tokens == sum(int(c["attention_mask"].sum()) for c in batch.features)


def test_s2s_columns_get_no_instruction(tokenizer) -> None:
    batch = RoleAwareCollator(tokenizer, ROLES)(_triplets(TaskKind.S2S))
    assert len(batch.features) == 2
    assert batch.features[0]["input_ids"].shape[1] == 12
    assert not any(text.startswith("查询") for text in _decoded(tokenizer, batch.features[0]))


def test_choice_of_positive_and_negatives_is_seeded_by_key(tokenizer) -> None:
    collate = RoleAwareCollator(tokenizer, ROLES, num_negatives=2, seed=3)
    raw = _triplets(TaskKind.S2P, rows=6)
    first, again = collate(raw), collate(raw)
    for a, b in zip(first.features, again.features, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
    redrawn = RawBatch(raw.source, raw.rows, tuple(encode_key(1, k, 100) for k in raw.keys))
    assert any(
        not torch.equal(a["input_ids"], b["input_ids"])
        for a, b in zip(first.features[1:], collate(redrawn).features[1:], strict=True)
    )
    for row in range(6):  # negatives of one record are distinct when it has enough
        negs = [c["input_ids"][row].tolist() for c in first.features[2:]]
        assert negs[0] != negs[1]


def test_records_with_fewer_negatives_are_filled_by_repetition(tokenizer) -> None:
    batch = RoleAwareCollator(tokenizer, ROLES, num_negatives=3)(_triplets(TaskKind.S2S, negs=1))
    assert len(batch.features) == 5
    assert torch.equal(batch.features[2]["input_ids"], batch.features[4]["input_ids"])


def test_missing_negatives_fail_clearly(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"has no 'neg' but 1 negatives per record are asked for"):
        RoleAwareCollator(tokenizer, ROLES, num_negatives=1)(_triplets(TaskKind.S2S, negs=0))


def test_scored_pairs_carry_float_labels(tokenizer) -> None:
    spec = SourceSpec("sts", Path("sts.jsonl"), TaskKind.S2S, RecordKind.SCORED)
    raw = RawBatch(spec, {"sentence1": ["今天", "北京"], "sentence2": ["明天", "上海"], "score": [4.5, 1.0]}, (0, 1))
    batch = RoleAwareCollator(tokenizer, ROLES, num_negatives=2)(raw)
    assert batch.records is RecordKind.SCORED and len(batch.features) == 2
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [4.5, 1.0]


def test_a_dataset_can_set_its_own_number_of_negatives(tokenizer) -> None:
    raw = _triplets(TaskKind.S2S, negs=4)
    spec = SourceSpec("cls", Path("cls.jsonl"), TaskKind.S2S, RecordKind.LABELLED, num_negatives=4)
    batch = RoleAwareCollator(tokenizer, ROLES, num_negatives=1)(RawBatch(spec, raw.rows, raw.keys))
    assert batch.records is RecordKind.LABELLED and len(batch.features) == 6  # query, positive, 4 negatives
    negatives = {tuple(_decoded(tokenizer, column)) for column in batch.features[2:]}
    assert len(negatives) == 4  # all four distinct negatives, none repeated
    assert len(RoleAwareCollator(tokenizer, ROLES, num_negatives=1)(raw).features) == 3
