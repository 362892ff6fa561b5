"""Chinese-aware chunking: cut long documents into pieces the model reads whole, counted in its own tokens.

Why our own: LangChain's and LlamaIndex's splitters count characters or tiktoken tokens, know no Chinese
sentence ends and give no character spans; sentence-transformers truncates. Here a document is tokenised once
(with offsets), cut at sentence ends (。！？；… and their ASCII forms, line breaks), sentences too long for one
chunk at clause marks (，、：), run-on text at token boundaries, and the pieces are packed greedily into chunks of
at most ``chunk_tokens`` tokens, consecutive chunks sharing up to ``overlap_tokens`` tokens of whole pieces.
Every chunk is then tokenised again on its own and re-cut if it grew (sentencepiece adds a word-start token to a
piece that began mid-text), so the budget holds for the text the model will actually read.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from piccolo_embed.chunking.segment import CLAUSE_END, SENTENCE_END, ends, is_safe_cut, keeps_characters, pieces
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.types import Role, RoleSpec

DEFAULT_OVERLAP_TOKENS = 64
_MAX_REFITS = 8

Span = tuple[int, int]


class TokenSpanner(Protocol):
    """The character spans of each text's tokens, special tokens left out, from the model's own tokenizer."""

    def __call__(self, texts: Sequence[str]) -> Sequence[Sequence[Span]]:
        """One list of ``(start, end)`` per text, in token order."""
        ...


class TokenizedModel(Protocol):
    """What :meth:`Chunker.for_model` needs: role settings and a Hugging Face fast tokenizer."""

    roles: Mapping[Role, RoleSpec]

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face fast tokenizer."""
        ...


