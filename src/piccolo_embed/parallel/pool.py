"""Encode with several worker processes on one machine: one model per GPU, or CPU threads split between processes.

sentence-transformers has ``start_multi_process_pool``, but its workers run ``SentenceTransformer.encode``: no
per-role prefix and max length, none of our runners (padding-free CPU, AMX bf16, ONNX) and no length-sorted
sharding across workers. This pool keeps our :class:`~piccolo_embed.Embedder` inside each worker and only
distributes work: texts are sorted by length, cut into shards of similar length, pulled by whichever worker is
free (so a slow device does not hold the others back), and put back in input order.

The pool is itself an :class:`~piccolo_embed.protocols.Encoder`, so ``build_index``, ``mine_file`` and the
``encode`` command use it unchanged.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch.multiprocessing as mp

from piccolo_embed.errors import WorkerError
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.types import Role, RoleSpec

if TYPE_CHECKING:
    from types import TracebackType

    from piccolo_embed.protocols import Encoder

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 256  # texts per task: small enough to balance workers, large enough for full batches
POLL_SECONDS = 1.0  # how often a waiting pool checks that its workers are still alive

# Builds a worker's encoder for a device string ("cpu", "cuda:1"); must be picklable (spawned processes).
EncoderLoader = Callable[[str], "Encoder"]


@dataclass(frozen=True)
class EmbedderLoader:
    """Loads :meth:`Embedder.from_pretrained` in a worker; the fields are its keyword arguments.

    Attributes:
        model: Model spec (directory, hub id or ``starter``).
        name: Name the encoder reports (recorded in index fingerprints); defaults to ``model``.
        options: Other ``from_pretrained`` keyword arguments (roles, engine, precision, batch sizes).
    """

    model: str
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, device: str) -> Encoder:
        """Load the model on ``device`` (``cpu`` or ``cuda:N``) and wrap it without progress bars."""
        import torch

        from piccolo_embed.inference.embedder import Embedder

        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # Embedder takes "cuda", which then means this device
        embedder = Embedder.from_pretrained(self.model, device=device.partition(":")[0], **self.options)
        return QuietEmbedder(embedder, self.name or self.model)


class QuietEmbedder:
    """An :class:`Embedder` seen through the Encoder protocol, without per-call progress bars.

    Index and mining code encode chunk after chunk and log their own progress; a bar per chunk would bury it.
    """

    def __init__(self, embedder: Any, name: str) -> None:
        self.embedder = embedder
        self.name = name
        self.roles = embedder.roles

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embedder.dim)

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        """:meth:`Embedder.encode` with the progress bar off."""
        return self.embedder.encode(texts, role, show_progress=False)


def parse_devices(devices: str | None, processes: int | None) -> list[str]:
    """Worker devices from ``--devices cuda:0,cuda:1`` or ``--processes N`` (N CPU workers).

    Raises:
        ValueError: Both or a malformed device are given; names the bad entry.
    """
    if devices and processes:
        raise ValueError("give --devices or --processes, not both")
    if processes is not None:
        if processes < 1:
            raise ValueError(f"--processes must be positive, got {processes}")
        return ["cpu"] * processes
    if not devices:
        return ["cpu"]
    out = [entry.strip().lower() for entry in devices.split(",") if entry.strip()]
    for entry in out:
        kind, _, index = entry.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
            raise ValueError(f"--devices: {entry!r} is not 'cpu' or 'cuda:N'")
    return [f"{entry}:0" if entry == "cuda" else entry for entry in out]


def length_sorted_shards(texts: Sequence[str], shard_size: int) -> list[np.ndarray]:
    """Row indices grouped into shards of similar length, longest first (stable, so ties keep input order)."""
    order = np.argsort([-len(text) for text in texts], kind="stable")
    return [order[start : start + shard_size] for start in range(0, len(order), shard_size)]


def _next_task(tasks: Any, parent: int) -> Any:
    """The next task (``None``: stop); exits at once when the parent died, which a killed parent cannot say."""
    while True:
        try:
            return tasks.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:
                os._exit(0)  # nobody reads our results: skip flushing them, which would block for ever


def _worker(rank: int, loader: EncoderLoader, device: str, threads: int, tasks: Any, results: Any) -> None:
    """Worker body: load once, then encode shards until a ``None`` task; every failure is reported, not raised."""
    import torch

    parent = os.getppid()
    torch.set_num_threads(threads)
    try:
        encoder = loader(device)
        roles = getattr(encoder, "roles", None) or {}
        probe = np.asarray(encoder.encode(["probe"], role=None))
        results.put(("ready", rank, (probe.shape[1], dict(roles), getattr(encoder, "name", ""))))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        return
    while (task := _next_task(tasks, parent)) is not None:
        task_id, texts, role = task  # task_id: (call, shard)
        try:
            vectors = np.asarray(encoder.encode(texts, role=role), dtype=np.float32)
            results.put(("done", task_id, vectors))
        except Exception:
            results.put(("error", rank, traceback.format_exc()))
    results.put(("exit", rank, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


class EncoderPool:
    """One encoder per worker process; an :class:`~piccolo_embed.protocols.Encoder` for the whole pool.

    Args:
        loader: Builds a worker's encoder for its device (e.g. :class:`EmbedderLoader`); picklable.
        devices: One worker per entry (``cpu`` or ``cuda:N``).
        threads: torch threads per worker (default: this process's threads split evenly between CPU workers).
        shard_size: Texts per task.

    Use as a context manager (or call :meth:`close`), so the workers are shut down.
    """

    def __init__(
        self,
        loader: EncoderLoader,
        devices: Sequence[str],
        *,
        threads: int | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> None:
        if not devices:
            raise ValueError("an encoder pool needs at least one device")
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        import torch

        self.devices = list(devices)
        self.shard_size = shard_size
        self.threads = threads or max(1, torch.get_num_threads() // len(self.devices))
        self.worker_peak_rss: dict[int, int] = {}
        self._calls = 0
        context = mp.get_context("spawn")  # fork would copy this process's threads and CUDA state
        self._tasks, self._results = context.Queue(), context.Queue()
        self._processes = [
            context.Process(
                target=_worker,
                args=(rank, loader, device, self.threads, self._tasks, self._results),
                daemon=True,
                name=f"piccolo-encode-{rank}",
            )
            for rank, device in enumerate(self.devices)
        ]
        for process in self._processes:
            process.start()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        log.info("encoder pool: %d workers on %s, %d threads each", len(self.devices), self.devices, self.threads)

    def _wait_ready(self) -> None:
        ready = {}
        while len(ready) < len(self._processes):
            _, rank, info = self._next("ready")
            ready[rank] = info
        (self.dim, roles, self.name), *others = (ready[rank] for rank in sorted(ready))
        if any(other[0] != self.dim for other in others):
            raise WorkerError(f"workers loaded models of different dimensions: {[r[0] for r in ready.values()]}")
        self.roles: dict[Role, RoleSpec] = roles

    def _next(self, expected: str) -> tuple[str, int, Any]:
        """The next message from a worker; raises if a worker reports an error or has died."""
        while True:
            try:
                kind, key, payload = self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                dead = [(p.name, p.exitcode) for p in self._processes if not p.is_alive()]
                if dead:
                    raise WorkerError(f"encoder worker(s) died: {dead} (exit codes; out of memory?)") from None
                continue
            if kind == "error":
                raise WorkerError(f"encoder worker {key} ({self.devices[key]}) failed:\n{payload}")
            if kind == "exit":
                self.worker_peak_rss[key] = payload
                continue
            if kind != expected:
                raise WorkerError(f"unexpected {kind!r} message from the encoder pool")
            return kind, key, payload

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        """Embed ``texts`` across the workers; rows come back in input order, as from one encoder."""
        texts = validate_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        shards = length_sorted_shards(texts, self.shard_size)
        self._calls += 1  # results of an earlier call that failed half-way must not land in this one
        for shard, rows in enumerate(shards):
            self._tasks.put(((self._calls, shard), [texts[row] for row in rows], role))
        pending = set(range(len(shards)))
        while pending:
            _, (call, shard), vectors = self._next("done")
            if call == self._calls:
                out[shards[shard]] = vectors
                pending.discard(shard)
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers (each finishes its current task) and collect their peak memory."""
        for process in self._processes:
            if process.is_alive():
                self._tasks.put(None)
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join()
        _drain_exits(self._results, self.worker_peak_rss)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _drain_exits(results: Any, peaks: dict[int, int]) -> None:
    """Read what stopped workers left in the result queue: their peak RSS (other messages are stale)."""
    while True:
        try:
            kind, key, payload = results.get(timeout=0.1)
        except (queue.Empty, OSError, ValueError):
            return
        if kind == "exit":
            peaks[key] = payload


def main_peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if os.name == "posix" else 0
