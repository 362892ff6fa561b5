"""Peak memory of ``piccolo-embed index`` (and of a search) as the corpus grows: it should not grow with it.

Generates synthetic Chinese-ish corpora (random characters from the tiny test model's vocabulary) in a
temporary directory, builds the tiny random BERT from ``tests/conftest.py``, and runs each build in a fresh
subprocess that reports its own peak RSS (``ru_maxrss``). The parent also reports
``RUSAGE_CHILDREN.ru_maxrss`` (the largest child so far; runs go in increasing size, so it is the latest
run's peak unless an earlier, smaller run was larger).

What to expect: the Python + torch + transformers baseline dominates; ``flat`` indexes hold no vectors in
RAM (exact search streams ``embeddings.f32`` in 32 MB blocks), so 20k and 200k passages should peak within a
few MB of each other. ``hnsw`` keeps vectors and graph in RAM: about ``n * (4 * dim + 8 * M * 2)`` bytes,
i.e. ~25 MB of vectors plus ~50 MB of links for 200k passages at dim 32, M 32.

Usage::

    python benchmarks/index_memory.py                       # 20k and 200k passages, flat, chunk 4096
    python benchmarks/index_memory.py --sizes 20000 200000 --index-types flat hnsw --chunk-sizes 1024 8192
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["北京的美食推荐", "如何学习深度神经网络", "明天会下雨吗", "医院看病感冒发烧"] * 25


def tiny_model(directory: Path) -> tuple[Path, list[str]]:
    """Build the test suite's tiny random BERT (2 layers, hidden 32) without importing pytest's machinery."""
    spec = importlib.util.spec_from_file_location("piccolo_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_bert(directory), module.CJK


def write_corpus(path: Path, n: int, chars: list[str], seed: int = 0) -> Path:
    """``n`` passages of 16-96 random characters; every third one has a title, every fifth no id."""
    rng = random.Random(seed)
    punct = "，。、；！？"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            body = "".join(
                rng.choice(chars) if rng.random() > 0.08 else rng.choice(punct) for _ in range(rng.randint(16, 96))
            )
            row: dict[str, str] = {"text": body}
            if i % 5:
                row["_id"] = f"p{i}"
            if i % 3 == 0:
                row["title"] = "".join(rng.choice(chars) for _ in range(rng.randint(2, 8)))
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def child(args: argparse.Namespace) -> None:
    """Run one measured job in this (fresh) process and print a JSON line with its peak RSS."""
    import faiss
    import torch

    # One thread: on a shared 2-core machine OpenMP spin-waiting made 2 threads 10x slower than 1.
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from piccolo_embed.cli import build_parser

    started = time.monotonic()
    if args.job == "index":
        argv = ["index", "--model", args.model, "--corpus", args.corpus, "--output", args.output]
        argv += ["--chunk-size", str(args.chunk_size), "--index-type", args.index_type, "--device", "cpu"]
        parsed = build_parser(("piccolo_embed.cli.index",)).parse_args(argv)
    elif args.job == "search":
        argv = ["search", "--index", args.output, "--json", "-k", "10", "--device", "cpu", *QUERIES]
        parsed = build_parser(("piccolo_embed.cli.search",)).parse_args(argv)
    else:  # baseline: load the model and encode a few texts, no index
        from piccolo_embed import Embedder

        Embedder.from_pretrained(args.model, device="cpu").encode(QUERIES, "query", show_progress=False)
        parsed = None
    if parsed is not None:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            parsed.func(parsed)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": peak_kib / 1024, "seconds": time.monotonic() - started}))


def measure(job: str, **options: object) -> dict[str, float]:
    """Run ``job`` in a fresh interpreter; return its self-reported peak and the parent's children peak."""
    cmd = [sys.executable, __file__, "--child", job, "--threads", str(options.pop("threads"))]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["children_max_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[4096])
    parser.add_argument("--index-types", nargs="+", default=["flat"], choices=["flat", "ivf", "hnsw"])
    parser.add_argument("--workdir", type=Path, default=None, help="keep corpora and indexes here")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads in each child")
    parser.add_argument("--child", choices=["index", "search", "baseline"], default=None, help=argparse.SUPPRESS)
    for name in ("--model", "--corpus", "--output", "--index-type"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=4096, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.job = args.child
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="index-memory-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        model, chars = tiny_model(work / "tiny-bert")
        base = measure("baseline", model=model, threads=args.threads)
        print(f"baseline (python + torch + tiny model, encode 100 queries): peak RSS {base['peak_rss_mib']:.1f} MiB")
        print(
            f"{'passages':>9} {'type':>5} {'chunk':>6} {'index peak MiB':>15} {'search peak MiB':>16} "
            f"{'index s':>8} {'passages/s':>11} {'embeddings MiB':>15}"
        )
        for size in sorted(args.sizes):
            corpus = write_corpus(work / f"corpus-{size}.jsonl", size, chars)
            for index_type in args.index_types:
                for chunk in args.chunk_sizes:
                    out = work / f"index-{size}-{index_type}-{chunk}"
                    built = measure(
                        "index",
                        model=model,
                        corpus=corpus,
                        output=out,
                        chunk_size=chunk,
                        index_type=index_type,
                        threads=args.threads,
                    )
                    found = measure("search", output=out, threads=args.threads)
                    emb_mib = (out / "embeddings.f32").stat().st_size / 2**20
                    print(
                        f"{size:>9} {index_type:>5} {chunk:>6} {built['peak_rss_mib']:>15.1f} "
                        f"{found['peak_rss_mib']:>16.1f} {built['seconds']:>8.1f} "
                        f"{size / built['seconds']:>11.0f} {emb_mib:>15.1f}",
                        flush=True,
                    )
        print(
            f"parent RUSAGE_CHILDREN.ru_maxrss: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
