"""``piccolo-embed mine``: fill ``neg`` of FlagEmbedding records with hard negatives retrieved by a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piccolo_embed.cli.common import add_model_arguments
from piccolo_embed.cli.index import add_kind_argument, model_reference
from piccolo_embed.cli.scale import add_scale_arguments, open_encoder
from piccolo_embed.index.build import DEFAULT_CHUNK_SIZE
from piccolo_embed.types import TaskKind


def parse_range(value: str) -> tuple[int, int]:
    """``"10-100"`` -> ``(10, 100)``: 0-based ranks, end exclusive, like BGE's ``range_for_sampling``."""
    start, sep, end = value.partition("-")
    try:
        if not sep:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START-END such as 10-100, got {value!r}") from None


def optional_float(value: str) -> float | None:
    """A float, or ``none`` to switch a rule off."""
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mine`` subcommand."""
    parser = subparsers.add_parser(
        "mine",
        help="mine hard negatives for FlagEmbedding {query, pos, neg} records",
        description="Retrieve candidates for every query, take negatives from a rank window, drop positives "
        "and likely false negatives, and sample k per query (seeded per query).",
    )
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, type=Path, help="JSONL records {query, pos: [...], neg?: [...]}")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="corpus JSONL ({_id|id?, title?, text}) or an index directory built by `index` with the same "
        "model (default: all distinct positives of --input)",
    )
    parser.add_argument("--output", required=True, type=Path, help="where to write the mined records (JSONL)")
    parser.add_argument("--range", type=parse_range, default=(10, 100), help="rank window START-END (default 10-100)")
    parser.add_argument("--k", type=int, default=7, help="negatives per query (default 7)")
    parser.add_argument(
        "--max-score-ratio",
        type=optional_float,
        default=0.95,
        help="drop candidates scoring above RATIO x the weakest positive's score ('none' to disable; default 0.95)",
    )
    parser.add_argument(
        "--margin", type=optional_float, default=None, help="drop candidates scoring above positive - MARGIN"
    )
    parser.add_argument("--seed", type=int, default=42, help="base seed; each query's draw uses (seed, query index)")
    add_kind_argument(parser)
    parser.add_argument(
        "--existing-neg",
        choices=["replace", "append"],
        default="replace",
        help="replace existing negatives with mined ones (default) or keep them and append mined ones",
    )
    parser.add_argument(
        "--keep-empty", action="store_true", help="write records with no negative (dropped and counted by default)"
    )
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="corpus passages encoded per step")
    parser.add_argument("--query-batch", type=int, default=1024, help="queries encoded and searched per step")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="malformed input lines")
    parser.add_argument("--stats", type=Path, default=None, help="also write the statistics as JSON here")
    add_scale_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Mine ``args.input`` into ``args.output`` and print the statistics."""
    from piccolo_embed.mining import MiningConfig, NegativeMode, NegativePolicy, mine_file

    if not args.input.is_file():
        raise FileNotFoundError(f"input file not found: {args.input}")
    policy = NegativePolicy(
        rank_start=args.range[0],
        rank_end=args.range[1],
        num_negatives=args.k,
        max_score_ratio=args.max_score_ratio,
        margin=args.margin,
        seed=args.seed,
    )
    config = MiningConfig(
        policy=policy,
        kind=TaskKind.parse(args.kind),
        negative_mode=NegativeMode.parse(args.existing_neg),
        keep_empty=args.keep_empty,
        chunk_size=args.chunk_size,
        query_batch=args.query_batch,
    )
    with open_encoder(args, model_reference(args.model)) as encoder:
        stats = mine_file(encoder, args.input, args.output, corpus=args.corpus, config=config, on_error=args.on_error)
    print(stats.format())
    if args.stats is not None:
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        args.stats.write_text(json.dumps(stats.summary(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {stats.written} records to {args.output}")
    return 0
