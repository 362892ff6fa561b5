"""``piccolo-embed demo``: semantic search over a small Chinese corpus that ships with the package.

The corpus (70 short passages on ten topics) and the eight paraphrase queries were written for this package.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

from piccolo_embed.cli.common import add_model_arguments, load_embedder
from piccolo_embed.types import Role


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="search a small bundled Chinese corpus (offline)")
    add_model_arguments(parser, default="starter")
    parser.add_argument("-k", type=int, default=3, help="results shown per query")
    parser.add_argument("--query", action="append", help="your own query (repeatable); default: built-in ones")
    parser.set_defaults(func=run)


def load_demo_data() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The bundled corpus rows ``{id, topic, text}`` and queries ``{query, expected}``."""
    folder = resources.files("piccolo_embed.resources")

    def read(name: str) -> list[dict[str, str]]:
        lines = folder.joinpath(name).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    return read("demo_corpus.jsonl"), read("demo_queries.jsonl")


def run(args: argparse.Namespace) -> int:
    """Embed the corpus, run the queries, print the top results and how many paraphrases ranked first."""
    import numpy as np

    start = time.perf_counter()
    embedder = load_embedder(args)
    corpus, queries = load_demo_data()
    if args.query:
        queries = [{"query": text, "expected": ""} for text in args.query]
    print(f"model: {embedder.name}  (dim {embedder.dim}, loaded in {time.perf_counter() - start:.1f}s)")
    print(f"query instruction {embedder.roles[Role.QUERY].prefix!r}, passage {embedder.roles[Role.PASSAGE].prefix!r}")
    passages = embedder.encode_passages([row["text"] for row in corpus])
    query_vectors = embedder.encode_queries([q["query"] for q in queries])
    scores = query_vectors @ passages.T
    hits = 0
    for q, row_scores in zip(queries, scores, strict=True):
        top = np.argsort(-row_scores, kind="stable")[: args.k]
        hit = corpus[top[0]]["id"] == q["expected"]
        hits += hit
        print(f"\n查询: {q['query']}")
        for rank, index in enumerate(top, start=1):
            mark = " <- expected" if corpus[index]["id"] == q["expected"] else ""
            print(f"  {rank}. {row_scores[index]:.3f}  [{corpus[index]['topic']}] {corpus[index]['text']}{mark}")
    if not args.query:
        print(f"\n{hits}/{len(queries)} paraphrase queries ranked their passage first")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
