"""Dynamic batching: merge concurrent requests into token-budgeted batches run by one model worker thread.

Concurrency model:

* The asyncio event loop (uvicorn's) only parses and validates requests. :meth:`DynamicBatcher.submit`
  appends a job (texts, role, an ``asyncio.Future``) to a queue guarded by a ``threading.Condition`` and
  returns at once; the handler awaits the future, so thousands of requests can wait without a thread each.
* One worker thread owns the model *and its tokenizer*: it tokenizes new jobs, picks the role of the oldest
  job and takes queued texts of that role in arrival order (splitting big requests), up to a window of
  ``window_batches * max_batch_size`` texts. It sorts the window by length and runs it as forward passes of
  at most ``max_batch_size`` texts and ``max_batch_tokens`` padded tokens, exactly as offline ``encode``
  plans its batches, and after each pass resolves the futures of the jobs whose last row it held, with
  one ``loop.call_soon_threadsafe`` per event loop. Only one forward pass runs at a time: on CPU a second
  one would fight the first for cores and memory bandwidth, on GPU it would double activation memory,
  and Hugging Face fast tokenizers raise "Already borrowed" when two threads use one at once.
* While the model runs, new requests queue up, so under load every batch is as full as the queue allows.
  ``max_wait_s`` only holds back a batch that is not yet full, counted from when its oldest request arrived
  or the last forward pass ended, whichever is later: once the model is free, a batch waits at most that
  long. Right after a pass (within ``max_wait_s`` of its end) the worker expects the clients it just
  answered to send again (a closed loop, as with a fixed pool of callers), so it stops waiting as soon as
  as many texts are queued as the pass took plus those that were already waiting when its answers went
  out, rather than only at a full batch. A lone client sending one request after another thus never
  waits for company. Without this, N closed-loop clients split into two cohorts that take turns, each
  pass holding about N/2 texts, and small passes are slow: on CPU a pass of 16 short texts ran at 360
  texts/s, one of 32 at 420 (32 clients with one text each: 0.60 of offline ``encode`` before, 0.66-0.69
  after; see docs/performance.md). Work that arrives faster than the model runs (the queue already holds
  a full batch) never waits.
* Admission control: the queue holds at most ``max_queue_texts`` texts; beyond that :meth:`submit` raises
  :class:`QueueFullError` immediately (the server answers 429) rather than letting latency grow without
  bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from piccolo_embed.inference.batching import plan_batches
from piccolo_embed.types import Role

log = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[str], Role], list[int]]


class BatchModel(Protocol):
    """What the batcher needs from a model; :class:`~piccolo_embed.Embedder` satisfies it."""

    def tokenize(self, texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        """Token ids per text, with the role's prefix and truncation."""
        ...

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Unit-norm vectors, one row per id row from :meth:`tokenize`, in input order."""
        ...


class BatchObserver(Protocol):
    """Receives one call per forward pass (metrics); must be cheap and thread-safe."""

    def batch_done(
        self, *, texts: int, tokens: int, requests: int, queue_waits: Sequence[float], seconds: float
    ) -> None:
        """Record a finished batch."""
        ...

    def queue_depth(self, texts: int) -> None:
        """Record how many texts wait."""
        ...


class QueueFullError(RuntimeError):
    """The queue cannot take the request now; retry later (HTTP 429)."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down (HTTP 503)."""


class InputTooLongError(ValueError):
    """A text has more tokens than its role allows and the request asked not to truncate (HTTP 413)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"text {index} has {tokens} tokens, more than the limit of {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True)
class Embedded:
    """A request's result: vectors in input order and each text's token count (as fed to the model)."""

    vectors: np.ndarray
    token_counts: list[int]


@dataclass(eq=False)
class _Job:
    texts: list[str]
    role: Role
    truncate: bool
    future: asyncio.Future[Embedded]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    ids: list[list[int]] | None = None  # set by the worker's tokenizer call
    cursor: int = 0  # next row to hand to a batch
    done_rows: int = 0
    out: np.ndarray | None = None
    failed: bool = False

    @property
    def size(self) -> int:
        return len(self.texts)

    def settle(self, result: Embedded | None = None, error: BaseException | None = None) -> None:
        """Resolve the future from the worker thread; a request that gave up (cancelled) is left alone."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future[Embedded], result: Embedded | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class _Part:
    job: _Job
    start: int
    stop: int


