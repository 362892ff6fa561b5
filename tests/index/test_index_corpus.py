import json
from pathlib import Path

import pytest

from piccolo_embed.data.records import RecordError
from piccolo_embed.errors import EncodingError
from piccolo_embed.index import Passage, read_corpus


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_beir_plain_and_numeric_ids(tmp_path):
    path = _write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"_id": "d1", "title": "标题", "text": " 正文 "}, ensure_ascii=False),
            "",
            json.dumps({"text": "没有编号"}, ensure_ascii=False),
            json.dumps({"id": 7, "text": "数字编号", "title": None}, ensure_ascii=False),
        ],
    )
    passages = list(read_corpus(path))
    assert passages == [
        Passage("d1", "正文", "标题", line=1),
        Passage(None, "没有编号", "", line=3),
        Passage("7", "数字编号", "", line=4),
    ]
    assert passages[0].embed_text == "标题 正文"
    assert passages[1].embed_text == "没有编号"


def test_start_line_skips_without_parsing(tmp_path):
    path = _write(tmp_path / "c.jsonl", ['{"text": "a"}', "not json at all", '{"text": "c"}'])
    assert [p.text for p in read_corpus(path, start_line=2)] == ["c"]


def test_reader_is_lazy(tmp_path):
    path = _write(tmp_path / "c.jsonl", ['{"text": "a"}', "broken"])
    stream = read_corpus(path)
    assert next(stream).text == "a"  # the bad line is only reached when asked for
    with pytest.raises(RecordError):
        next(stream)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("not json", "<json>"),
        ("[1]", "<record>"),
        ('{"_id": "x"}', "text"),
        ('{"text": "  "}', "text"),
        ('{"text": 3}', "text"),
        ('{"text": "t", "title": 5}', "title"),
        ('{"_id": true, "text": "t"}', "_id"),
        ('{"id": "", "text": "t"}', "id"),
        ('{"_id": ["a"], "text": "t"}', "_id"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, field):
    path = _write(tmp_path / "bad.jsonl", ['{"text": "ok"}', line])
    with pytest.raises(RecordError) as info:
        list(read_corpus(path))
    assert (info.value.line, info.value.field) == (2, field)
    assert str(path) in str(info.value)


def test_a_line_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "\xff"}\n')
    with pytest.raises(EncodingError, match=r"c\.jsonl:2: not valid UTF-8 at byte 24"):
        list(read_corpus(path))
