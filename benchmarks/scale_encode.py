"""Texts/s of one process, of 1..N worker processes and of Ray with 1..N local actors, on the same corpus.

Every configuration encodes the same synthetic Chinese passages (16-160 characters, mixed lengths) with
the passage role and prints its row as soon as it is measured. In-process and worker-pool rows time a
warm encode of all texts, from "texts in hand" to "vectors in input order"; their start-up column is model
loading and worker start. A Ray row reads the corpus file as ``index --ray`` does: its start-up column is the
wait for the first block (actor start, model load, one block), its texts/s is over the remaining rows;
``ray.init`` is timed once and printed on its own line. Scaling ratios are against the 1-worker row of the
same kind; each Ray actor reserves cores // actors CPUs (its torch threads), as the pool splits threads.

With ``--mine-memory N`` it instead mines hard negatives for 2,000 queries against an N-passage corpus with
``--processes 2`` and reports the peak resident memory of the main process and of each worker.

Usage::

    python benchmarks/scale_encode.py                        # starter model, 2,000 texts, 1 and 2 workers
    python benchmarks/scale_encode.py --texts 384 --block 32  # a short run
    python benchmarks/scale_encode.py --model tiny --texts 20000 --workers 1 2 4 --devices cuda:0 cuda:1
    python benchmarks/scale_encode.py --model tiny --mine-memory 200000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from index_memory import tiny_model  # noqa: E402  (the test suite's tiny model, built without pytest)


def texts_for(n: int, chars: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(chars) for _ in range(rng.randint(16, 160))) for _ in range(n)]


def timed(encode, texts: list[str]) -> float:
    encode(texts[:64])  # warm-up: first-call allocations, thread pools
    started = time.perf_counter()
    vectors = encode(texts)
    elapsed = time.perf_counter() - started
    assert vectors.shape[0] == len(texts)
    return len(texts) / elapsed


class Table:
    """Prints each configuration's row the moment it is measured, with its ratio to the 1-worker row of its kind."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        print(f"{'kind':<11} {'workers':>7} {'threads':>7} {'texts/s':>9} {'vs 1':>6} {'start s':>8}", flush=True)

    def add(self, kind: str, workers: int, threads: int, texts_per_s: float, startup_s: float) -> None:
        base = next((r["texts_per_s"] for r in self.rows if r["kind"] == kind and r["workers"] == 1), texts_per_s)
        row = {"kind": kind, "workers": workers, "threads": threads, "texts_per_s": texts_per_s}
        row |= {"scaling": texts_per_s / base, "startup_s": startup_s}
        self.rows.append(row)
        print(
            f"{kind:<11} {workers:>7} {threads:>7} {texts_per_s:>9.1f} {row['scaling']:>6.2f} {startup_s:>8.1f}",
            flush=True,
        )


def run_local(model: str, texts: list[str], workers: list[int], devices: list[str] | None, table: Table) -> None:
    import torch

    from piccolo_embed.parallel import EmbedderLoader, EncoderPool

    loader = EmbedderLoader(model, name=model)
    started = time.perf_counter()
    single = loader(devices[0] if devices else "cpu")
    startup = time.perf_counter() - started
    rate = timed(functools.partial(single.encode, role="passage"), texts)
    table.add("in-process", 1, torch.get_num_threads(), rate, startup)
    del single  # on a box short of memory, the pools' models must not sit beside this one
    for n in workers:
        started = time.perf_counter()
        with EncoderPool(loader, devices[:n] if devices else ["cpu"] * n) as pool:
            startup = time.perf_counter() - started
            rate = timed(lambda t, p=pool: p.encode(t, role="passage"), texts)
            table.add("processes", n, pool.threads, rate, startup)


def start_ray(cpus: int, attempts: int = 3) -> float:
    """Seconds ``ray.init`` took; retried, since Ray gives its node a fixed 30 s to start (short on a busy box)."""
    import ray

    started = time.perf_counter()
    for attempt in range(attempts):
        try:
            # The rows are a few MB: a small object store leaves the memory to the actors' models.
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=2**28)
            break
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise
    return time.perf_counter() - started


