"""The dynamic batcher against a fake model: merging, role grouping, budgets, admission, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from piccolo_embed.serving.batcher import (
    BatcherClosedError,
    DynamicBatcher,
    InputTooLongError,
    QueueFullError,
)
from piccolo_embed.types import Role

T = TypeVar("T")
ROLE_CODE = {Role.QUERY: 1.0, Role.PASSAGE: 2.0, Role.NONE: 3.0}


class FakeModel:
    """Token count = characters + 2; vector = (characters, first code point, role code); optional gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Role]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: str | None = None

    def tokenize(self, texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        return [[0] * (len(text) + 2) for text in texts]

    def encode(self, texts: Sequence[str], role: Role | str | None = None, **_: object) -> np.ndarray:
        self.gate.wait(10)
        role = Role.coerce(role)
        self.calls.append((list(texts), role))
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("model exploded")
        return np.array([expected(text, role) for text in texts], dtype=np.float32)


def expected(text: str, role: Role) -> list[float]:
    return [float(len(text)), float(ord(text[0])) if text else 0.0, ROLE_CODE[role]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _gather_jobs(batcher: DynamicBatcher, jobs: list[tuple[list[str], Role]]) -> list:
    futures = [batcher.submit(texts, role) for texts, role in jobs]
    return await asyncio.gather(*futures, return_exceptions=True)


def test_concurrent_requests_merge_into_one_batch_per_role() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.05)
    jobs = [(["甲" * (i + 1)], Role.QUERY) for i in range(5)] + [(["乙", "丙丙"], Role.PASSAGE)]
    try:
        results = run(_gather_jobs(batcher, jobs))
    finally:
        batcher.close()
    for (texts, role), result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result.vectors, np.array([expected(t, role) for t in texts]))
        assert result.token_counts == [len(t) + 2 for t in texts]
    # all five query requests arrived within max_wait, so they shared one forward pass
    assert sorted((len(texts), role) for texts, role in model.calls) == [(2, Role.PASSAGE), (5, Role.QUERY)]


def test_big_request_is_split_across_batches_and_reassembled_in_order() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.0)
    texts = [chr(0x4E00 + i) * (1 + i % 3) for i in range(10)]
    try:
        (result,) = run(_gather_jobs(batcher, [(texts, Role.NONE)]))
    finally:
        batcher.close()
    np.testing.assert_array_equal(result.vectors, np.array([expected(t, Role.NONE) for t in texts]))
    assert [len(call[0]) for call in model.calls] == [4, 4, 2]


def test_token_budget_limits_padded_batch_size() -> None:
    model = FakeModel()
    # 10 texts of 8 tokens each; 32 padded tokens fit 4 per batch
    batcher = DynamicBatcher(model, max_batch_size=64, max_batch_tokens=32, max_wait_s=0.0)
    try:
        run(_gather_jobs(batcher, [(["一二三四五六"] * 10, Role.NONE)]))
    finally:
        batcher.close()
    assert [len(call[0]) for call in model.calls] == [4, 4, 2]


def test_queue_full_is_refused_immediately() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0, max_queue_texts=2)

    async def scenario() -> tuple[object, float]:
        first = await _block_worker(batcher, model)
        queued = batcher.submit(["二", "三"], Role.NONE)
        started = time.monotonic()
        with pytest.raises(QueueFullError):
            batcher.submit(["四"], Role.NONE)
        refused_after = time.monotonic() - started
        model.gate.set()
        return await asyncio.gather(first, queued), refused_after

    try:
        results, refused_after = run(scenario())
    finally:
        batcher.close()
    assert refused_after < 0.1
    assert [r.vectors.shape[0] for r in results] == [1, 2]


def test_model_failure_reaches_callers_and_worker_survives() -> None:
    model = FakeModel()
    model.fail_on = "坏"
    batcher = DynamicBatcher(model, max_wait_s=0.0)

    async def scenario() -> tuple[list, object]:
        failed = await asyncio.gather(batcher.submit(["坏"], Role.NONE), return_exceptions=True)
        ok = await batcher.submit(["好"], Role.NONE)
        return failed, ok

    try:
        failed, ok = run(scenario())
    finally:
        batcher.close()
    assert isinstance(failed[0], RuntimeError)
    np.testing.assert_array_equal(ok.vectors, [expected("好", Role.NONE)])


def test_truncate_false_reports_index_and_token_count() -> None:
    model = FakeModel()
    model.tokenize = lambda texts, role=None: [[0] * min(len(t) + 2, 5) for t in texts]  # truncates at 5
    batcher = DynamicBatcher(model, max_wait_s=0.0, count_tokens=lambda texts, role: [len(t) + 2 for t in texts])

    async def scenario() -> list:
        return await asyncio.gather(
            batcher.submit(["一", "一二三四五六七"], Role.NONE, truncate=False),
            batcher.submit(["一二三四五六七"], Role.NONE, truncate=True),
            return_exceptions=True,
        )

    try:
        too_long, truncated = run(scenario())
    finally:
        batcher.close()
    assert isinstance(too_long, InputTooLongError)
    assert (too_long.index, too_long.tokens, too_long.limit) == (1, 9, 5)
    assert truncated.token_counts == [5]


async def _block_worker(batcher: DynamicBatcher, model: FakeModel) -> asyncio.Future:
    """Submit one text and return once the worker is stuck in the (gated) model with it."""
    model.gate.clear()
    running = batcher.submit(["一"], Role.NONE)
    while batcher._pending:
        await asyncio.sleep(0.005)
    return running


def test_cancelled_request_is_skipped() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0)

    async def scenario() -> list:
        running = await _block_worker(batcher, model)
        abandoned = batcher.submit(["二"], Role.NONE)
        waiting = batcher.submit(["三"], Role.NONE)
        abandoned.cancel()  # as when a client disconnects or times out
        model.gate.set()
        return await asyncio.gather(running, waiting)

    try:
        results = run(scenario())
    finally:
        batcher.close()
    assert [r.vectors.shape for r in results] == [(1, 3), (1, 3)]
    assert [call[0] for call in model.calls] == [["一"], ["三"]]


def test_close_fails_waiting_jobs_and_refuses_new_ones() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0)

    async def scenario() -> list:
        running = await _block_worker(batcher, model)
        waiting = batcher.submit(["三"], Role.NONE)
        closer = asyncio.get_running_loop().run_in_executor(None, batcher.close)
        await asyncio.sleep(0.05)
        model.gate.set()  # the batch in flight still completes
        await closer
        with pytest.raises(BatcherClosedError):
            batcher.submit(["四"], Role.NONE)
        return await asyncio.gather(running, waiting, return_exceptions=True)

    running, waiting = run(scenario())
    assert running.vectors.shape == (1, 3)
    assert isinstance(waiting, BatcherClosedError)
    assert not batcher.alive


def test_waiting_texts_are_sorted_by_length_into_passes_like_offline_encode() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=2, max_wait_s=0.0, window_batches=4)
    lengths = [1, 5, 2, 6, 3, 4]

    async def scenario() -> list:
        running = await _block_worker(batcher, model)
        waiting = [batcher.submit(["字" * n], Role.NONE) for n in lengths]
        model.gate.set()
        return await asyncio.gather(running, *waiting)

    try:
        results = run(scenario())
    finally:
        batcher.close()
    assert [[len(t) for t in texts] for texts, _ in model.calls[1:]] == [[6, 5], [4, 3], [2, 1]]
    assert [int(r.vectors[0, 0]) for r in results[1:]] == lengths
