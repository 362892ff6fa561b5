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
    Embedded,
    InputTooLongError,
    NonFiniteOutputError,
    QueueFullError,
)
from piccolo_embed.types import Role

T = TypeVar("T")
ROLE_CODE = {Role.QUERY: 1.0, Role.PASSAGE: 2.0, Role.NONE: 3.0}


class FakeModel:
    """Ids = [role, code points..., 0] (characters + 2 tokens); vector = (characters, first code point, role code).

    The ids carry text and role, so ``encode_ids`` can check it got what ``tokenize`` made; ``gate`` holds the
    model, ``fail_on`` makes a forward pass fail and ``reject`` makes tokenization fail.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Role]] = []
        self.tokenize_calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a forward pass has started
        self.fail_on: str | None = None
        self.reject: str | None = None

    def tokenize(self, texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        self.tokenize_calls.append(list(texts))
        if self.reject is not None and self.reject in texts:
            raise ValueError(f"cannot tokenize {self.reject!r}")
        code = list(ROLE_CODE).index(Role.coerce(role)) + 1
        return [[code, *map(ord, text), 0] for text in texts]

    def encode_ids(self, ids: Sequence[Sequence[int]], **_: object) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        texts = ["".join(map(chr, row[1:-1])) for row in ids]
        (role,) = {list(ROLE_CODE)[row[0] - 1] for row in ids}  # one role per forward pass
        self.calls.append((texts, role))
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


def _run_clients(batcher: DynamicBatcher, *clients: Coroutine[Any, Any, None]) -> float:
    """Run ``clients`` to the end, close ``batcher``, and return the seconds it took."""

    async def scenario() -> float:
        started = time.monotonic()
        await asyncio.gather(*clients)
        return time.monotonic() - started

    try:
        return run(scenario())
    finally:
        batcher.close()


async def _client(batcher: DynamicBatcher, text: str, rounds: int, *, start: float = 0.0, think: float = 0.0) -> None:
    """A closed-loop client: one text per request, the next sent ``think`` seconds after the answer."""
    await asyncio.sleep(start)
    for _ in range(rounds):
        await batcher.submit([text], Role.NONE)
        await asyncio.sleep(think)


def test_concurrent_requests_merge_into_one_batch_per_role() -> None:
    model = FakeModel()
    arriving = [True]  # the clock stands at 0 while the jobs arrive, so all of them come within max_wait however
    # slow the box; then it runs on (from far past max_wait), as batches wait from the previous pass's end too

    def clock() -> float:
        return 0.0 if arriving[0] else time.monotonic()

    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.05, clock=clock)
    jobs = [(["甲" * (i + 1)], Role.QUERY) for i in range(5)] + [(["乙", "丙丙"], Role.PASSAGE)]

    async def arrive_then_wait_out_max_wait() -> list:
        futures = [batcher.submit(texts, role) for texts, role in jobs]
        arriving[0] = False
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        results = run(arrive_then_wait_out_max_wait())
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
    full = model.tokenize
    model.tokenize = lambda texts, role=None: [r if len(r) <= 5 else [*r[:4], 0] for r in full(texts, role)]  # at 5
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
    while batcher.queue.texts:
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


def test_waiting_requests_share_one_tokenizer_call_and_a_bad_one_fails_alone() -> None:
    model = FakeModel()
    model.reject = "坏"
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.0)

    async def scenario() -> list:
        running = await _block_worker(batcher, model)
        waiting = [batcher.submit(texts, Role.QUERY) for texts in (["甲"], ["坏"], ["乙", "丙"])]
        waiting.append(batcher.submit(["丁"], Role.PASSAGE))
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(running, *waiting, return_exceptions=True)

    try:
        _, good, bad, pair, passage = run(scenario())
    finally:
        batcher.close()
    assert isinstance(bad, ValueError)
    np.testing.assert_array_equal(good.vectors, [expected("甲", Role.QUERY)])
    np.testing.assert_array_equal(pair.vectors, [expected(t, Role.QUERY) for t in ("乙", "丙")])
    np.testing.assert_array_equal(passage.vectors, [expected("丁", Role.PASSAGE)])
    assert pair.token_counts == [3, 3]
    # one call for the first request, one joint call per role for the rest, then each query job alone
    assert model.tokenize_calls == [["一"], ["甲", "坏", "乙", "丙"], ["甲"], ["坏"], ["乙", "丙"], ["丁"]]


def test_closed_loop_clients_do_not_wait_for_the_deadline() -> None:
    """End to end: 8 clients sending again as soon as answered merge into passes of 8 without waiting 2 s."""
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=2.0)
    elapsed = _run_clients(batcher, *(_client(batcher, chr(0x4E00 + i), rounds=4) for i in range(8)))
    assert elapsed < 3.5  # the first batch waits out its 2 s deadline (nobody expected yet), the others do not
    assert [len(texts) for texts, _ in model.calls] == [8, 8, 8, 8]


def test_drain_runs_queued_work_then_answers_the_rest_closed() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0)

    async def scenario() -> list[object]:
        running = await _block_worker(batcher, model)
        queued = [batcher.submit([text], Role.NONE) for text in "二三"]
        batcher.drain(0.05)
        with pytest.raises(BatcherClosedError):
            batcher.submit(["四"], Role.NONE)
        await asyncio.sleep(0.2)
        model.gate.set()
        return await asyncio.gather(running, *queued, return_exceptions=True)

    try:
        first, *rest = run(scenario())
    finally:
        batcher.close()
    assert isinstance(first, Embedded)
    assert all(isinstance(result, BatcherClosedError) for result in rest)


def test_non_finite_rows_fail_only_their_request() -> None:
    model = FakeModel()
    encode_ids = model.encode_ids

    def with_nan(ids: Sequence[Sequence[int]], **kwargs: object) -> np.ndarray:
        vectors = encode_ids(ids, **kwargs)
        vectors[[chr(row[1]) == "坏" for row in ids]] = np.nan
        return vectors

    model.encode_ids = with_nan  # type: ignore[method-assign]
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.05)
    try:
        good, bad = run(_gather_jobs(batcher, [(["好"], Role.NONE), (["好", "坏"], Role.NONE)]))
    finally:
        batcher.close()
    assert isinstance(good, Embedded) and np.isfinite(good.vectors).all()
    assert isinstance(bad, NonFiniteOutputError)
