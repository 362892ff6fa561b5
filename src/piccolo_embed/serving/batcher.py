"""Dynamic batching: merge concurrent requests into token-budgeted forward passes on one model thread.

Three parts, modelled on text-embeddings-inference's queue (one owner of the queue state, one function that
picks the next batch) and infinity's batch handler (a small, separately tested batch selection):

* :func:`piccolo_embed.serving.policy.decide`, a pure function of what waits, the budgets and ``now``: "run N
  texts of role R" or "wait until T". It holds every batching rule and is tested with a fake clock.
* :class:`RequestQueue`, the one owner of the queue state: admission (``max_queue_texts``, else
  :class:`QueueFullError` and a 429), dropping abandoned requests (a cancelled future: the client left), and
  taking texts; its lock and condition guard nothing else. Submitters never wait on the model or tokenizer.
* :class:`DynamicBatcher`, the thin runner: the event loop submits jobs (:meth:`~DynamicBatcher.submit`) and
  awaits their futures; one worker thread tokenizes new jobs (one tokenizer call per role), asks the queue for the
  next batch, sorts the texts taken by length and runs them as forward passes of at most ``max_batch_size``
  texts and ``max_batch_tokens`` padded tokens (as offline ``encode`` plans them), and resolves each job's
  future as soon as its last row is done, with one ``call_soon_threadsafe`` per event loop.

One model thread: several workers were not a clear gain for their complexity (numbers in
docs/performance.md), and on GPU a second pass would only queue behind the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from piccolo_embed.inference.batching import plan_batches
from piccolo_embed.serving.policy import Budgets, LastWindow, Run, Snapshot, Wait, Waiting, decide
from piccolo_embed.types import Role

log = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[str], Role], list[int]]
Clock = Callable[[], float]


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


class NonFiniteOutputError(ArithmeticError):
    """The model produced NaN or infinite values for a request's texts (HTTP 500); no vectors are sent."""


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
    arrived: float
    ids: list[list[int]] | None = None  # token ids, set by the worker before the job can be taken
    taken: int = 0  # rows handed to windows so far
    done_rows: int = 0  # rows whose vectors are in ``out``
    out: np.ndarray | None = None
    failed: bool = False  # answered with an error; its remaining rows are skipped

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def abandoned(self) -> bool:
        """Failed, or the request gave up (cancelled or timed out); reading ``done()`` off its loop is benign."""
        return self.failed or self.future.done()

    def fail(self, error: BaseException) -> None:
        """Answer the job with ``error`` (from any thread)."""
        self.failed = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle, [(self.future, error)])


def _settle(outcomes: list[tuple[asyncio.Future[Embedded], Embedded | BaseException]]) -> None:
    """On the event loop: resolve each future with its result or error, unless its request gave up already."""
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


@dataclass(frozen=True)
class _Part:
    job: _Job
    start: int
    stop: int