class HFTokenSpanner:
    """:class:`TokenSpanner` over a Hugging Face fast tokenizer (the slow ones give no offsets)."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(f"chunking needs a fast tokenizer (with offsets), got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> list[list[Span]]:
        """Token spans of ``texts``, untruncated, without special tokens."""
        if not texts:
            return []
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long documents are the point here, not a mistake to warn about
        )
        return [[(int(a), int(b)) for a, b in offsets] for offsets in encoded["offset_mapping"]]

    def overhead(self, prefix: str) -> int:
        """Tokens a role adds around a text: its prefix plus the special tokens."""
        return len(self.tokenizer(prefix, add_special_tokens=True, verbose=False)["input_ids"])


@dataclass(frozen=True)
class Chunk:
    """One piece of a document.

    Attributes:
        doc_id: The document's id.
        index: Position among the document's chunks, from 0.
        start: First character, a ``str`` index (code points, not UTF-16 units or bytes) into the document.
        end: One past the last character: ``document[start:end] == text``.
        text: The chunk's text, exactly as in the document.
        tokens: Its tokens when tokenised on its own, prefix and special tokens not included.
    """

    doc_id: str
    index: int
    start: int
    end: int
    text: str
    tokens: int


class Chunker:
    """Cut documents into chunks of at most ``chunk_tokens`` tokens, overlapping by up to ``overlap_tokens``.

    Args:
        spanner: The model's tokenizer, as token spans.
        chunk_tokens: Most tokens in a chunk, prefix and special tokens not included.
        overlap_tokens: Most tokens two neighbouring chunks share; only whole sentences (or clauses) are shared,
            so the overlap is often smaller, and 0 when the last sentence is longer than this. Default:
            ``DEFAULT_OVERLAP_TOKENS`` or a quarter of ``chunk_tokens``, whichever is smaller.
    """

    def __init__(self, spanner: TokenSpanner, *, chunk_tokens: int, overlap_tokens: int | None = None) -> None:
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
        if overlap_tokens is None:
            overlap_tokens = min(DEFAULT_OVERLAP_TOKENS, chunk_tokens // 4)
        if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0:
            raise ValueError(f"overlap_tokens must be a non-negative integer, got {overlap_tokens!r}")
        if overlap_tokens >= chunk_tokens:
            raise ValueError(f"overlap_tokens ({overlap_tokens}) must be smaller than chunk_tokens ({chunk_tokens})")
        self.spanner = spanner
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    @classmethod
    def for_model(
        cls,
        model: TokenizedModel,
        *,
        role: Role | str = Role.PASSAGE,
        chunk_tokens: int | None = None,
        overlap_tokens: int | None = None,
    ) -> Self:
        """A chunker whose chunks the model reads whole for ``role`` (an :class:`~piccolo_embed.Embedder`).

        Args:
            model: Supplies the tokenizer and the role's prefix and max length.
            role: The role the chunks will be embedded with.
            chunk_tokens: Tokens per chunk; default (and most allowed): the role's max length minus the tokens
                of its prefix and the special tokens.
            overlap_tokens: See the class.

        Raises:
            ValueError: ``chunk_tokens`` is more than the role allows.
        """
        spec = model.roles[Role.coerce(role)]
        spanner = HFTokenSpanner(model.tokenizer)
        limit = spec.max_length - spanner.overhead(spec.prefix)
        if limit < 1:
            raise ValueError(f"role {Role.coerce(role).value}: its prefix fills all {spec.max_length} tokens")
        if chunk_tokens is not None and chunk_tokens > limit:
            raise ValueError(
                f"chunk_tokens {chunk_tokens} is more than role {Role.coerce(role).value} can read "
                f"({spec.max_length} tokens, {spec.max_length - limit} of them for the prefix and special tokens); "
                f"use at most {limit}"
            )
        return cls(spanner, chunk_tokens=chunk_tokens or limit, overlap_tokens=overlap_tokens)

    def chunk(self, text: str, doc_id: str = "") -> list[Chunk]:
        """The chunks of one document; at least one, even for an empty text."""
        return self.chunk_documents([text], [doc_id])[0]

    def chunk_documents(self, texts: Sequence[str], doc_ids: Sequence[str] | None = None) -> list[list[Chunk]]:
        """The chunks of each document (ids default to ``"0"``, ``"1"``, ...), tokenising in batches.

        Raises:
            TypeError: A text is not a string (the message names its index).
            ValueError: ``doc_ids`` has another length than ``texts``.
        """
        texts = validate_texts(texts)
        ids = [str(i) for i in range(len(texts))] if doc_ids is None else [str(d) for d in doc_ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} doc_ids for {len(texts)} texts")
        plans = [
            plan_chunks(text, spans, self.chunk_tokens, self.overlap_tokens)
            for text, spans in zip(texts, self.spanner(texts), strict=True)
        ]
        fitted = self._fit(texts, plans)
        return [
            [Chunk(doc_id, index, a, b, text[a:b], tokens) for index, (a, b, tokens) in enumerate(bounds)]
            for doc_id, text, bounds in zip(ids, texts, fitted, strict=True)
        ]

    def _fit(self, texts: list[str], plans: list[list[Span]]) -> list[list[tuple[int, int, int]]]:
        """Tokenise every planned chunk on its own; re-cut, with a budget lowered by the excess, those that grew."""
        fitted: list[list[tuple[int, int, int]]] = [[] for _ in texts]
        pending = [(doc, a, b, self.chunk_tokens) for doc, plan in enumerate(plans) for a, b in plan]
        for _ in range(_MAX_REFITS):
            again = []
            for (doc, a, b, budget), spans in zip(
                pending, self.spanner([texts[d][a:b] for d, a, b, _ in pending]), strict=True
            ):
                excess = len(spans) - self.chunk_tokens
                if excess <= 0:
                    fitted[doc].append((a, b, len(spans)))
                    continue
                if (tighter := budget - excess) < 1:
                    raise ValueError(
                        f"texts[{doc}]: characters {a}-{b} take {len(spans)} tokens, "
                        f"more than the chunk's {self.chunk_tokens}"
                    )
                piece = plan_chunks(texts[doc][a:b], spans, tighter, min(self.overlap_tokens, tighter - 1))
                again.extend((doc, a + x, a + y, tighter) for x, y in piece)
            if not again:
                return [_drop_contained(bounds) for bounds in fitted]
            pending = again
        raise RuntimeError(
            f"could not fit chunks into {self.chunk_tokens} tokens; the tokenizer's counts do not settle"
        )


def _drop_contained(bounds: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Sort re-cut chunks in among the others, dropping any that lies inside another (overlaps can do that)."""
    kept: list[tuple[int, int, int]] = []
    for bound in sorted(bounds):
        if kept and bound[0] == kept[-1][0]:  # same start, longer (sorted): it holds the one before
            kept[-1] = bound
        elif not kept or bound[1] > kept[-1][1]:
            kept.append(bound)
    return kept


