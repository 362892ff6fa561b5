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


def _slow_passes(model: FakeModel, seconds: float) -> None:
    """Make every forward pass of ``model`` take ``seconds`` (the other worker's clients return meanwhile)."""
    encode_ids = model.encode_ids

    def slow(ids: Sequence[Sequence[int]], **kwargs: object) -> np.ndarray:
        time.sleep(seconds)
        return encode_ids(ids, **kwargs)

    model.encode_ids = slow  # type: ignore[method-assign]


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


def test_worker_waits_for_the_clients_it_just_answered_instead_of_running_half_batches() -> None:
    """Two clients are in the model while two more queue; afterwards all four share every pass.

    Without waiting for the answered ones, the two queued clients (older than ``max_wait_s`` by then) would
    run alone and the four clients would keep taking turns in pairs.
    """
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.2)

    async def client(text: str) -> None:
        for _ in range(3):
            await batcher.submit([text], Role.NONE)
            await asyncio.sleep(0.02)  # the client's own work and network before its next request

    async def scenario() -> None:
        model.gate.clear()
        early = [asyncio.ensure_future(client(text)) for text in "甲乙"]
        while not model.entered.is_set():  # the worker has taken them into the (gated) model
            await asyncio.sleep(0.005)
        late = [asyncio.ensure_future(client(text)) for text in "丙丁"]
        await asyncio.sleep(0.4)  # the late ones are now older than max_wait_s
        model.gate.set()
        await asyncio.gather(*early, *late)

    try:
        run(scenario())
    finally:
        batcher.close()
    assert [sorted(texts) for texts, _ in model.calls] == [
        ["乙", "甲"],
        ["丁", "丙", "乙", "甲"],
        ["丁", "丙", "乙", "甲"],
        ["丁", "丙"],
    ]


def test_after_an_idle_spell_concurrent_requests_still_merge() -> None:
    """The expectation of returning clients lapses after ``max_wait_s``; then a batch waits for company again."""
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.1)

    async def scenario() -> None:
        await batcher.submit(["一"], Role.NONE)  # a window of one text: one text would be "expected back"
        await asyncio.sleep(0.3)
        first = batcher.submit(["二"], Role.NONE)
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher.submit(["三"], Role.NONE), batcher.submit(["四"], Role.NONE))

    try:
        run(scenario())
    finally:
        batcher.close()
    assert [texts for texts, _ in model.calls] == [["一"], ["二", "三", "四"]]


@pytest.mark.parametrize("late_bookkeeping", [False, True], ids=["prompt", "late"])
def test_the_submit_that_completes_the_expected_batch_wakes_the_worker(
    monkeypatch: pytest.MonkeyPatch, late_bookkeeping: bool
) -> None:
    """The worker waiting for returning clients starts when the last arrives, not when ``max_wait_s`` runs out.

    The worker sleeps through submits that leave the batch short (``_wake_at``); the one that completes it
    must still wake it. "late": the clients send again before the worker has noted the pass; their texts
    must not count twice (once as returning, once as already waiting), or the batch waits for texts that
    never come.
    """
    if late_bookkeeping:
        expect_back = DynamicBatcher._expect_back

        def late(self: DynamicBatcher, *args: Any) -> None:
            time.sleep(0.1)
            expect_back(self, *args)

        monkeypatch.setattr(DynamicBatcher, "_expect_back", late)
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=1.0)

    async def scenario() -> float:
        await asyncio.gather(batcher.submit(["甲"], Role.NONE), batcher.submit(["乙"], Role.NONE))
        first = batcher.submit(["甲"], Role.NONE)
        await asyncio.sleep(0.05)  # the worker has seen the first and waits for the second
        sent = time.monotonic()
        await asyncio.gather(first, batcher.submit(["乙"], Role.NONE))
        return time.monotonic() - sent

    try:
        waited = run(scenario())
    finally:
        batcher.close()
    assert [sorted(texts) for texts, _ in model.calls] == [["乙", "甲"], ["乙", "甲"]]
    assert waited < 0.5  # a missed wake-up, or texts counted twice, wait until the deadline: about 0.95 s