class DynamicBatcher:
    """Queue plus single worker thread that batches embedding requests (see the module docstring)."""

    def __init__(
        self,
        model: BatchModel,
        *,
        max_batch_size: int = 64,
        max_batch_tokens: int = 16384,
        max_wait_s: float = 0.005,
        max_queue_texts: int = 4096,
        window_batches: int = 4,
        count_tokens: TokenCounter | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """Create a stopped batcher; the worker starts on :meth:`start` or the first :meth:`submit`.

        Args:
            model: Tokenizes and encodes; only the worker thread calls it.
            max_batch_size: Most texts per forward pass.
            max_batch_tokens: Most padded tokens (texts x longest) per forward pass.
            max_wait_s: Longest a not-yet-full batch waits for more requests.
            max_queue_texts: Most texts waiting; more get :class:`QueueFullError`.
            window_batches: The worker takes up to this many batches' worth of queued texts at once and sorts
                them by length before splitting them into forward passes, so padding stays near offline
                ``encode``'s; larger windows pad less but make the window's last requests wait longer.
            count_tokens: Untruncated token counts (prefix and special tokens included), needed only for
                ``truncate=False`` jobs.
            observer: Metrics sink.
        """
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self.window_texts = max(1, window_batches) * max_batch_size
        self.count_tokens = count_tokens
        self.observer = observer
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._pending = 0  # texts in the queue not yet handed to a batch
        self._last_done = float("-inf")  # when the last window finished
        self._expected = 0  # texts expected back right after a window: its own plus those waiting at its end
        self._wake_at = 1  # queued texts at which a submit wakes the waiting worker (see _wait_for_work)
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running (or not yet started, which :meth:`submit` fixes)."""
        return not self._stopping and (self._thread is None or self._thread.is_alive())

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=self._work, name="piccolo-embed-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, fail queued jobs with :class:`BatcherClosedError`, and join the worker."""
        with self._cond:
            self._stopping = True
            for job in self._queue:
                job.settle(error=BatcherClosedError("the server is shutting down"))
            self._queue.clear()
            self._pending = 0
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, texts: Sequence[str], role: Role, *, truncate: bool = True) -> asyncio.Future[Embedded]:
        """Queue ``texts`` and return a future for their vectors; call from the event loop.

        Raises:
            QueueFullError: Admitting the texts would exceed ``max_queue_texts``.
            BatcherClosedError: :meth:`close` was called.
        """
        if not texts:
            raise ValueError("submit needs at least one text")
        if not truncate and self.count_tokens is None:
            raise ValueError("truncate=False needs a count_tokens function")
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), Role.coerce(role), truncate, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise BatcherClosedError("the server is shutting down")
            if self._pending + job.size > self.max_queue_texts:
                self._purge()  # requests that gave up while the model was busy free their places now
            if self._pending + job.size > self.max_queue_texts:
                raise QueueFullError(f"{self._pending} texts are waiting (limit {self.max_queue_texts}); retry shortly")
            self._queue.append(job)
            self._pending += job.size
            if self._pending >= self._wake_at:
                self._cond.notify()
        if self._thread is None:
            self.start()
        return job.future

    def _work(self) -> None:
        while (fresh := self._wait_for_work()) is not None:
            self._prepare(fresh)
            parts = self._take()
            if parts:
                answered = self._execute(parts)
                self._expect_back(sum(part.stop - part.start for part in parts), answered)
        log.debug("batcher worker stopped")

    def _expect_back(self, texts: int, answered: float | None) -> None:
        """After a window of ``texts``: the next batch waits (within ``max_wait_s``) for them to come back.

        It also counts the texts that were already waiting when the window's first answers went out
        (``answered``), but not those queued since: a client may have sent its next text before this runs,
        and counting it twice would hold the next batch until ``max_wait_s`` ran out.
        """
        with self._cond:
            self._last_done = time.monotonic()
            cutoff = self._last_done if answered is None else answered
            self._expected = texts + sum(job.size - job.cursor for job in self._queue if job.enqueued < cutoff)

    def _wait_for_work(self) -> list[_Job] | None:
        """Block until a batch is worth forming; return the jobs not yet tokenized, or ``None`` to stop.

        While it waits for a batch to fill, only the submit that reaches the target wakes it (``_wake_at``)
        rather than every submit, each of which made the worker take the GIL from the event loop just to
        count and sleep again. The gain is too small for whole benchmark runs to resolve; a test checks
        that the completing submit still wakes it.
        """
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = max(self._queue[0].enqueued, self._last_done) + self.max_wait_s
            target = self.max_batch_size
            if time.monotonic() - self._last_done <= self.max_wait_s:  # right after a pass: expect its clients back
                target = min(target, self._expected)
            self._wake_at = target
            while not self._stopping and self._pending < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._wake_at = 1
            if self._stopping:
                return None
            return [job for job in self._queue if job.ids is None]

    def _prepare(self, jobs: list[_Job]) -> None:
        """Tokenize new jobs outside the lock (submitters never wait on tokenization).

        One tokenizer call per role covers all new jobs: with the starter model a call costs about 50 us
        plus 13 us per short text, so 32 one-text requests cost 2.1 ms when tokenized one by one and 0.5 ms
        together. If the joint call fails, each job is tokenized alone so only the bad one fails.
        """
        by_role: dict[Role, list[_Job]] = {}
        for job in jobs:
            by_role.setdefault(job.role, []).append(job)
        for role, group in by_role.items():
            try:
                ids = self.model.tokenize([text for job in group for text in job.texts], role)
            except (ValueError, TypeError):
                for job in group:
                    self._accept(job)
                continue
            start = 0
            for job in group:
                self._accept(job, ids[start : start + job.size])
                start += job.size

    def _accept(self, job: _Job, ids: list[list[int]] | None = None) -> None:
        """Give a job its token ids (tokenizing it if ``ids`` is None) or fail it if invalid."""
        try:
            ids = self.model.tokenize(job.texts, job.role) if ids is None else ids
            if not job.truncate:
                _check_lengths(self.count_tokens(job.texts, job.role), [len(row) for row in ids])  # type: ignore[misc]
        except (ValueError, TypeError) as err:
            job.failed = True
            job.settle(error=err)
            return
        job.ids = ids

    def _take(self) -> list[_Part]:
        """Under the lock: drop dead jobs, then take a window of texts of the oldest job's role."""
        with self._cond:
            self._purge()
            parts = self._fill(self._queue[0].role) if self._queue else []
            self._queue = deque(job for job in self._queue if job.cursor < job.size)
            self._pending -= sum(part.stop - part.start for part in parts)
            if self.observer is not None:
                self.observer.queue_depth(self._pending)
            return parts

    def _purge(self) -> None:
        """Under the lock: drop failed jobs and those whose request gave up (cancelled future)."""
        for job in self._queue:
            if job.failed or job.future.done():  # reading done() off the loop thread is a benign race
                self._pending -= job.size - job.cursor
                job.cursor = job.size
        self._queue = deque(job for job in self._queue if job.cursor < job.size)

    def _fill(self, role: Role) -> list[_Part]:
        """Texts of ``role`` in arrival order, up to ``window_texts`` (a big request may be split)."""
        parts: list[_Part] = []
        room = self.window_texts
        for job in self._queue:
            if room == 0:
                break
            if job.role is not role or job.ids is None:
                continue
            start = job.cursor
            job.cursor = min(job.size, start + room)
            room -= job.cursor - start
            parts.append(_Part(job, start, job.cursor))
        return parts

    def _execute(self, parts: list[_Part]) -> float | None:
        """Run a window: length-sorted forward passes, each request settled as soon as its last row is done.

        Sorting the whole window (as offline ``encode`` sorts its input) keeps padding low when many texts
        wait; with few texts in flight the window is a single pass.

        Returns:
            When the window's first answers went out, or ``None`` if no pass succeeded.
        """
        answered = None
        rows = [(part.job, i) for part in parts for i in range(part.start, part.stop)]
        lengths = [len(job.ids[i]) for job, i in rows]  # type: ignore[index]
        started = time.monotonic()
        waits = [started - part.job.enqueued for part in parts if part.start == 0]
        plan = plan_batches(lengths, max_batch_size=self.max_batch_size, max_batch_tokens=self.max_batch_tokens)
        for batch in plan:
            members = [rows[k] for k in batch if not rows[k][0].failed and not rows[k][0].future.done()]
            if members:
                settled_at = self._forward(members, waits)
                answered = settled_at if answered is None else answered
                waits = []  # a request's queue wait is counted once, at its window's first pass
        return answered

    def _forward(self, members: list[tuple[_Job, int]], waits: list[float]) -> float | None:
        """One forward pass over ``members`` (job, row) pairs; failures go to the jobs involved.

        Returns:
            When its answers went out, or ``None`` if the pass failed.
        """
        ids = [job.ids[i] for job, i in members]  # type: ignore[index]
        started = time.monotonic()
        try:
            vectors = self.model.encode_ids(
                ids, batch_size=self.max_batch_size, max_batch_tokens=self.max_batch_tokens, show_progress=False
            )
        except Exception as err:  # any model failure must reach the waiting requests, not kill the worker
            log.exception("batch of %d texts failed", len(ids))
            self._fail({id(job): job for job, _ in members}.values(), err)
            return None
        if self.observer is not None:
            self.observer.batch_done(
                texts=len(ids),
                tokens=sum(len(row) for row in ids),
                requests=len({id(job) for job, _ in members}),
                queue_waits=waits,
                seconds=time.monotonic() - started,
            )
        finished = [job for (job, i), vector in zip(members, vectors, strict=True) if _deliver(job, i, vector)]
        settled_at = time.monotonic()  # taken before the answers go out: later requests may be their clients'
        _settle_together(finished)
        return settled_at

    def _fail(self, jobs: Iterable[_Job], err: Exception) -> None:
        with self._cond:
            for job in jobs:
                job.failed = True
                job.settle(error=err)