class RequestQueue:
    """The one owner of the waiting jobs: admission, abandonment, and handing out batches as policy decides."""

    def __init__(self, budgets: Budgets, max_queue_texts: int, clock: Clock) -> None:
        """Create an open, empty queue."""
        self.budgets = budgets
        self.max_queue_texts = max_queue_texts
        self.clock = clock
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._texts = 0  # rows of queued jobs not yet taken
        self._wake_at = 1  # queued texts at which a put wakes the worker
        self._accepting = True  # False once draining or closed
        self._closed = False  # the worker should stop

    @property
    def texts(self) -> int:
        """Texts waiting."""
        return self._texts

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def put(self, job: _Job) -> None:
        """Admit ``job``, or raise :class:`BatcherClosedError` / :class:`QueueFullError`."""
        with self._cond:
            if not self._accepting:
                raise BatcherClosedError("the server is shutting down")
            if self._texts + job.size > self.max_queue_texts:
                self._drop_abandoned()  # requests that gave up while the model was busy free their places now
            if self._texts + job.size > self.max_queue_texts:
                raise QueueFullError(f"{self._texts} texts are waiting (limit {self.max_queue_texts}); retry shortly")
            self._jobs.append(job)
            self._texts += job.size
            if self._texts >= self._wake_at:
                self._cond.notify()

    def untokenized(self) -> list[_Job]:
        """Jobs still needing token ids (only the worker tokenizes, so no one else takes them meanwhile)."""
        with self._cond:
            return [job for job in self._jobs if job.ids is None and not job.failed]

    def next_batch(self, last: LastWindow | None) -> list[_Part] | None:
        """Block until a batch is due and take it; ``[]``: new jobs need tokens first; ``None``: closed."""
        with self._cond:
            while not self._closed:
                if any(job.ids is None and not job.failed for job in self._jobs):
                    return []
                self._drop_abandoned()
                decision = decide(self._snapshot(last), self.budgets, self.clock())
                if isinstance(decision, Run):
                    return self._take(decision)
                self._sleep(decision)
            return None

    def stop_accepting(self) -> None:
        """Refuse new jobs; queued ones still run."""
        with self._cond:
            self._accepting = False

    def fail_all(self, error: BaseException) -> None:
        """Answer every queued job with ``error`` and empty the queue."""
        with self._cond:
            for job in self._jobs:
                job.fail(error)
            self._jobs.clear()
            self._texts = 0

    def close(self) -> None:
        """Refuse new jobs and wake the worker to stop."""
        with self._cond:
            self._accepting, self._closed = False, True
            self._cond.notify_all()

    def _snapshot(self, last: LastWindow | None) -> Snapshot:
        """Under the lock: per role, the arrival time and token count of each waiting text, oldest first."""
        arrivals: dict[Role, list[float]] = {}
        tokens: dict[Role, list[int]] = {}
        for job in self._jobs:
            rows = job.ids[job.taken :]  # type: ignore[index]
            arrivals.setdefault(job.role, []).extend([job.arrived] * len(rows))
            tokens.setdefault(job.role, []).extend(len(row) for row in rows)
        return Snapshot([Waiting(role, arrivals[role], tokens[role]) for role in arrivals], last)

    def _sleep(self, wait: Wait) -> None:
        """Under the lock: wait for ``wait.texts`` queued texts, ``wait.until``, or a close."""
        self._wake_at = wait.texts
        timeout = wait.until - self.clock()
        self._cond.wait(None if timeout == float("inf") else max(0.0, timeout))
        self._wake_at = 1

    def _take(self, run: Run) -> list[_Part]:
        """Under the lock: the oldest ``run.texts`` texts of ``run.role`` (a big request may be split)."""
        parts: list[_Part] = []
        room = run.texts
        for job in self._jobs:
            if room == 0:
                break
            if job.role is run.role:
                start = job.taken
                job.taken = min(job.size, start + room)
                room -= job.taken - start
                parts.append(_Part(job, start, job.taken))
        self._texts -= run.texts - room
        self._jobs = deque(job for job in self._jobs if job.taken < job.size)
        return parts

    def _drop_abandoned(self) -> None:
        """Under the lock: forget jobs that failed or whose request gave up."""
        for job in self._jobs:
            if job.abandoned:
                self._texts -= job.size - job.taken
        self._jobs = deque(job for job in self._jobs if not job.abandoned)


