"""Texts/s of one process, of 1..N worker processes and of Ray with 1..N local actors, on the same corpus.

Every configuration encodes the same synthetic Chinese passages (16-160 characters, mixed lengths) with
the passage role, after a warm-up, and is timed end to end from "texts in hand" to "vectors in input order"
(model loading and worker start-up are reported separately: they are paid once per run, not per text).
Scaling ratios are against the 1-worker run of the same kind. With ``--mine-memory N`` it instead mines
hard negatives for 2,000 queries against an N-passage corpus with ``--processes 2`` and reports the peak
resident memory of the main process and of each worker.

Usage::

    python benchmarks/scale_encode.py                        # starter model, 2,000 texts, 1 and 2 workers
    python benchmarks/scale_encode.py --model tiny --texts 20000 --workers 1 2 4 --devices cuda:0 cuda:1
    python benchmarks/scale_encode.py --model tiny --mine-memory 200000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

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


def run_local(model: str, texts: list[str], workers: list[int], devices: list[str] | None) -> list[dict]:
    import torch

    from piccolo_embed.parallel import EmbedderLoader, EncoderPool

    loader = EmbedderLoader(model, name=model)
    rows = []
    started = time.perf_counter()
    single = loader(devices[0] if devices else "cpu")
    startup = time.perf_counter() - started
    rate = timed(lambda t: single.encode(t, role="passage"), texts)
    rows.append(
        {
            "kind": "in-process",
            "workers": 1,
            "threads": torch.get_num_threads(),
            "texts_per_s": rate,
            "startup_s": startup,
        }
    )
    for n in workers:
        started = time.perf_counter()
        with EncoderPool(loader, devices[:n] if devices else ["cpu"] * n) as pool:
            startup = time.perf_counter() - started
            rate = timed(lambda t, p=pool: p.encode(t, role="passage"), texts)
            rows.append(
                {"kind": "processes", "workers": n, "threads": pool.threads, "texts_per_s": rate, "startup_s": startup}
            )
    return rows


def run_ray(model: str, texts: list[str], actors: list[int], cpus: int) -> list[dict]:
    import numpy as np
    import ray

    from piccolo_embed.parallel import EmbedderLoader
    from piccolo_embed.parallel.ray_encode import RayOptions, encoded_dataset, exactly_once
    from piccolo_embed.types import Role

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    loader = EmbedderLoader(model, name=model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "c.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), "utf-8")
        for n in actors:
            options = RayOptions(actors=n, cpus_per_actor=max(1, cpus // n), batch_rows=256, block_lines=1024)
            started = time.perf_counter()
            dataset = encoded_dataset(corpus, 0, Role.PASSAGE, loader, options)
            got = [
                b["vector"][k]
                for b, k in exactly_once(dataset.iter_batches(batch_size=4096, batch_format="numpy"), "c")
            ]
            elapsed = time.perf_counter() - started
            assert sum(len(g) for g in got) == len(texts) and np.isfinite(got[0]).all()
            # Ray's time includes actor start-up and model loading (actors live for one dataset).
            rows.append(
                {
                    "kind": "ray",
                    "workers": n,
                    "threads": options.cpus_per_actor,
                    "texts_per_s": len(texts) / elapsed,
                    "startup_s": None,
                }
            )
    ray.shutdown()
    return rows


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
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--devices", nargs="+", default=None, help="e.g. cuda:0 cuda:1 (default: CPU workers)")
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
        rows = run_local(model, texts, args.workers, args.devices)
        if not args.no_ray and not args.devices:
            rows += run_ray(model, texts, args.workers, os.cpu_count() or 1)
    for kind in ("processes", "ray"):
        base = next((r["texts_per_s"] for r in rows if r["kind"] == kind and r["workers"] == 1), None)
        for row in rows:
            if row["kind"] == kind and base:
                row["scaling"] = row["texts_per_s"] / base
    print(f"model {args.model}, {len(texts)} texts, {os.cpu_count()} cores")
    print(f"{'kind':<11} {'workers':>7} {'threads':>7} {'texts/s':>9} {'vs 1':>6} {'start s':>8}")
    for row in rows:
        start = f"{row['startup_s']:.1f}" if row["startup_s"] is not None else "-"
        print(
            f"{row['kind']:<11} {row['workers']:>7} {row['threads']:>7} {row['texts_per_s']:>9.1f} "
            f"{row.get('scaling', 1.0):>6.2f} {start:>8}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
