"""An interrupted build never looks complete, and rerunning it resumes after the last finished chunk."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.index import IncompleteIndexError, IndexStore, Searcher, build_index
from piccolo_embed.types import Role

DIM = 8
DATA = ("embeddings.f32", "texts.jsonl", "offsets.u64")


class CrashError(RuntimeError):
    pass


class CrashingEncoder:
    """Unit vectors from a text hash; raises on the ``crash_on``-th passage chunk (1-based)."""

    name = "crashing"

    def __init__(self, crash_on: int | None = None) -> None:
        self.crash_on, self.chunks, self.passages = crash_on, 0, []

    def encode(self, texts, *, role=None):
        if Role.coerce(role) is Role.PASSAGE and texts and texts[0].startswith("p"):
            self.chunks += 1
            if self.chunks == self.crash_on:
                raise CrashError("simulated crash")
            self.passages.extend(texts)
        rows = []
        for text in texts:
            v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), DIM)


def write_corpus(path: Path, n: int, start: int = 0) -> Path:
    lines = [json.dumps({"_id": f"d{i}", "text": f"p{i}"}) for i in range(start, start + n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in DATA}


def test_interrupted_first_build_does_not_load_and_resumes(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    with pytest.raises(CrashError):
        build_index(CrashingEncoder(crash_on=4), corpus, tmp_path / "idx", chunk_size=10)
    with pytest.raises(IncompleteIndexError, match="rerun"):
        IndexStore.open(tmp_path / "idx")

    resumed = CrashingEncoder()
    store = build_index(resumed, corpus, tmp_path / "idx", chunk_size=10)
    assert resumed.passages == [f"p{i}" for i in range(30, 50)]  # chunks 1-3 were not re-encoded
    assert store.count == 50
    assert not (tmp_path / "idx" / "checkpoint.json").exists()

    build_index(CrashingEncoder(), corpus, tmp_path / "clean", chunk_size=10)
    assert files(tmp_path / "idx") == files(tmp_path / "clean")


def test_half_written_chunk_is_cut_off_on_resume(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    with pytest.raises(CrashError):
        build_index(CrashingEncoder(crash_on=3), corpus, tmp_path / "idx", chunk_size=10)
    for name in DATA:  # what a kill in the middle of writing chunk 3 could leave behind
        with (tmp_path / "idx" / name).open("ab") as handle:
            handle.write(b"\x00garbage")
    build_index(CrashingEncoder(), corpus, tmp_path / "idx", chunk_size=10)
    build_index(CrashingEncoder(), corpus, tmp_path / "clean", chunk_size=10)
    assert files(tmp_path / "idx") == files(tmp_path / "clean")


def test_interrupted_append_keeps_the_previous_index_readable(tmp_path):
    build_index(CrashingEncoder(), write_corpus(tmp_path / "a.jsonl", 20), tmp_path / "idx", chunk_size=10)
    more = write_corpus(tmp_path / "b.jsonl", 30, start=20)
    with pytest.raises(CrashError):
        build_index(CrashingEncoder(crash_on=2), more, tmp_path / "idx", mode="append", chunk_size=10)

    store = IndexStore.open(tmp_path / "idx")
    assert store.count == 20 and store.manifest.generation == 1
    hits = Searcher(store, CrashingEncoder()).search(["p25", "p5"], k=1)
    assert hits[1][0].id == "d5" and all(h[0].row < 20 for h in hits)

    resumed = CrashingEncoder()
    store = build_index(resumed, more, tmp_path / "idx", mode="append", chunk_size=10)
    assert resumed.passages == [f"p{i}" for i in range(30, 50)]
    assert store.count == 50 and store.entries([49]) == [{"id": "d49", "text": "p49"}]


def test_checkpoint_of_a_changed_corpus_is_not_resumed(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    with pytest.raises(CrashError):
        build_index(CrashingEncoder(crash_on=3), corpus, tmp_path / "idx", chunk_size=10)
    write_corpus(corpus, 25, start=100)
    os.utime(corpus, ns=(time.time_ns(), time.time_ns() + 10**9))
    fresh = CrashingEncoder()
    store = build_index(fresh, corpus, tmp_path / "idx", chunk_size=10)
    assert fresh.passages[0] == "p100" and store.count == 25


KILLER = textwrap.dedent(
    """
    import sys, numpy as np, zlib, os, signal
    sys.path.insert(0, sys.argv[3])
    from test_index_crash import CrashingEncoder
    from piccolo_embed.index import build_index

    class Killer(CrashingEncoder):
        def encode(self, texts, *, role=None):
            out = super().encode(texts, role=role)
            if self.chunks == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers
            return out

    build_index(Killer(), sys.argv[1], sys.argv[2], chunk_size=10)
    """
)


def test_sigkill_mid_build_leaves_no_loadable_index_and_resumes(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(corpus), str(tmp_path / "idx"), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(IncompleteIndexError):
        IndexStore.open(tmp_path / "idx")
    resumed = CrashingEncoder()
    build_index(resumed, corpus, tmp_path / "idx", chunk_size=10)
    assert resumed.passages == [f"p{i}" for i in range(20, 50)]
    build_index(CrashingEncoder(), corpus, tmp_path / "clean", chunk_size=10)
    assert files(tmp_path / "idx") == files(tmp_path / "clean")