class DynamicBatcher:
    """The runner: a worker thread that tokenizes, takes batches from the queue, runs them and answers."""

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
        clock: Clock = time.monotonic,
    ) -> None:
        """Create a stopped batcher; the worker starts on :meth:`start` or the first :meth:`submit`.

        Args:
            model: Tokenizes and encodes; only the worker thread calls it.
            max_batch_size: Most texts per forward pass.
            max_batch_tokens: Most padded tokens (texts x longest) per forward pass.
            max_wait_s: Longest a not-yet-full batch waits for more requests.
            max_queue_texts: Most texts waiting; more get :class:`QueueFullError`.
            window_batches: The worker takes up to this many batches' worth of texts at once and sorts them by
                length before splitting them into passes, so padding stays near offline ``encode``'s.
            count_tokens: Untruncated token counts, needed only for ``truncate=False`` jobs.
            observer: Metrics sink.
            clock: Monotonic seconds (a fake one in tests).
        """
        self.model = model
        self.budgets = Budgets(max_batch_size, max_batch_tokens, max_wait_s, max(1, window_batches) * max_batch_size)
        self.queue = RequestQueue(self.budgets, max_queue_texts, clock)
        self.count_tokens = count_tokens
        self.observer = observer
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """Whether the worker runs (or has not started yet, which :meth:`submit` fixes)."""
        return not self.queue.closed and (self._thread is None or self._thread.is_alive())

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._start_lock:
            if self._thread is None and not self.queue.closed:
                self._thread = threading.Thread(target=self._work, name="piccolo-embed-batcher", daemon=True)
                self._thread.start()

    def submit(self, texts: Sequence[str], role: Role, *, truncate: bool = True) -> asyncio.Future[Embedded]:
        """Queue ``texts`` and return a future for their vectors; call from the event loop.

        Raises:
            QueueFullError: Admitting the texts would exceed ``max_queue_texts``.
            BatcherClosedError: The batcher is draining or closed.
        """
        if not texts:
            raise ValueError("submit needs at least one text")
        if not truncate and self.count_tokens is None:
            raise ValueError("truncate=False needs a count_tokens function")
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), Role.coerce(role), truncate, loop.create_future(), loop, self.clock())
        self.queue.put(job)
        if self._thread is None:
            self.start()
        return job.future

    def drain(self, seconds: float) -> None:
        """Refuse new work now; what is still queued after ``seconds`` gets :class:`BatcherClosedError`."""
        self.queue.stop_accepting()
        timer = threading.Timer(seconds, self.queue.fail_all, args=(BatcherClosedError("the server is shutting down"),))
        timer.daemon = True
        timer.start()

    def close(self, timeout: float = 30.0) -> None:
        """Fail queued jobs with :class:`BatcherClosedError` and join the worker."""
        self.queue.close()
        self.queue.fail_all(BatcherClosedError("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        last: LastWindow | None = None
        while (parts := self.queue.next_batch(last)) is not None:
            if not parts:
                self._tokenize(self.queue.untokenized())
                continue
            last = self._run_window(parts)
            if self.observer is not None:
                self.observer.queue_depth(self.queue.texts)
        log.debug("batcher worker stopped")

    def _tokenize(self, jobs: list[_Job]) -> None:
        """Give new jobs their token ids: one tokenizer call per role; if it fails, each job alone.

        One call for many jobs: with the starter model a call costs about 50 us plus 13 us per short text.
        """
        by_role: dict[Role, list[_Job]] = {}
        for job in jobs:
            by_role.setdefault(job.role, []).append(job)
        for role, group in by_role.items():
            try:
                ids = self.model.tokenize([text for job in group for text in job.texts], role)
            except (ValueError, TypeError):
                for job in group:
                    self._accept(job, None)
                continue
            start = 0
            for job in group:
                self._accept(job, ids[start : start + job.size])
                start += job.size

    def _accept(self, job: _Job, ids: list[list[int]] | None) -> None:
        """Set the job's ids (tokenizing it alone if ``ids`` is None), or fail it if invalid."""
        try:
            ids = self.model.tokenize(job.texts, job.role) if ids is None else ids
            if not job.truncate:
                _check_lengths(self.count_tokens(job.texts, job.role), [len(row) for row in ids])  # type: ignore[misc]
        except (ValueError, TypeError) as err:
            job.fail(err)
            return
        job.ids = ids

    def _run_window(self, parts: list[_Part]) -> LastWindow:
        """Run the taken texts as length-sorted passes; each request is answered once its last row is done."""
        rows = [(part.job, i) for part in parts for i in range(part.start, part.stop)]
        lengths = [len(job.ids[i]) for job, i in rows]  # type: ignore[index]
        started = self.clock()
        waits = [started - part.job.arrived for part in parts if part.start == 0]
        answers_at = None
        for batch in plan_batches(
            lengths, max_batch_size=self.budgets.max_batch_size, max_batch_tokens=self.budgets.max_batch_tokens
        ):
            members = [rows[k] for k in batch if not rows[k][0].abandoned]  # the client left: skip its rows
            if members:
                sent = self._forward(members, waits)
                waits = []  # a request's queue wait is counted once, at its window's first pass
                answers_at = answers_at or sent
        return LastWindow(len(rows), answers_at or started, self.clock())

    def _forward(self, members: list[tuple[_Job, int]], waits: list[float]) -> float:
        """One forward pass over ``members`` (job, row) pairs; return when its answers went out.

        The time is read before the answers go out: a client may send again before this thread runs on.
        """
        ids = [job.ids[i] for job, i in members]  # type: ignore[index]
        started = self.clock()
        try:
            vectors = self.model.encode_ids(
                ids, batch_size=len(ids), max_batch_tokens=self.budgets.max_batch_tokens, show_progress=False
            )
        except Exception as err:  # any model failure must reach the waiting requests, not kill the worker
            log.exception("batch of %d texts failed", len(ids))
            sent = self.clock()
            for job in {id(job): job for job, _ in members}.values():
                job.fail(err)
            return sent
        members, vectors = _finite(members, vectors)
        if self.observer is not None:
            self.observer.batch_done(
                texts=len(ids),
                tokens=sum(len(row) for row in ids),
                requests=len({id(job) for job, _ in members}),
                queue_waits=waits,
                seconds=self.clock() - started,
            )
        finished = [job for (job, i), vector in zip(members, vectors, strict=True) if _deliver(job, i, vector)]
        sent = self.clock()
        _answer(finished)
        return sent


def _finite(members: list[tuple[_Job, int]], vectors: np.ndarray) -> tuple[list[tuple[_Job, int]], np.ndarray]:
    """Fail the jobs with a non-finite row (never send NaN); return the other rows."""
    finite = np.isfinite(vectors).all(axis=1)
    if finite.all():
        return members, vectors
    bad = {id(job): job for (job, _), ok in zip(members, finite, strict=True) if not ok}
    log.error("the model produced non-finite vectors for %d request(s)", len(bad))
    for job in bad.values():
        job.fail(NonFiniteOutputError("the model produced NaN or infinite values for this input"))
    keep = [k for k, (job, _) in enumerate(members) if id(job) not in bad]
    return [members[k] for k in keep], vectors[keep]


def _deliver(job: _Job, row: int, vector: np.ndarray) -> bool:
    """Store one row of ``job``'s result; return whether that was its last row."""
    if job.out is None:
        job.out = np.empty((job.size, vector.shape[0]), dtype=np.float32)
    job.out[row] = vector
    job.done_rows += 1
    return job.done_rows == job.size


def _answer(jobs: Sequence[_Job]) -> None:
    """Resolve finished jobs with one ``call_soon_threadsafe`` per event loop rather than one per job.

    Why: each call wakes the event loop, which then wants the GIL while this thread still holds it for the
    next delivery; after a pass of 32 one-text requests that was 32 wake-ups and GIL hand-overs instead of one.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Embedded], Embedded | BaseException]]] = {}
    for job in jobs:
        result = Embedded(job.out, [len(row) for row in job.ids or []])  # type: ignore[arg-type]
        by_loop.setdefault(job.loop, []).append((job.future, result))
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, outcomes)


def _check_lengths(full: Sequence[int], truncated: Sequence[int]) -> None:
    for index, (tokens, kept) in enumerate(zip(full, truncated, strict=True)):
        if tokens > kept:
            raise InputTooLongError(index, tokens, kept)
