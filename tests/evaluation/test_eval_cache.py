"""CachedEncoder: each (role, text) reaches the wrapped encoder once, rows come back in input order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from piccolo_embed import Encoder, Role
from piccolo_embed.evaluation import CachedEncoder


class CountingEncoder:
    """Embeds a text as [len, first code point, role id]; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Role, list[str]]] = []

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        role = Role.coerce(role)
        self.calls.append((role, list(texts)))
        rows = [[len(t), ord(t[0]), list(Role).index(role)] for t in texts]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), 3)


def test_repeats_are_encoded_once_per_role() -> None:
    inner = CountingEncoder()
    cache = CachedEncoder(inner)
    assert isinstance(cache, Encoder)
    first = cache.encode(["甲", "乙乙", "甲"], role=Role.QUERY)
    np.testing.assert_array_equal(first, inner.encode(["甲", "乙乙", "甲"], role=Role.QUERY))
    inner.calls.clear()
    again = cache.encode(["乙乙", "丙", "甲"], role="query")
    assert inner.calls == [(Role.QUERY, ["丙"])]
    np.testing.assert_array_equal(again[[0, 2]], first[[1, 0]])
    cache.encode(["甲"], role=Role.PASSAGE)  # another role is another entry
    cache.encode(["甲"])  # None means Role.NONE
    assert inner.calls[1:] == [(Role.PASSAGE, ["甲"]), (Role.NONE, ["甲"])]
    assert len(cache) == 5
    assert (cache.hits, cache.misses) == (1 + 2, 2 + 1 + 1 + 1)


def test_fully_cached_call_skips_the_encoder_and_clear_forgets() -> None:
    inner = CountingEncoder()
    cache = CachedEncoder(inner)
    cache.encode(["甲", "乙"], role=Role.NONE)
    cache.encode(["乙", "甲", "乙"], role=Role.NONE)
    assert len(inner.calls) == 1
    cache.clear()
    cache.encode(["甲"], role=Role.NONE)
    assert len(inner.calls) == 2


def test_empty_input_and_bad_encoder_output() -> None:
    assert CachedEncoder(CountingEncoder()).encode([], role=None).shape == (0, 3)

    class Broken:
        def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
            return np.zeros((1, 3), dtype=np.float32)

    with pytest.raises(ValueError, match=r"encoder returned shape \(1, 3\) for 2 texts"):
        CachedEncoder(Broken()).encode(["甲", "乙"], role=None)
