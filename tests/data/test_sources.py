"""Dataset loading: validation on load, the Arrow cache and its key, the bundled demo file, the mixture."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from piccolo_embed.data import sources
from piccolo_embed.data.records import OnError, RecordError, RecordKind
from piccolo_embed.data.sampler import encode_key
from piccolo_embed.data.sources import (
    SourceMixture,
    SourceSpec,
    load_source,
    load_sources,
    resolve_data_file,
)
from piccolo_embed.types import TaskKind

GOOD = [
    {"query": "今天天气", "pos": ["明天下雨"], "neg": []},
    {"query": "北京美食", "pos": ["烤鸭"], "neg": ["医院"]},
]


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def _spec(path: Path, records: RecordKind = RecordKind.TRIPLET) -> SourceSpec:
    return SourceSpec(path.stem, path, TaskKind.S2P, records)


def test_loads_into_a_memory_mapped_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(_write(tmp_path / "pairs.jsonl", GOOD))
    first = load_source(spec, cache_dir=tmp_path / "cache")
    assert len(first) == 2 and first.table[1]["neg"] == ["医院"]
    assert first.table.cache_files  # backed by an Arrow file, not held in memory

    def boom(*args: object) -> None:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(sources, "_convert", boom)
    assert load_source(spec, cache_dir=tmp_path / "cache").table["query"] == ["今天天气", "北京美食"]


def test_editing_the_file_invalidates_the_cache(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", GOOD)
    key = sources.cache_key(path, RecordKind.TRIPLET, OnError.RAISE)
    _write(path, [*GOOD, {"query": "上海", "pos": ["外滩"]}])
    os.utime(path, ns=(1, 1))
    assert sources.cache_key(path, RecordKind.TRIPLET, OnError.RAISE) != key
    assert sources.cache_key(path, RecordKind.SCORED, OnError.RAISE) != sources.cache_key(
        path, RecordKind.TRIPLET, OnError.RAISE
    )
    assert len(load_source(_spec(path), cache_dir=tmp_path / "cache")) == 3


def test_bad_record_fails_with_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD[0], {"query": "x", "pos": []}])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: field 'pos'"):
        load_source(_spec(path), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("bad-*"))  # nothing half-written is left to be reused


def test_skipping_bad_records_counts_and_logs_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD[0], {"query": "x", "pos": []}, "oops", GOOD[1]])
    with caplog.at_level(logging.WARNING):
        source = load_source(_spec(path), cache_dir=tmp_path / "cache", on_error=OnError.SKIP)
    assert len(source) == 2 and source.skipped == 2
    assert "skipped 2 bad record(s) of 4" in caplog.text and "bad.jsonl:2" in caplog.text


def test_scored_pairs_load(tmp_path: Path) -> None:
    path = _write(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 3}])
    source = load_source(_spec(path, RecordKind.SCORED), cache_dir=tmp_path / "cache")
    assert source.table[0] == {"sentence1": "a", "sentence2": "b", "score": 3.0}


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_sources([_spec(tmp_path / "nope.jsonl")], cache_dir=tmp_path)


def test_bundled_demo_file_is_valid(tmp_path: Path) -> None:
    path = resolve_data_file("resource:train_demo.jsonl")
    source = load_source(_spec(path), cache_dir=tmp_path)
    assert 150 <= len(source) <= 1000
    assert all(row for row in source.table["neg"])  # every demo record carries a hard negative


def test_mixture_fetches_one_dataset_per_batch(tmp_path: Path) -> None:
    a = load_source(_spec(_write(tmp_path / "a.jsonl", GOOD)), cache_dir=tmp_path / "c")
    b = load_source(_spec(_write(tmp_path / "b.jsonl", GOOD[::-1])), cache_dir=tmp_path / "c")
    mixture = SourceMixture([a, b])
    assert mixture.sizes == [2, 2] and len(mixture) == 4
    batch = mixture.__getitems__([encode_key(1, 2, 4), encode_key(0, 3, 4)])
    assert batch.source.name == "b" and batch.rows["query"] == ["北京美食", "今天天气"]
    with pytest.raises(ValueError, match="mixes datasets"):
        mixture.__getitems__([0, 3])
