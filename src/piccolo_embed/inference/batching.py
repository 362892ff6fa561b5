"""Length-sorted, token-budgeted batching: pure functions, tested against plain one-by-one encoding."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], *, max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group indices into batches whose padded size (rows x longest row) stays under ``max_batch_tokens``.

    Indices are sorted longest first, so each batch pads only to its own longest text and an out-of-memory
    error, if any, happens on the first batch rather than the last. A single text longer than the budget
    still gets a batch of its own.

    Args:
        lengths: Token count of each text.
        max_batch_size: Most texts in one batch.
        max_batch_tokens: Most padded tokens (rows x longest) in one batch.

    Returns:
        Batches of indices into ``lengths``; every index appears exactly once.
    """
    if max_batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("max_batch_size and max_batch_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= max_batch_size or longest * (len(current) + 1) > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