def _deliver(job: _Job, row: int, vector: np.ndarray) -> bool:
    """Store one row of ``job``'s result; return whether that was its last row."""
    if job.out is None:
        job.out = np.empty((job.size, vector.shape[0]), dtype=np.float32)
    job.out[row] = vector
    job.done_rows += 1
    return job.done_rows == job.size


def _settle_together(jobs: Sequence[_Job]) -> None:
    """Resolve finished jobs with one ``call_soon_threadsafe`` per event loop rather than one per job.

    Why: each call wakes the event loop, which then wants the GIL while this thread still holds it for the
    next delivery; after a pass of 32 one-text requests that was 32 wake-ups and GIL hand-overs instead of one.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Embedded], Embedded]]] = {}
    for job in jobs:
        result = Embedded(job.out, [len(row) for row in job.ids or []])  # type: ignore[arg-type]
        by_loop.setdefault(job.loop, []).append((job.future, result))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[asyncio.Future[Embedded], Embedded]]) -> None:
    for future, result in settled:
        _settle(future, result, None)


def _check_lengths(full: Sequence[int], truncated: Sequence[int]) -> None:
    for index, (tokens, kept) in enumerate(zip(full, truncated, strict=True)):
        if tokens > kept:
            raise InputTooLongError(index, tokens, kept)
