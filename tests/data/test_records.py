import json
from pathlib import Path

import pytest

from piccolo_embed.data.records import (
    OnError,
    ReadStats,
    RecordError,
    ScoredPair,
    TripletRecord,
    read_records,
    write_records,
)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_triplets_and_allows_empty_neg(tmp_path):
    path = _write(
        tmp_path / "a.jsonl",
        [
            json.dumps({"query": "北京", "pos": ["首都"], "neg": []}, ensure_ascii=False),
            "",
            '{"query": "q", "pos": ["p"]}',
        ],
    )
    records = list(read_records(path, "triplet"))
    assert records == [TripletRecord("北京", ("首都",), ()), TripletRecord("q", ("p",), ())]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("not json", "<json>"),
        ("[1, 2]", "<record>"),
        ('{"pos": ["p"]}', "query"),
        ('{"query": "  ", "pos": ["p"]}', "query"),
        ('{"query": "q", "pos": []}', "pos"),
        ('{"query": "q", "pos": ["p", 3]}', "pos[1]"),
        ('{"query": "q", "pos": ["p"], "neg": "n"}', "neg"),
    ],
)
def test_bad_triplet_names_file_line_and_field(tmp_path, line, field):
    path = _write(tmp_path / "bad.jsonl", ['{"query": "q", "pos": ["p"]}', line])
    with pytest.raises(RecordError) as info:
        list(read_records(path, "triplet"))
    assert info.value.line == 2
    assert info.value.field == field
    assert str(path) in str(info.value)


def test_skip_counts_bad_lines(tmp_path):
    path = _write(tmp_path / "s.jsonl", ['{"sentence1": "a", "sentence2": "b", "score": 1}', '{"sentence1": "a"}'])
    stats = ReadStats()
    records = list(read_records(path, "scored", on_error=OnError.SKIP, stats=stats))
    assert records == [ScoredPair("a", "b", 1.0)]
    assert (stats.read, stats.skipped) == (1, 1)
    assert "s.jsonl:2" in stats.errors[0]


@pytest.mark.parametrize("score", ["true", '"5"', "NaN", "null"])
def test_scored_rejects_non_numbers(tmp_path, score):
    path = _write(tmp_path / "s.jsonl", [f'{{"sentence1": "a", "sentence2": "b", "score": {score}}}'])
    with pytest.raises(RecordError, match="score"):
        list(read_records(path, "scored"))


def test_unknown_kind_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="triplet, scored"):
        list(read_records(tmp_path / "x.jsonl", "pairs"))


def test_write_round_trip_and_atomic(tmp_path):
    records = [TripletRecord("问", ("答",), ("错",)), TripletRecord("q", ("p1", "p2"))]
    out = tmp_path / "sub" / "out.jsonl"
    assert write_records(out, records) == 2
    assert list(read_records(out, "triplet")) == records

    def broken():
        yield records[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_records(out, broken())
    assert list(read_records(out, "triplet")) == records
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]


def test_labelled_records_need_negatives_and_a_plain_label(tmp_path):
    good = {"query": "好评", "pos": ["满意"], "neg": ["差评"], "label": "正面评价"}
    path = _write(tmp_path / "cls.jsonl", [json.dumps(good, ensure_ascii=False)])
    assert list(read_records(path, "labelled")) == [TripletRecord("好评", ("满意",), ("差评",))]
    for line, field in [
        (json.dumps({**good, "neg": []}), "neg"),
        (json.dumps({**good, "label": ["a"]}), "label"),
    ]:
        bad = _write(tmp_path / "bad.jsonl", [json.dumps(good), line])
        with pytest.raises(RecordError) as info:
            list(read_records(bad, "labelled"))
        assert (info.value.line, info.value.field) == (2, field)
