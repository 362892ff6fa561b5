"""Dynamic batching: merge concurrent requests into token-budgeted batches run by model worker threads.

Concurrency model:

* The asyncio event loop (uvicorn's) only parses and validates requests. :meth:`DynamicBatcher.submit`
  appends a job (texts, role, an ``asyncio.Future``) to a queue guarded by a ``threading.Condition`` and
  returns at once; the handler awaits the future, so thousands of requests can wait without a thread each.
* Worker threads (``workers``, one by default) share the model. A free worker tokenizes new jobs (one
  worker at a time: Hugging Face fast tokenizers raise "Already borrowed" when two threads use one at
  once), picks the role of the oldest job and takes queued texts of that role in arrival order (splitting
  big requests), up to a window of ``window_batches * max_batch_size`` texts. It sorts the window by
  length and runs it as forward passes of at most ``max_batch_size`` texts and ``max_batch_tokens`` padded
  tokens, exactly as offline ``encode`` plans its batches, and after each pass resolves the futures of the
  jobs whose last row it held, with one ``loop.call_soon_threadsafe`` per event loop.
* When more than one worker pays, on CPU: with one, the model stands idle while a pass's answers go out
  and the clients' next requests come in (6-11 ms per pass for 32 one-text clients), and torch's idle
  OpenMP threads spin through that gap. Two workers with one torch thread each overlap one's gap with the
  other's pass, and two single-threaded passes of 16 texts ran as fast as one two-threaded pass of 32 (437
  against 426 texts/s on 2 cores). On the 2-core box that gave 7% more texts/s with 8 texts per request but
  2% fewer with 1 (docs/performance.md), so one worker stays the default. A worker takes at most its fair
  part of the texts in flight and hands free workers the rest, so one big request runs on all of them and
  closed-loop cohorts stay equal. On GPU one worker is right: a second pass would only queue behind the
  first and double activation memory.
* While the model runs, new requests queue up, so under load every batch is as full as the queue allows.
  ``max_wait_s`` only holds back a batch that is not yet full, counted from when its oldest request arrived
  or the worker's last window ended, whichever is later: once a worker is free, its batch waits at most
  that long. After a window the worker expects the clients it just answered to send again (a closed loop,
  as with a fixed pool of callers), so it stops waiting as soon as as many texts are queued as the window
  took (plus those that were already waiting when its answers went out, see ``_claim``), rather than only
  at a full batch. A lone client sending one request after another thus never waits for company. Without
  this, N closed-loop clients on one worker split into two cohorts that take turns, each pass holding
  about N/2 texts, and on one two-threaded worker small passes are slow: a pass of 16 short texts ran at
  360 texts/s, one of 32 at 420 (32 clients with one text each: 0.60 of offline ``encode`` before, 0.66-0.69
  after; see docs/performance.md). With two workers each keeps the cohort it had. Work that arrives faster
  than the model runs (the queue already holds a full batch) never waits.
* Admission control: the queue holds at most ``max_queue_texts`` texts; beyond that :meth:`submit` raises
  :class:`QueueFullError` immediately (the server answers 429) rather than letting latency grow without
  bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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

# A worker expects the clients of its last window back if their first text comes within this many max_wait_s.
RETURN_WINDOWS = 2
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


@dataclass(eq=False)
class _Worker:
    """One worker thread's view of the closed loop: its window and the clients it answered."""

    last_done: float = float("-inf")  # when its last window finished
    cutoff: float = float("-inf")  # when the first answers counted in ``returning`` went out
    returning: int | None = None  # texts answered since it last took texts (their clients may send again)
    running: bool = False  # it holds a window
    window: int = 0  # texts of its current window whose answers have not gone out
    waiting_for: int | None = None  # queued texts that wake it while it waits, or None if it does not wait


