"""The starter model on a slice of a real corpus (slow: a 12-layer model on CPU)."""

import json
from pathlib import Path

import pytest

from piccolo_embed.index import Searcher, build_index

CMRC = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "cmteb-mini" / "CMRC2018Retrieval"


@pytest.mark.slow
@pytest.mark.skipif(not (CMRC / "corpus.jsonl").is_file(), reason="needs ../shared/eval/cmteb-mini")
def test_starter_retrieves_the_gold_passage(tmp_path):
    from piccolo_embed import Embedder

    with (CMRC / "corpus.jsonl").open(encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(40)]
    (tmp_path / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    embedder = Embedder.from_pretrained("starter", device="cpu")
    store = build_index(embedder, tmp_path / "corpus.jsonl", tmp_path / "idx", chunk_size=16)
    assert store.count == 40 and store.dim == embedder.dim
    hits = Searcher(store, embedder).search(["《战国无双3》是由哪两个公司合作开发的？"], k=3)[0]
    assert hits[0].id == json.loads(lines[0])["_id"] == "DEV_0"
