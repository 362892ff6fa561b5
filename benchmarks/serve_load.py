"""Load test of ``piccolo-embed serve``: N concurrent clients on loopback vs offline ``Embedder.encode``.

    python benchmarks/serve_load.py                      # starter, 32 clients, 20 s with 1 and with 8 texts/request
    python benchmarks/serve_load.py --model DIR --clients 32 --duration 20 --texts-per-request 1
    python benchmarks/serve_load.py --engine onnx-int8 --texts-per-request 8   # server and baseline on int8 ONNX
    python benchmarks/serve_load.py --threads 1          # the model on one core, HTTP and clients on the rest
    python benchmarks/serve_load.py --fastapi-only       # without serving/front.py's short path

The server runs in a child process (as in production); the clients are asyncio tasks in this process.
Batching efficiency = server texts/s / offline encode texts/s, both on the same texts in the same run.
Offline throughput is sampled several times right before and right after each load phase (the server up
and idle), with 1 torch thread and with torch's default; the thread count with the best median over those
two brackets is that phase's baseline, and the efficiency against that count's fastest single run is
printed too. Why brackets per phase: on a shared machine the offline speed drifts by 5-10% within minutes,
and a baseline measured minutes away from a phase compared it with another machine. The server's
share of busy time is per batching worker (``/info`` says how many it runs).

Each request carries what the ``openai`` package sends (``input``, ``model``, and ``encoding_format`` base64,
its default when the caller does not pick one; ``--encoding-format float`` for JSON floats) plus our ``role``.
Clients speak HTTP/1.1 keep-alive over raw asyncio streams by default (like ``wrk``): on a 2-core machine
the client shares the CPU with the server, and a heavy client would measure itself. ``--client httpx``
uses httpx instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from piccolo_embed.defaults import BATCH_SIZE, MAX_BATCH_TOKENS
from piccolo_embed.types import Engine

REPO = Path(__file__).resolve().parents[1]
LCQMC = REPO.parent / "shared" / "eval" / "cmteb-mini" / "LCQMC" / "test.jsonl"  # ../shared, as encode_throughput.py
SERVER_CODE = (
    "import sys; from piccolo_embed.cli import build_parser; "
    "a = build_parser(('piccolo_embed.cli.serve',)).parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)
# --fastapi-only: every request through FastAPI's router instead of serving/front.py's short path.
FASTAPI_ONLY = (
    "import functools; from piccolo_embed.serving import app; "
    "app.build_app = functools.partial(app.build_app, fast_routes=False); "
)
CHARS = (
    "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多然于"
    "心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="starter")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    parser.add_argument(
        "--texts-per-request",
        type=int,
        nargs="+",
        default=[1, 8],
        help="one load phase per value, against the same server and offline baseline",
    )
    parser.add_argument("--role", default="none")
    parser.add_argument(
        "--encoding-format",
        choices=["base64", "float"],
        default="base64",
        help="what clients ask for; the openai package sends base64 unless the caller picks a format",
    )
    parser.add_argument("--pool", type=int, default=2048, help="distinct texts drawn from")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"jsonl with sentence1/sentence2, read in place (default: {LCQMC}; generated text when it is absent)",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="server torch threads (0: the server's default)")
    parser.add_argument(
        "--engine",
        choices=[engine.value for engine in Engine],
        default=Engine.TORCH.value,
        help="model engine of both the server and the offline baseline (onnx needs piccolo-embed export first; "
        "the offline thread counts only apply to torch engines, ONNX Runtime keeps its own thread pool)",
    )
    parser.add_argument("--offline-seconds", type=float, default=2.0, help="per offline measurement")
    parser.add_argument("--offline-repeats", type=int, default=3, help="offline measurements before and after")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument(
        "--fastapi-only", action="store_true", help="serve every request through FastAPI (no short path)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load_texts(path: Path | None, n: int, seed: int) -> tuple[list[str], str]:
    """Sentences from ``path`` (default: LCQMC in ../shared, read in place, never copied), else generated Chinese."""
    rng = random.Random(seed)
    path = path or LCQMC
    if path.is_file():
        sentences: list[str] = []
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                sentences += [row["sentence1"], row["sentence2"]]
        unique = sorted(set(sentences))
        rng.shuffle(unique)
        return unique[:n], f"{path.parent.name} {path.name}"
    texts = ["".join(rng.choices(CHARS, k=rng.randint(6, 40))) for _ in range(n)]
    return texts, f"generated (6-40 random CJK characters; {path} not found: is ../shared next to the repo?)"


def offline_rate(embedder: object, texts: list[str], role: str, args: argparse.Namespace, seconds: float) -> float:
    """Texts/s of plain ``encode`` on ``texts``, repeated for at least ``seconds``."""
    options = {"batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens, "show_progress": False}
    embedder.encode(texts[:64], role, **options)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        embedder.encode(texts, role, **options)
        done += len(texts)
    return done / (time.perf_counter() - started)


def offline_rates(
    embedder: object, texts: list[str], args: argparse.Namespace, threads: list[int]
) -> dict[int, list[float]]:
    """Offline texts/s samples for each torch thread count (several short runs: the machine may be shared)."""
    import torch

    default = torch.get_num_threads()
    rates: dict[int, list[float]] = {}
    for count in threads:
        torch.set_num_threads(count)
        rates[count] = [
            offline_rate(embedder, texts, args.role, args, args.offline_seconds) for _ in range(args.offline_repeats)
        ]
    torch.set_num_threads(default)
    return rates


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    argv = ["serve", "--model", args.model, "--port", str(port), "--batch-size", str(args.batch_size)]
    argv += ["--max-batch-tokens", str(args.max_batch_tokens), "--max-wait-ms", str(args.max_wait_ms)]
    argv += ["--max-inputs", str(max(256, *args.texts_per_request))]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--engine", args.engine]  # the server and the offline baseline run the same engine
    # a file, not a pipe: an unread pipe could fill up and stall the server
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server process
    code = (FASTAPI_ONLY if args.fastapi_only else "") + SERVER_CODE
    server = subprocess.Popen([sys.executable, "-c", code, *argv], stderr=log, stdout=log)
    deadline = time.monotonic() + 900  # a loaded box once took more than 300 s to import torch and load the model
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not become healthy within 900 s")


class RawClient:
    """Minimal HTTP/1.1 keep-alive client (Content-Length bodies only, which is all uvicorn sends here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class HttpxClient:
    def __init__(self, port: int) -> None:
        import httpx

        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        response = await self.client.request(method, path, content=body or None, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    texts: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def _unit_vectors(response: dict, count: int) -> bool:
    """Whether an OpenAI-style response holds ``count`` unit-norm vectors (float lists or base64 float32)."""
    rows = [item["embedding"] for item in response["data"]]
    vectors = [np.frombuffer(base64.b64decode(r), "<f4") if isinstance(r, str) else np.array(r) for r in rows]
    return len(vectors) == count and all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-3 for v in vectors)


async def client_loop(
    client: RawClient | HttpxClient,
    texts: list[str],
    args: argparse.Namespace,
    window: tuple[float, float],
    tally: Tally,
    seed: int,
) -> None:
    rng = random.Random(seed)
    start, end = window
    checked = False
    while (sent := time.perf_counter()) < end:
        batch = rng.sample(texts, args.texts_per_request)
        request = {"input": batch, "model": "piccolo", "encoding_format": args.encoding_format, "role": args.role}
        body = json.dumps(request, ensure_ascii=False).encode()
        status, payload = await client.request("POST", "/v1/embeddings", body)
        done = time.perf_counter()
        ok = status == 200
        if ok and not checked:  # decode one response per client: right number of unit vectors
            ok = _unit_vectors(json.loads(payload), len(batch))
            checked = True
        if not start <= done <= end:
            continue  # throughput counts completions inside the measured window (as a steady-state rate)
        tally.latencies.append(done - sent)
        tally.texts += len(batch) if ok else 0
        if not ok:
            tally.errors += 1
            if len(tally.error_samples) < 3:
                tally.error_samples.append(f"{status} {payload[:200]!r}")


async def scrape(client: RawClient | HttpxClient, at: float) -> dict[str, float]:
    """Unlabelled samples of ``/metrics`` at time ``at`` (perf_counter)."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    _, body = await client.request("GET", "/metrics")
    return {
        name: float(value)
        for name, value in re.findall(r"^(piccolo_embed_\w+) (\S+)$", body.decode(), flags=re.MULTILINE)
    }


async def run_load(port: int, texts: list[str], args: argparse.Namespace) -> tuple[Tally, dict[str, float]]:
    """Run the clients; return their tally and the server metrics' change over the measured window."""
    make = RawClient if args.client == "raw" else HttpxClient
    clients = [make(port) for _ in range(args.clients + 2)]  # two extra for the scrapes (idle ones get closed)
    start = time.perf_counter() + args.warmup
    window = (start, start + args.duration)
    tally = Tally()
    loops = [client_loop(c, texts, args, window, tally, args.seed + i) for i, c in enumerate(clients[2:])]
    first, last, *_ = await asyncio.gather(scrape(clients[0], window[0]), scrape(clients[1], window[1]), *loops)
    for client in clients:
        await client.close()
    return tally, {name: last[name] - first.get(name, 0.0) for name in last}


@dataclass(frozen=True)
class PhaseResult:
    """One load phase's figures; server-side ones cover the measured window only."""

    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    offline_texts_per_s: float  # median of the best offline thread count
    offline_threads: int
    mean_batch_texts: float
    mean_batch_requests: float
    mean_queue_wait_ms: float
    workers: int
    worker_busy: float  # share of the window each batching worker ran the model
    model_texts_per_busy_s: float
    batching_efficiency: float  # texts_per_s / offline_texts_per_s
    efficiency_vs_fastest_offline_run: float
    efficiency_vs_same_threads: float | None = None  # against offline on the server's thread count, when fewer


def report(
    args: argparse.Namespace,
    tally: Tally,
    delta: dict[str, float],
    offline: dict[int, list[float]],
    server: tuple[int, int],
) -> PhaseResult:
    """Print one load phase's results (and a JSON line).

    ``server`` is (batching workers, torch threads). The headline efficiency compares with the best offline
    thread count. When the server runs fewer threads (``--threads``), the cores it leaves free serve HTTP
    and the clients, and the efficiency against offline on the server's own thread count is printed as
    well: that one isolates what batching costs from what sharing the cores with HTTP costs.
    """
    workers, server_threads = server
    requests = len(tally.latencies)
    lat = np.array(tally.latencies or [float("nan")]) * 1000
    server_rate = tally.texts / args.duration
    medians = {count: float(np.median(rates)) for count, rates in offline.items()}
    threads = max(medians, key=medians.get)
    batches = delta.get("piccolo_embed_batch_size_count", 0.0) or float("nan")
    busy = delta.get("piccolo_embed_forward_seconds_sum", 0.0) or float("nan")  # summed over the workers
    waits = delta.get("piccolo_embed_queue_wait_seconds_count", 0.0) or float("nan")
    fewer_threads = server_threads < threads and server_threads in medians
    r = PhaseResult(
        requests_per_s=requests / args.duration,
        texts_per_s=server_rate,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        errors=tally.errors,
        requests=requests,
        offline_texts_per_s=medians[threads],
        offline_threads=threads,
        mean_batch_texts=delta.get("piccolo_embed_batch_size_sum", 0.0) / batches,
        mean_batch_requests=delta.get("piccolo_embed_batch_requests_sum", 0.0) / batches,
        mean_queue_wait_ms=1000 * delta.get("piccolo_embed_queue_wait_seconds_sum", 0.0) / waits,
        workers=workers,
        worker_busy=busy / args.duration / workers,
        model_texts_per_busy_s=delta.get("piccolo_embed_texts_total", 0.0) / busy,
        batching_efficiency=server_rate / medians[threads],
        efficiency_vs_fastest_offline_run=server_rate / max(offline[threads]),
        efficiency_vs_same_threads=server_rate / medians[server_threads] if fewer_threads else None,
    )
    print_phase(r, offline, medians, tally, server_threads)
    rounded = {k: round(v, 4) for k, v in dataclasses.asdict(r).items() if v is not None}
    print("json:", json.dumps(rounded))
    return r


def print_phase(
    r: PhaseResult,
    offline: dict[int, list[float]],
    medians: dict[int, float],
    tally: Tally,
    server_threads: int,
) -> None:
    """The human-readable lines of one phase's results (``report`` adds the JSON line)."""
    threads, server_rate = r.offline_threads, r.texts_per_s
    for count, rates in offline.items():
        runs = ", ".join(f"{rate:.1f}" for rate in rates)
        print(f"offline encode, {count} torch thread(s): median {medians[count]:.1f} texts/s (runs: {runs})")
    print(f"server: {r.requests_per_s:.1f} requests/s, {server_rate:.1f} texts/s")
    print(f"latency: p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms; errors: {tally.errors} of {r.requests}")
    print(
        f"server batches: mean {r.mean_batch_texts:.1f} texts from {r.mean_batch_requests:.1f} requests, "
        f"mean queue wait {r.mean_queue_wait_ms:.1f} ms; {r.workers} worker(s), each busy "
        f"{100 * r.worker_busy:.0f}% of the time, at {r.model_texts_per_busy_s:.1f} texts per busy second"
    )
    print(
        f"batching efficiency: {server_rate:.1f} / {medians[threads]:.1f} (median offline, {threads} thread(s)) = "
        f"{r.batching_efficiency:.3f}; against the fastest offline run: {r.efficiency_vs_fastest_offline_run:.3f}"
    )
    if r.efficiency_vs_same_threads is not None:
        print(
            f"against offline on the server's {server_threads} thread(s) (the other cores serve HTTP and the "
            f"clients): {server_rate:.1f} / {medians[server_threads]:.1f} = {r.efficiency_vs_same_threads:.3f}"
        )
    for sample in tally.error_samples:
        print(f"error sample: {sample}")


def summary(results: dict[int, PhaseResult]) -> None:
    """One line per load phase, so runs with different request sizes read side by side."""
    columns = ["texts/req", "req/s", "texts/s", "p50 ms", "p99 ms", "batch", "eff"]
    print("\n" + " ".join(f"{c:>{w}s}" for c, w in zip(columns, [9, 7, 8, 7, 7, 6, 6], strict=True)) + " errors")
    for size, r in results.items():
        print(
            f"{size:9d} {r.requests_per_s:7.1f} {r.texts_per_s:8.1f} {r.p50_ms:7.1f} {r.p99_ms:7.1f}"
            f" {r.mean_batch_texts:6.1f} {r.batching_efficiency:6.3f} {r.errors}"
        )


def main() -> int:
    args = parse_args()
    import torch

    from piccolo_embed import Embedder

    texts, source = load_texts(args.data, args.pool, args.seed)
    embedder = Embedder.from_pretrained(args.model, engine=args.engine)
    print(
        f"model: {args.model} (dim {embedder.dim}); texts: {len(texts)} from {source}, "
        f"mean {np.mean([len(t) for t in texts]):.1f} chars; role {args.role}"
    )
    print(
        f"clients: {args.clients} x {'/'.join(map(str, args.texts_per_request))} text(s)/request ({args.client}), "
        f"{args.encoding_format} vectors, {args.duration:g} s "
        f"measured after {args.warmup:g} s warm-up; server: engine {args.engine}, batch {args.batch_size}, "
        f"max wait {args.max_wait_ms} ms, threads {args.threads or 'default'}"
        f"{', FastAPI only (no short path)' if args.fastapi_only else ''}; "
        f"torch default threads {torch.get_num_threads()}; cpus {os.cpu_count()}"
    )
    server_threads = args.threads or torch.get_num_threads()  # the server's own default
    threads = sorted({1, torch.get_num_threads(), server_threads})
    port = free_port()
    server = start_server(args, port)
    phases = {size: argparse.Namespace(**{**vars(args), "texts_per_request": size}) for size in args.texts_per_request}
    loads: dict[int, tuple[Tally, dict[str, float]]] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=10) as response:
            workers = int(json.load(response)["limits"].get("workers", 1))  # one batching thread since issue 17
        brackets = [offline_rates(embedder, texts, args, threads)]  # the server is up and idle
        for size, phase in phases.items():
            loads[size] = asyncio.run(run_load(port, texts, phase))
            brackets.append(offline_rates(embedder, texts, args, threads))
    finally:
        server.terminate()
        server.wait(30)
    print(f"load average after the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = {}
    for (size, (tally, delta)), before, after in zip(loads.items(), brackets[:-1], brackets[1:], strict=True):
        print(f"\n--- {args.clients} clients x {size} text(s) per request")
        offline = {count: before[count] + after[count] for count in threads}
        results[size] = report(phases[size], tally, delta, offline, (workers, server_threads))
    summary(results)
    return 1 if any(tally.errors for tally, _ in loads.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
