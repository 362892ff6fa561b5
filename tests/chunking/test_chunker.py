"""Chunker properties: chunks cover the text in order, respect the budget, keep words and characters whole."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from piccolo_embed import Embedder
from piccolo_embed.chunking import Chunk, Chunker, HFTokenSpanner
from piccolo_embed.chunking.segment import SENTENCE_END

CJK = "今天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能深度神经网络模型训练数据"
PUNCT = [*"。！？；…，、：", ". ", "! ", "? ", "; ", ", ", ": ", "\n", "”。", "……", "\n\n", " "]
LATIN = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).map(lambda w: w + " ")
ODD = st.sampled_from(["😀", "𠀀", "e\u0301", "👍🏽", "\ud83d\ude00", "\u3000", "\t"])


class FakeSpanner:
    """Each Latin word is one token, every other visible code point one (so surrogate halves are two tokens)."""

    pattern = re.compile(r"[a-z0-9]+|\S")

    def __init__(self, *, lead: bool = False) -> None:
        self.lead = lead  # emulate sentencepiece: an extra zero-width token at the start of every text
        self.calls = 0

    def __call__(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        self.calls += 1
        out = []
        for text in texts:
            spans = [m.span() for m in self.pattern.finditer(text)]
            out.append([(0, 0), *spans] if self.lead and spans else spans)
        return out


def _texts(odd: bool) -> st.SearchStrategy[str]:
    piece = st.one_of(st.text(CJK, min_size=1, max_size=30), st.sampled_from(PUNCT), LATIN, *([ODD] if odd else []))
    return st.lists(piece, max_size=60).map("".join)


def check_chunks(text: str, chunks: list[Chunk], spanner, budget: int, overlap: int) -> None:
    """The properties every chunking must have (tokens recounted by the test, not taken from the chunker)."""
    assert chunks, "every document gets at least one chunk"
    assert (chunks[0].start, chunks[-1].end) == (0, len(text))
    rebuilt = text[: chunks[0].end]
    for index, (before, after) in enumerate(itertools.pairwise(chunks)):
        assert before.start < after.start <= before.end < after.end, (index, before, after)
        rebuilt += text[before.end : after.end]
        shared = text[after.start : before.end]
        assert len(spanner([shared])[0]) <= overlap or not shared.strip()
    assert rebuilt == text
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.tokens == len(spanner([chunk.text])[0]) <= budget
        for cut in (chunk.start, chunk.end):
            if 0 < cut < len(text):
                left, right = text[cut - 1], text[cut]
                assert not (left.isascii() and left.isalnum() and right.isascii() and right.isalnum()), cut
                assert not ("\ud800" <= left <= "\udbff" and "\udc00" <= right <= "\udfff"), cut
                assert right not in "\u0301\U0001f3fd", cut  # combining accent, skin-tone modifier's base split


@settings(max_examples=300, deadline=None)
@given(text=_texts(odd=True), budget=st.integers(8, 40), data=st.data())
def test_properties_with_a_fake_tokenizer(text: str, budget: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, budget - 1))
    spanner = FakeSpanner()
    chunks = Chunker(spanner, chunk_tokens=budget, overlap_tokens=overlap).chunk(text, "doc")
    check_chunks(text, chunks, spanner, budget, overlap)
    assert {chunk.doc_id for chunk in chunks} == {"doc"}


@settings(max_examples=150, deadline=None)
@given(text=_texts(odd=True), budget=st.integers(8, 40))
def test_budget_holds_when_pieces_grow_on_their_own(text: str, budget: int) -> None:
    spanner = FakeSpanner(lead=True)  # a piece cut from mid-text takes one token more than it did in place
    chunks = Chunker(spanner, chunk_tokens=budget, overlap_tokens=budget // 4).chunk(text)
    # The overlap is planned in place; counted on its own, the shared text also carries the extra start token.
    check_chunks(text, chunks, spanner, budget, budget // 4 + 1)


@pytest.fixture(scope="module")
def bert_spanner(_tiny_bert_master: Path) -> HFTokenSpanner:
    return HFTokenSpanner(AutoTokenizer.from_pretrained(_tiny_bert_master))


@pytest.fixture(scope="module")
def xlmr_spanner(tiny_xlmr_dir: Path) -> HFTokenSpanner:
    return HFTokenSpanner(AutoTokenizer.from_pretrained(tiny_xlmr_dir))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_texts(odd=False), budget=st.integers(10, 60), data=st.data())
def test_properties_with_real_tokenizers(
    bert_spanner: HFTokenSpanner, xlmr_spanner: HFTokenSpanner, text: str, budget: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, budget // 2))
    for spanner in (bert_spanner, xlmr_spanner):  # WordPiece, and sentencepiece with its word-start marks
        check_chunks(
            text, Chunker(spanner, chunk_tokens=budget, overlap_tokens=overlap).chunk(text), spanner, budget, overlap
        )


def test_cuts_at_sentence_ends_when_sentences_fit() -> None:
    sentences = [
        "今天天气很好。",
        "我们去公园散步吧！",
        "明天会下雨吗？",
        "北京的美食；",
        "好……",
        "上海\n",
        "机器人。",
    ] * 6
    text = "".join(sentences)
    ends = {m.end() for m in SENTENCE_END.finditer(text)}
    chunks = Chunker(FakeSpanner(), chunk_tokens=20, overlap_tokens=0).chunk(text)
    assert len(chunks) > 5
    assert all(chunk.end in ends for chunk in chunks)
    assert all(chunk.start in ends for chunk in chunks[1:])


def test_ascii_sentence_ends_and_closing_quotes_stay_with_their_sentence() -> None:
    text = "他说：“明天见。”然后走了。Pi is 3.14 here. Next one! 网址 a.b/c?d=1 好"
    cut_after = {m.end() for m in SENTENCE_END.finditer(text)}
    assert text.index("然") in cut_after  # after 。” not between 。 and ”
    assert text.index("Pi") in cut_after
    assert text.index("Next") in cut_after  # "here. " ends a sentence, "3.14" and "a.b/c?d=1" do not
    assert all(text[p - 1] not in ".?" or text[p - 1 : p + 1] in (". ", "! ") for p in cut_after if p < len(text))


def test_long_sentence_falls_back_to_clauses_then_tokens() -> None:
    clause = "我们去公园散步，"  # 8 tokens
    text = clause * 6 + "机器人工智能深度神经网络模型训练数据" * 3 + "。"
    chunks = Chunker(FakeSpanner(), chunk_tokens=17, overlap_tokens=0).chunk(text)
    assert [chunk.text for chunk in chunks[:3]] == [clause * 2] * 3  # whole clauses, two per chunk
    run_on = [chunk.tokens for chunk in chunks[3:]]
    assert run_on[:-1] == [17] * (len(run_on) - 1)  # no punctuation: full chunks cut at token boundaries
    check_chunks(text, chunks, FakeSpanner(), 17, 0)


def test_overlap_repeats_whole_trailing_sentences() -> None:
    text = "".join(f"{CJK[i : i + 4]}。" for i in range(0, 40, 4))  # ten sentences of 5 tokens
    chunks = Chunker(FakeSpanner(), chunk_tokens=15, overlap_tokens=5).chunk(text)
    assert [chunk.text for chunk in chunks[:2]] == [text[0:15], text[10:25]]
    assert all(chunk.tokens == 15 for chunk in chunks[:-1])


def test_empty_and_short_texts_get_one_chunk() -> None:
    chunker = Chunker(FakeSpanner(), chunk_tokens=10)
    assert chunker.chunk("") == [Chunk("", 0, 0, 0, "", 0)]
    assert chunker.chunk("  \n ", "x") == [Chunk("x", 0, 0, 4, "  \n ", 0)]
    assert chunker.chunk("短文本。", "y") == [Chunk("y", 0, 0, 4, "短文本。", 4)]


def test_documents_are_tokenised_in_batches_and_keep_their_ids() -> None:
    spanner = FakeSpanner()
    per_doc = Chunker(spanner, chunk_tokens=12).chunk_documents(["今天天气很好。" * 5, "明天会下雨吗？"], ["a", "b"])
    assert spanner.calls == 2  # once for the documents, once to recount the chunks
    assert {chunk.doc_id for chunk in per_doc[0]} == {"a"} and len(per_doc[0]) > 1
    assert [chunk.doc_id for chunk in per_doc[1]] == ["b"]
    assert [chunk.doc_id for chunk in Chunker(spanner, chunk_tokens=12).chunk_documents(["好", "坏"])[1]] == ["1"]


def test_bad_arguments_are_refused_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="chunk_tokens must be a positive integer"):
        Chunker(FakeSpanner(), chunk_tokens=0)
    with pytest.raises(ValueError, match=r"overlap_tokens \(10\) must be smaller than chunk_tokens \(10\)"):
        Chunker(FakeSpanner(), chunk_tokens=10, overlap_tokens=10)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string"):
        Chunker(FakeSpanner(), chunk_tokens=10).chunk_documents(["好", None])
    with pytest.raises(ValueError, match="1 doc_ids for 2 texts"):
        Chunker(FakeSpanner(), chunk_tokens=10).chunk_documents(["好", "坏"], ["a"])


def test_for_model_fills_the_passage_role_exactly(_tiny_bert_master: Path) -> None:
    embedder = Embedder.from_pretrained(_tiny_bert_master, device="cpu")
    spec = embedder.roles["passage"]
    chunker = Chunker.for_model(embedder)
    prefix_tokens = len(embedder.tokenizer(spec.prefix)["input_ids"])  # prefix plus [CLS] and [SEP]
    assert chunker.chunk_tokens == spec.max_length - prefix_tokens
    text = ("今天天气很好，我们去公园散步。" * 8 + "hello world, deep learning!\n") * 6 + "机器人工智能" * 60
    chunks = chunker.chunk(text)
    read = embedder.tokenizer([spec.prefix + c.text for c in chunks], truncation=False)["input_ids"]
    assert max(len(ids) for ids in read) <= spec.max_length  # the model reads every chunk whole
    assert max(len(ids) for ids in read) >= spec.max_length - 10  # and chunks are nearly full
    with pytest.raises(ValueError, match=f"use at most {chunker.chunk_tokens}"):
        Chunker.for_model(embedder, chunk_tokens=chunker.chunk_tokens + 1)
    assert Chunker.for_model(embedder, role="query", chunk_tokens=20, overlap_tokens=3).overlap_tokens == 3


def test_recut_chunks_inside_others_are_dropped() -> None:
    from piccolo_embed.chunking.chunker import _drop_contained

    bounds = [(0, 10, 5), (8, 20, 6), (0, 6, 3), (6, 9, 2), (8, 9, 1), (12, 20, 4)]
    assert _drop_contained(bounds) == [(0, 10, 5), (8, 20, 6)]
