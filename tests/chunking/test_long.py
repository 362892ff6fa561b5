"""embed_long: truncate equals today's encode, chunks equal encoding each chunk, mean equals a hand-written mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from piccolo_embed import Embedder, Role
from piccolo_embed.chunking import Chunker, LongMode, embed_long, mean_rows

LONG = ("今天天气很好，我们去公园散步。明天会下雨吗？" * 12 + "北京上海的美食推荐。\n") * 4
DOCS = [LONG, "如何学习编程？", LONG[::-1] + "机器人工智能" * 50]


@pytest.fixture(scope="module")
def embedder(_tiny_bert_master: Path) -> Embedder:
    return Embedder.from_pretrained(_tiny_bert_master, device="cpu")


def test_truncate_is_todays_encode(embedder: Embedder) -> None:
    result = embed_long(embedder, DOCS, mode="truncate")
    np.testing.assert_array_equal(result.vectors, embedder.encode(DOCS, Role.PASSAGE))
    np.testing.assert_array_equal(result.documents, [0, 1, 2])
    assert result.chunks is None


def test_chunks_are_encoded_whole_with_their_spans(embedder: Embedder) -> None:
    result = embed_long(embedder, DOCS, mode=LongMode.CHUNKS, doc_ids=["a", "b", "c"])
    chunks = result.chunks
    assert chunks is not None and len(chunks) == len(result.vectors) == len(result.documents)
    assert len(chunks) > 6  # the long documents really were cut
    for chunk, document in zip(chunks, result.documents, strict=True):
        assert DOCS[document][chunk.start : chunk.end] == chunk.text
        assert chunk.doc_id == "abc"[document]
    np.testing.assert_allclose(result.vectors, embedder.encode([c.text for c in chunks], Role.PASSAGE), atol=1e-6)
    spec = embedder.roles[Role.PASSAGE]
    lengths = [len(ids) for ids in embedder.tokenizer([spec.prefix + c.text for c in chunks])["input_ids"]]
    assert max(lengths) <= spec.max_length  # nothing was truncated


def test_mean_is_the_normalised_mean_of_chunk_vectors(embedder: Embedder) -> None:
    chunker = Chunker.for_model(embedder, chunk_tokens=60, overlap_tokens=10)
    result = embed_long(embedder, DOCS, mode="mean", chunker=chunker)
    assert result.vectors.shape == (3, embedder.dim) and result.chunks is None
    for row, text in zip(result.vectors, DOCS, strict=True):
        parts = embedder.encode([c.text for c in chunker.chunk(text)], Role.PASSAGE)
        mean = parts.mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-5)
    short = embed_long(embedder, ["如何学习编程？"], mode="mean").vectors  # fits: one chunk, the whole text
    np.testing.assert_allclose(short, embedder.encode(["如何学习编程？"], Role.PASSAGE), atol=1e-6)
    truncated = embed_long(embedder, [LONG], mode="truncate").vectors
    assert float(result.vectors[0] @ truncated[0]) < 0.9999  # the rest of the document counted


def test_role_reaches_the_encoder_and_the_default_chunker(embedder: Embedder) -> None:
    result = embed_long(embedder, [LONG], mode="chunks", role="query")
    spec = embedder.roles[Role.QUERY]
    assert all(len(embedder.tokenizer(spec.prefix + c.text)["input_ids"]) <= spec.max_length for c in result.chunks)
    np.testing.assert_allclose(result.vectors, embedder.encode([c.text for c in result.chunks], "query"), atol=1e-6)


def test_mean_rows_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9, 5)).astype(np.float32)
    groups = np.array([0, 0, 2, 2, 2, 3, 0, 3, 2])
    got = mean_rows(vectors, groups, 5)
    for group in range(5):
        rows = [vectors[i] for i in range(9) if groups[i] == group]
        if not rows:
            np.testing.assert_array_equal(got[group], 0.0)  # a group without rows stays zero
            continue
        mean = sum(rows) / len(rows)
        np.testing.assert_allclose(got[group], mean / np.linalg.norm(mean), atol=1e-6)


def test_bad_mode_and_encoders_without_a_tokenizer_are_refused(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="unknown LongMode 'max'; choose one of: truncate, mean, chunks"):
        embed_long(embedder, DOCS, mode="max")

    class Bare:
        def encode(self, texts, *, role=None):
            return np.ones((len(texts), 2), dtype=np.float32)

    with pytest.raises(ValueError, match="pass chunker="):
        embed_long(Bare(), DOCS, mode="mean")
    assert embed_long(Bare(), DOCS, mode="truncate").vectors.shape == (3, 2)
