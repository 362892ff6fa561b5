"""Prometheus metrics written by hand (text exposition format 0.0.4), so the server needs no extra dependency.

Three small types cover what we export: counters, gauges and histograms, each optionally labelled. The
request path and the batching worker threads update them, so every update takes one short lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _format_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    if not pairs:
        return ""
    escaped = (value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n") for _, value in pairs)
    return "{" + ",".join(f'{name}="{value}"' for (name, _), value in zip(pairs, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        self.name = name
        self.help_text = help_text
        self._lock = lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count, per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, labels: dict[str, str] | None = None) -> float:
        """Current value of one series (0 if never incremented)."""
        with self._lock:
            return self._values.get(_labels(labels), 0.0)

    def render(self) -> list[str]:
        """Exposition lines, header included."""
        lines = self.header()
        lines += [f"{self.name}{_format_labels(k)} {_number(v)}" for k, v in sorted(self._values.items())]
        return lines


class Gauge(Counter):
    """A value that goes up and down (unlabelled use only)."""

    kind = "gauge"

    def set(self, value: float) -> None:
        """Replace the current value."""
        with self._lock:
            self._values[()] = value


class Histogram(_Metric):
    """Cumulative-bucket histogram, as Prometheus expects (``_bucket``, ``_sum``, ``_count``)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, lock: threading.Lock, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, lock)
        self.buckets = (*sorted(buckets), math.inf)
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, labels: dict[str, str] | None = None) -> None:
        """Record one observation."""
        key = _labels(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, labels: dict[str, str] | None = None) -> int:
        """Number of observations of one series."""
        with self._lock:
            counts = self._counts.get(_labels(labels))
            return counts[-1] if counts else 0

    def total(self, labels: dict[str, str] | None = None) -> float:
        """Sum of observations of one series."""
        with self._lock:
            return self._sums.get(_labels(labels), 0.0)

    def render(self) -> list[str]:
        """Exposition lines, header included."""
        lines = self.header()
        for key, counts in sorted(self._counts.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                lines.append(f"{self.name}_bucket{_format_labels(key, ('le', _number(bound)))} {count}")
            lines.append(f"{self.name}_sum{_format_labels(key)} {_number(self._sums[key])}")
            lines.append(f"{self.name}_count{_format_labels(key)} {counts[-1]}")
        return lines


_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Every metric the server exports; also the batcher's observer (:meth:`batch_done`)."""

    def __init__(self, prefix: str = "piccolo_embed") -> None:
        self._lock = threading.Lock()
        lock = self._lock
        self.requests = Counter(
            f"{prefix}_requests_total",
            "HTTP requests by route and status code (status cancelled: the client left before its answer).",
            lock,
        )
        self.refused = Counter(
            f"{prefix}_connections_refused_total",
            "Connections closed before the app saw a request, by reason (head too large or late, evicted, ...).",
            lock,
        )
        self.errors = Counter(f"{prefix}_errors_total", "Error responses by route and error code.", lock)
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds", "Time from request start to response, by route.", lock, _SECONDS
        )
        self.texts = Counter(f"{prefix}_texts_total", "Texts embedded.", lock)
        self.tokens = Counter(f"{prefix}_tokens_total", "Tokens fed to the model (after truncation).", lock)
        self.batch_size = Histogram(f"{prefix}_batch_size", "Texts per forward pass.", lock, _SIZES)
        self.batch_requests = Histogram(
            f"{prefix}_batch_requests", "Requests merged into one forward pass.", lock, _SIZES
        )
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds", "Time a request waited before its first batch ran.", lock, _SECONDS
        )
        self.forward = Histogram(f"{prefix}_forward_seconds", "Model time per batch.", lock, _SECONDS)
        self.queue_texts = Gauge(f"{prefix}_queue_texts", "Texts waiting for the model.", lock)

    def batch_done(
        self, *, texts: int, tokens: int, requests: int, queue_waits: Sequence[float], seconds: float
    ) -> None:
        """Record one forward pass of the batching worker."""
        self.batch_size.observe(texts)
        self.batch_requests.observe(requests)
        self.forward.observe(seconds)
        self.texts.inc(texts)
        self.tokens.inc(tokens)
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def queue_depth(self, texts: int) -> None:
        """Record the number of texts waiting."""
        self.queue_texts.set(texts)

    def render(self) -> str:
        """The whole exposition, ready to serve with :data:`CONTENT_TYPE`."""
        metrics = (
            self.requests,
            self.refused,
            self.errors,
            self.latency,
            self.texts,
            self.tokens,
            self.batch_size,
            self.batch_requests,
            self.queue_wait,
            self.forward,
            self.queue_texts,
        )
        with self._lock:
            lines = [line for metric in metrics for line in metric.render()]
        return "\n".join(lines) + "\n"