def test_two_workers_run_forward_passes_at_the_same_time() -> None:
    """With ``workers=2`` two concurrent requests run in two passes that overlap (one worker each)."""
    model = FakeModel()
    meeting = threading.Barrier(2, timeout=5)  # breaks unless both passes are inside the model together
    encode_ids = model.encode_ids

    def both_inside(ids: Sequence[Sequence[int]], **kwargs: object) -> np.ndarray:
        meeting.wait()
        return encode_ids(ids, **kwargs)

    model.encode_ids = both_inside  # type: ignore[method-assign]
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.05, workers=2)
    try:
        results = run(_gather_jobs(batcher, [(["甲"], Role.NONE), (["乙"], Role.NONE)]))
    finally:
        batcher.close()
    assert [r.vectors.tolist() for r in results] == [[expected("甲", Role.NONE)], [expected("乙", Role.NONE)]]
    assert sorted(texts for texts, _ in model.calls) == [["乙"], ["甲"]]


def test_a_big_request_is_shared_by_idle_workers_and_reassembled_in_order() -> None:
    model = FakeModel()
    threads: list[str] = []
    encode_ids = model.encode_ids
    meeting = threading.Barrier(2, timeout=5)  # each pass waits for one of the other worker

    def record_thread(ids: Sequence[Sequence[int]], **kwargs: object) -> np.ndarray:
        threads.append(threading.current_thread().name)
        meeting.wait()
        return encode_ids(ids, **kwargs)

    model.encode_ids = record_thread  # type: ignore[method-assign]
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.01, workers=2)
    texts = [chr(0x4E00 + i) for i in range(32)]
    try:
        (result,) = run(_gather_jobs(batcher, [(texts, Role.PASSAGE)]))
    finally:
        batcher.close()
    np.testing.assert_array_equal(result.vectors, [expected(t, Role.PASSAGE) for t in texts])
    assert sorted(len(call) for call, _ in model.calls) == [8, 8, 8, 8]
    assert sorted(set(threads)) == ["piccolo-embed-batcher-0", "piccolo-embed-batcher-1"]
    assert sorted(threads) == ["piccolo-embed-batcher-0"] * 2 + ["piccolo-embed-batcher-1"] * 2  # 16 texts each


def test_workers_never_tokenize_at_the_same_time() -> None:
    """Hugging Face fast tokenizers raise "Already borrowed" when two threads use one at once."""
    model = FakeModel()
    inside, most = 0, 0
    count = threading.Lock()
    tokenize = model.tokenize

    def slow_tokenize(texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        nonlocal inside, most
        with count:
            inside += 1
            most = max(most, inside)
        time.sleep(0.005)
        with count:
            inside -= 1
        return tokenize(texts, role)

    model.tokenize = slow_tokenize  # type: ignore[method-assign]
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.0, workers=3)

    async def scenario() -> None:
        for _ in range(10):
            await _gather_jobs(batcher, [([f"文{i}"], Role.NONE) for i in range(6)])

    try:
        run(scenario())
    finally:
        batcher.close()
    assert len(model.tokenize_calls) > 1
    assert most == 1


def test_two_workers_keep_their_closed_loop_cohorts_without_waiting_for_the_deadline() -> None:
    """Eight clients that send again at once split into two cohorts of four, one per worker, which take turns.

    Each worker waits only for the clients it answered, so no batch waits for ``max_wait_s`` (2 s here): a
    free worker left waiting for company, or one that counted an already-waiting text twice, would wait for
    texts that never come.
    """
    model = FakeModel()
    _slow_passes(model, 0.03)
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=2.0, workers=2)

    elapsed = _run_clients(  # two cohorts, the second arriving while the first is in the model
        batcher,
        *(_client(batcher, text, 8) for text in "甲乙丙丁"),
        *(_client(batcher, text, 8, start=0.01) for text in "子丑寅卯"),
    )
    assert elapsed < 1.5  # 8 rounds of 30 ms passes on two workers; one wait for the deadline takes 2 s
    assert sorted(len(texts) for texts, _ in model.calls)[2:] == [4] * 14  # after the start, cohorts of 4