def plan_chunks(text: str, spans: Sequence[Span], budget: int, overlap: int) -> list[Span]:
    """Chunk spans of ``text`` given its token ``spans``: cut into pieces of at most ``budget`` tokens, then packed.

    A token belongs to the piece its first character is in. The chunks cover ``text`` in order: the first
    starts at 0, the last ends at ``len(text)``, and each starts after the one before and no later than its end.
    """
    starts = sorted(a for a, _ in spans)
    count = _counter(starts)
    units = [(a, b, count(a, b)) for a, b in cut_pieces(text, starts, budget)]
    return [(units[i][0], units[j - 1][1]) for i, j in pack(units, budget, overlap)]


def cut_pieces(text: str, starts: Sequence[int], budget: int) -> list[Span]:
    """Tile ``text`` with pieces of at most ``budget`` tokens: sentences, else clauses, else token runs."""
    count = _counter(starts)
    out: list[Span] = []
    for a, b in pieces(0, len(text), ends(text, 0, len(text), SENTENCE_END)):
        if count(a, b) <= budget:
            out.append((a, b))
            continue
        for c, d in pieces(a, b, ends(text, a, b, CLAUSE_END)):
            out.extend([(c, d)] if count(c, d) <= budget else token_pieces(text, starts, c, d, budget))
    return out or [(0, len(text))]


def token_pieces(text: str, starts: Sequence[int], start: int, end: int, budget: int) -> list[Span]:
    """Cut ``[start, end)`` at token starts into pieces of at most ``budget`` tokens.

    Each cut is the latest token start within the budget that :func:`is_safe_cut` allows; a word longer than
    the budget is cut at a token start that keeps characters whole.
    """
    out: list[Span] = []
    last = bisect_left(starts, end)
    current = start
    while last - (first := bisect_left(starts, current)) > budget:
        window = [starts[k] for k in range(min(first + budget, last - 1), first, -1) if starts[k] > current]
        cut = next((p for p in window if is_safe_cut(text, p)), None)
        if cut is None:  # a word longer than the budget
            cut = next((p for p in window if keeps_characters(text, p)), None)
        if cut is None:  # more tokens than the budget on one character: give it its own piece
            cut = next((p for p in starts[first:last] if p > current), end)
        out.append((current, cut))
        current = cut
    out.append((current, end))
    return out


def pack(units: Sequence[tuple[int, int, int]], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy packing of ``(start, end, tokens)`` units into index ranges ``[i, j)`` of at most ``budget`` tokens.

    Each next range starts with the longest run of the previous range's trailing units that has at most
    ``overlap`` tokens and still leaves room for one new unit, so every range adds at least one unit.
    """
    ranges: list[tuple[int, int]] = []
    i, n = 0, len(units)
    while i < n:
        j, total = i, 0
        while j < n and (j == i or total + units[j][2] <= budget):
            total += units[j][2]
            j += 1
        ranges.append((i, j))
        if j == n:
            break
        k, shared = j, 0
        while k - 1 > i and shared + units[k - 1][2] <= overlap and shared + units[k - 1][2] + units[j][2] <= budget:
            k -= 1
            shared += units[k][2]
        i = k
    return ranges


def _counter(starts: Sequence[int]) -> Callable[[int, int], int]:
    """Tokens whose first character lies in ``[a, b)``; ``starts`` is sorted."""
    return lambda a, b: bisect_left(starts, b) - bisect_left(starts, a)