class DynamicBatcher:
    """Queue plus worker threads (one by default) that batch embedding requests (see the module docstring)."""

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
        workers: int = 1,
    ) -> None:
        """Create a stopped batcher; the worker starts on :meth:`start` or the first :meth:`submit`.

        Args:
            model: Tokenizes and encodes; only the workers call it, one at a time for ``tokenize`` (and
                ``count_tokens``) but concurrently for ``encode_ids`` when ``workers`` > 1.
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
            workers: Worker threads, each running its own forward passes on the shared model (see the module
                docstring for when more than one pays).
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
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
        self._workers = [_Worker() for _ in range(workers)]
        self._wake_at: float = math.inf  # queued texts at which a submit wakes the waiting workers (_sleep)
        self._tokenizing = threading.Lock()  # one worker tokenizes at a time: the tokenizer is not thread-safe
        self._stopping = False
        self._threads: list[threading.Thread] = []

    @property
    def workers(self) -> int:
        """How many worker threads run forward passes."""
        return len(self._workers)

    @property
    def alive(self) -> bool:
        """Whether the worker threads are running (or not yet started, which :meth:`submit` fixes)."""
        return not self._stopping and all(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        with self._cond:
            if self._threads or self._stopping:
                return
            for index, worker in enumerate(self._workers):
                name = f"piccolo-embed-batcher-{index}"
                self._threads.append(threading.Thread(target=self._work, args=(worker,), name=name, daemon=True))
            for thread in self._threads:
                thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, fail queued jobs with :class:`BatcherClosedError`, and join the worker."""
        with self._cond:
            self._stopping = True
            for job in self._queue:
                job.settle(error=BatcherClosedError("the server is shutting down"))
            self._queue.clear()
            self._pending = 0
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

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
                self._cond.notify_all()
        if not self._threads:
            self.start()
        return job.future

    def _work(self, me: _Worker) -> None:
        while self._wait_for_work(me):
            with self._tokenizing:
                self._prepare(self._untokenized())
            parts = self._take(me)
            if not parts:
                continue
            try:
                self._execute(me, parts)
            finally:
                self._expect_back(me)
        log.debug("batcher worker stopped")

    def _expect_back(self, me: _Worker) -> None:
        """After a window: the worker's next batch waits (within ``max_wait_s``) for its clients to come back."""
        with self._cond:
            me.running = False
            me.last_done = time.monotonic()

    def _target(self, me: _Worker) -> int:
        """Under the lock: queued texts worth a batch now: a full one, or right after a pass its clients back."""
        if self._pending >= self.max_batch_size:  # a full batch waits: skip counting the claims (a queue walk)
            return self.max_batch_size
        own = self._claim(me)
        return self.max_batch_size if own is None else min(self.max_batch_size, own)

    def _claim(self, me: _Worker) -> int | None:
        """Under the lock: the texts ``me`` waits for, or ``None`` when it expects nobody back.

        A worker claims the texts it has answered since it last took texts (``returning``): their clients
        will send again. The first in line also claims the texts that were already waiting when its answers
        went out, but not those queued since, which may be its own clients back already (counted twice, the
        batch would wait for texts that never come until ``max_wait_s`` ran out). Only the first claims them,
        so with several workers no text is claimed twice and each waits for as many texts as it answered.
        """
        return next((claim for worker, claim in self._line() if worker is me), None)

    def _line(self) -> list[tuple[_Worker, int]]:
        """Under the lock: the workers expecting texts (earliest answers first) and how many each claims."""
        line = [(worker, worker.returning or 0) for worker in self._expecting()]
        if line:
            first, returning = line[0]
            line[0] = (first, returning + sum(j.size - j.cursor for j in self._queue if j.enqueued < first.cutoff))
        return line

    def _expecting(self) -> list[_Worker]:
        """Under the lock: workers expecting the clients of their window back, earliest answers first.

        A worker expects its clients from the moment their answers go out (while it may still run the
        window's other passes) until it takes its next window, or until the oldest queued text came more
        than ``RETURN_WINDOWS * max_wait_s`` after those answers or the window's end: its clients were not
        sending again at once (an idle spell), so a batch waits for company again. The allowance is wider
        than ``max_wait_s`` because, while another worker's pass holds a core, the first returning text took
        over 5 ms in one window in ten (32 one-text clients on 2 cores); it cannot delay a batch, only let it
        start before its deadline.
        """
        first = self._queue[0].enqueued if self._queue else time.monotonic()
        window = RETURN_WINDOWS * self.max_wait_s
        line = [w for w in self._workers if w.returning is not None and first - max(w.cutoff, w.last_done) <= window]
        return sorted(line, key=lambda worker: worker.cutoff)

    def _wait_for_work(self, me: _Worker) -> bool:
        """Block until a batch is worth forming; ``False`` means stop.

        While it waits for a batch to fill, only the submit that reaches a waiting worker's target wakes the
        workers (``_wake_at``) rather than every submit, each of which made a worker take the GIL from the
        event loop just to count and sleep again. The gain is too small for whole benchmark runs to resolve; a
        test checks that the completing submit still wakes it.
        """
        with self._cond:
            while not self._queue and not self._stopping:
                self._sleep(me, 1)
            if self._stopping:
                return False
            deadline = max(self._queue[0].enqueued, me.last_done) + self.max_wait_s
            while not self._stopping and self._pending < (target := self._target(me)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._sleep(me, target, remaining)
            return not self._stopping

    def _sleep(self, me: _Worker, target: int, timeout: float | None = None) -> None:
        """Under the lock: wait for a notify (or ``timeout``) after asking to be woken at ``target`` texts."""
        me.waiting_for = target
        self._wake_at = min(w.waiting_for for w in self._workers if w.waiting_for is not None)
        self._cond.wait(timeout)
        me.waiting_for = None
        waiting = [w.waiting_for for w in self._workers if w.waiting_for is not None]
        self._wake_at = min(waiting, default=math.inf)

    def _untokenized(self) -> list[_Job]:
        """Queued jobs that still need token ids (call holding ``_tokenizing``, so no other worker takes them)."""
        with self._cond:
            return [job for job in self._queue if job.ids is None and not job.failed]

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

    def _take(self, me: _Worker) -> list[_Part]:
        """Under the lock: drop dead jobs, then take this worker's share of the oldest job's role."""
        with self._cond:
            self._purge()
            free = [w for w in self._workers if w is not me and not w.running and w.returning is None]
            parts = self._fill(self._queue[0].role, self._share(me)) if self._queue else []
            self._queue = deque(job for job in self._queue if job.cursor < job.size)
            self._pending -= sum(part.stop - part.start for part in parts)
            if parts or me.returning == 0:  # a hand-over that found nothing left expects nothing more
                me.running, me.returning = bool(parts), None
                me.window = sum(part.stop - part.start for part in parts)
            if parts and self._pending and free:
                self._hand_over(free)
            if self.observer is not None:
                self.observer.queue_depth(self._pending)
            return parts

    def _share(self, me: _Worker) -> int:
        """Under the lock: how many texts the taking worker may take, leaving the other workers their part.

        One worker takes up to ``window_texts``, but with several no more than its fair part of all texts in
        flight: claimed (``_claim``), queued unclaimed, or in other workers' passes. So a big request runs on
        all free workers at once, closed-loop cohorts keep equal sizes, and cohorts that came out unequal even
        out instead of one worker running big passes while another idles.
        """
        claimed = sum(claim for _, claim in self._line())
        in_passes = sum(worker.window for worker in self._workers if worker is not me)
        fair = -(-(max(claimed, self._pending) + in_passes) // len(self._workers))
        return min(self.window_texts, self._whole_batches(max(1, fair)))

    def _whole_batches(self, texts: int) -> int:
        """``texts`` rounded up to whole batches once over one batch, so a share does not end in a small pass."""
        if texts <= self.max_batch_size:
            return texts
        return -(-texts // self.max_batch_size) * self.max_batch_size

    def _hand_over(self, free: list[_Worker]) -> None:
        """Under the lock: let free workers take the texts left to them now rather than wait for company.

        The batch they belong to was due (its target reached or its deadline passed); each free worker now
        claims the texts waiting, as if it had just answered them, and is woken.
        """
        now = time.monotonic()
        for worker in free:
            worker.returning, worker.last_done, worker.cutoff = 0, now, now
        self._cond.notify_all()

    def _purge(self) -> None:
        """Under the lock: drop failed jobs and those whose request gave up (cancelled future)."""
        for job in self._queue:
            if job.failed or job.future.done():  # reading done() off the loop thread is a benign race
                self._pending -= job.size - job.cursor
                job.cursor = job.size
        self._queue = deque(job for job in self._queue if job.cursor < job.size)

    def _fill(self, role: Role, room: int) -> list[_Part]:
        """Texts of ``role`` in arrival order, up to ``room`` (a big request may be split)."""
        parts: list[_Part] = []
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

    def _execute(self, me: _Worker, parts: list[_Part]) -> None:
        """Run a window: length-sorted forward passes, each request settled as soon as its last row is done.

        Sorting the whole window (as offline ``encode`` sorts its input) keeps padding low when many texts
        wait; with few texts in flight the window is a single pass.
        """
        rows = [(part.job, i) for part in parts for i in range(part.start, part.stop)]
        lengths = [len(job.ids[i]) for job, i in rows]  # type: ignore[index]
        started = time.monotonic()
        waits = [started - part.job.enqueued for part in parts if part.start == 0]
        plan = plan_batches(lengths, max_batch_size=self.max_batch_size, max_batch_tokens=self.max_batch_tokens)
        for batch in plan:
            members = [rows[k] for k in batch if not rows[k][0].failed and not rows[k][0].future.done()]
            self._answered(me, len(batch) - len(members))  # rows of failed or abandoned requests
            if members:
                self._forward(me, members, waits)
                waits = []  # a request's queue wait is counted once, at its window's first pass

    def _forward(self, me: _Worker, members: list[tuple[_Job, int]], waits: list[float]) -> None:
        """One forward pass over ``members`` (job, row) pairs; failures go to the jobs involved."""
        ids = [job.ids[i] for job, i in members]  # type: ignore[index]
        started = time.monotonic()
        try:
            vectors = self.model.encode_ids(
                ids, batch_size=self.max_batch_size, max_batch_tokens=self.max_batch_tokens, show_progress=False
            )
        except Exception as err:  # any model failure must reach the waiting requests, not kill the worker
            log.exception("batch of %d texts failed", len(ids))
            self._answered(me, len(members))
            self._fail({id(job): job for job, _ in members}.values(), err)
            return
        if self.observer is not None:
            self.observer.batch_done(
                texts=len(ids),
                tokens=sum(len(row) for row in ids),
                requests=len({id(job) for job, _ in members}),
                queue_waits=waits,
                seconds=time.monotonic() - started,
            )
        finished = [job for (job, i), vector in zip(members, vectors, strict=True) if _deliver(job, i, vector)]
        self._answered(me, len(members))  # before the answers go out: later requests may be their clients'
        _settle_together(finished)

    def _answered(self, me: _Worker, texts: int) -> None:
        """Before ``texts`` answers go out: the worker now expects their clients back (they may send at once)."""
        if texts:
            with self._cond:
                me.window -= texts
                if me.returning is None:
                    me.returning, me.cutoff = 0, time.monotonic()
                me.returning += texts

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