def test_a_worker_does_not_claim_texts_that_another_worker_still_prepares() -> None:
    """Worker A's returning clients wait in the queue while A tokenizes them; B answers its own meanwhile.

    Only the first worker in line counts the texts already waiting when its answers went out. If B counted
    A's texts too, then after A took them B would wait for four texts that never come (its own clients
    think before sending again), until ``max_wait_s`` (2 s here). The passes' lengths differ, so over the
    rounds B's answers fall into A's tokenization at some point.
    """
    model = FakeModel()
    tokenize, encode_ids = model.tokenize, model.encode_ids

    def slow_tokenize(texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        time.sleep(0.015)
        return tokenize(texts, role)

    def uneven(ids: Sequence[Sequence[int]], **kwargs: object) -> np.ndarray:
        time.sleep(0.03 if chr(ids[0][1]) in "甲乙丙丁" else 0.045)
        return encode_ids(ids, **kwargs)

    model.tokenize, model.encode_ids = slow_tokenize, uneven  # type: ignore[method-assign]
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=2.0, workers=2)

    elapsed = _run_clients(
        batcher,
        *(_client(batcher, text, 8) for text in "甲乙丙丁"),
        *(_client(batcher, text, 8, think=0.03) for text in "子丑寅卯"),
    )
    assert elapsed < 1.8  # about 8 x 105 ms for the thinking clients; one wait for the deadline takes 2 s
    assert sorted(len(texts) for texts, _ in model.calls) == [4] * 16


def test_unequal_cohorts_even_out_between_two_workers() -> None:
    """One client starts alone; seven join while its pass runs. The two workers end up with four each.

    Without a cap at each worker's fair part of the texts in flight, the worker that expects its one client
    back also claims the seven already waiting, keeps all eight, and the other worker idles.
    """
    model = FakeModel()
    _slow_passes(model, 0.04)
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.05, workers=2)

    _run_clients(batcher, _client(batcher, "甲", 8), *(_client(batcher, t, 8, start=0.06) for t in "乙丙丁子丑寅卯"))
    sizes = [len(texts) for texts, _ in model.calls]
    # after a start that depends on timing, passes of four; the last holds what is left when the early one stops
    assert sizes[-7:-1] == [4] * 6, str(sizes)


def test_clients_that_think_a_little_longer_than_max_wait_are_still_expected_back() -> None:
    """Two clients think 1.5 x ``max_wait_s`` between requests; each round starts when both are back.

    A worker expects its clients back while the first of them returns within ``RETURN_WINDOWS`` x
    ``max_wait_s``; had the expectation lapsed at ``max_wait_s``, every round would wait for a full batch until
    its deadline, ``max_wait_s`` after the first text arrived.
    """
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.2)

    async def scenario() -> float:
        await asyncio.gather(batcher.submit(["甲"], Role.NONE), batcher.submit(["乙"], Role.NONE))
        started = time.monotonic()
        await asyncio.gather(_client(batcher, "甲", 5, think=0.3), _client(batcher, "乙", 5, think=0.3))
        return time.monotonic() - started

    try:
        elapsed = run(scenario())
    finally:
        batcher.close()
    assert [sorted(texts) for texts, _ in model.calls] == [["乙", "甲"]] * 6
    assert elapsed < 2.0  # 5 x 0.3 s of thinking; waiting for the deadline would add 0.2 s to rounds 2-5


def test_clients_answered_by_a_windows_first_pass_are_expected_from_that_moment() -> None:
    """A window of four runs as two passes of two; the first pass's clients are back before the window ends.

    A worker's claim starts when its answers go out, so those two texts count as its own returning clients
    and it starts the next window once all four are back. Had the claim started at the window's end, the two
    would also count as texts that were already waiting: it would wait for six until ``max_wait_s`` (1 s).
    """
    model = FakeModel()
    _slow_passes(model, 0.03)
    # one-character texts are 3 tokens: a budget of 6 padded tokens makes passes of two
    batcher = DynamicBatcher(model, max_batch_size=8, max_batch_tokens=6, max_wait_s=1.0)
    texts = "甲乙丙丁"

    async def scenario() -> float:
        await asyncio.gather(*(batcher.submit([text], Role.NONE) for text in texts))  # waits for the deadline
        started = time.monotonic()
        await asyncio.gather(*(_client(batcher, text, 6) for text in texts))
        return time.monotonic() - started

    try:
        elapsed = run(scenario())
    finally:
        batcher.close()
    assert [len(texts) for texts, _ in model.calls] == [2] * 14
    assert elapsed < 0.9  # 6 windows of two 30 ms passes; one wait for the deadline takes 1 s