def run_ray(model: str, corpus: Path, texts: int, actors: list[int], block: int, table: Table) -> None:
    """One Ray Dataset per actor count; start-up is the wait for the first block, the rate is over the rest.

    Actors live for one dataset, so each run pays actor start-up and model loading before its first block
    (as a worker pool pays them in its constructor); the texts/s is measured from then to the last row.
    """
    from piccolo_embed.parallel import EmbedderLoader
    from piccolo_embed.parallel.ray_encode import RayOptions, encoded_dataset, exactly_once
    from piccolo_embed.types import Role

    cpus = os.cpu_count() or 1
    loader = EmbedderLoader(model, name=model)
    for n in actors:
        options = RayOptions(actors=n, cpus_per_actor=max(1, cpus // n), block_lines=block)
        started = time.perf_counter()
        dataset = encoded_dataset(corpus, 0, Role.PASSAGE, loader, options)
        first_at, first_rows, rows = 0.0, 0, 0
        for batch, keep in exactly_once(dataset.iter_batches(batch_size=None, batch_format="numpy"), "c"):
            assert np.isfinite(batch["vector"][keep]).all()
            rows += int(keep.sum())
            if not first_at:
                first_at, first_rows = time.perf_counter(), rows
        assert rows == texts > first_rows
        rate = (rows - first_rows) / (time.perf_counter() - first_at)
        table.add("ray", n, int(options.cpus_per_actor), rate, first_at - started)


def mine_memory(model: str, chars: list[str], passages: int, processes: int) -> dict:
    from index_memory import write_corpus

    from piccolo_embed.mining import MiningConfig, NegativePolicy, mine_file
    from piccolo_embed.parallel import EmbedderLoader, EncoderPool

    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus.jsonl", passages, chars)
        queries = texts_for(2000, chars, seed=1)
        pairs = Path(tmp) / "pairs.jsonl"
        with pairs.open("w", encoding="utf-8") as handle:
            for query in queries:
                handle.write(json.dumps({"query": query[:12], "pos": [query], "neg": []}, ensure_ascii=False) + "\n")
        started = time.perf_counter()
        with EncoderPool(EmbedderLoader(model, name=model), ["cpu"] * processes) as pool:
            config = MiningConfig(policy=NegativePolicy(rank_start=10, rank_end=100, num_negatives=7))
            stats = mine_file(pool, pairs, Path(tmp) / "out.jsonl", corpus=corpus, config=config)
        return {
            "passages": passages,
            "queries": len(queries),
            "processes": processes,
            "seconds": round(time.perf_counter() - started, 1),
            "written": stats.written,
            "main_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker_peak_rss_mib": {k: round(v / 2**20, 1) for k, v in sorted(pool.worker_peak_rss.items())},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="starter", help="model spec, or 'tiny' for the test suite's random BERT")
    parser.add_argument("--texts", type=int, default=2000, help="corpus size (a few hundred for a short run)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes and Ray actors")
    parser.add_argument("--devices", nargs="+", default=None, help="e.g. cuda:0 cuda:1 (default: CPU workers)")
    parser.add_argument("--block", type=int, default=64, help="texts per Ray actor call (block_lines)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--mine-memory", type=int, default=0, metavar="PASSAGES")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory() as tmp:
        model, chars = tiny_model(Path(tmp) / "tiny")
        model = str(model) if args.model == "tiny" else args.model
        if args.mine_memory:
            print(json.dumps(mine_memory(model, chars, args.mine_memory, 2)))
            return
        texts = texts_for(args.texts, chars)
        print(f"model {args.model}, {len(texts)} texts, {os.cpu_count()} cores", flush=True)
        table = Table()
        run_local(model, texts, args.workers, args.devices, table)
        if not args.no_ray and not args.devices:
            corpus = Path(tmp) / "c.jsonl"
            corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), "utf-8")
            print(f"ray.init: {start_ray(os.cpu_count() or 1):.1f} s (once per run, not in the rows)", flush=True)
            run_ray(model, corpus, len(texts), args.workers, args.block, table)
    print(json.dumps(table.rows))


if __name__ == "__main__":
    main()
