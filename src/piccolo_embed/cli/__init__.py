"""``piccolo-embed`` command line: argparse subcommands, one module each, handlers are plain functions.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a handler taking the parsed ``Namespace`` and returning an exit code. Tests call handlers directly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from piccolo_embed import __version__
from piccolo_embed.errors import PiccoloEmbedError

COMMAND_MODULES: tuple[str, ...] = (
    "piccolo_embed.cli.encode",
    "piccolo_embed.cli.demo",
    "piccolo_embed.cli.starter",
    "piccolo_embed.cli.index",
    "piccolo_embed.cli.search",
    "piccolo_embed.cli.mine",
    "piccolo_embed.cli.train",
    "piccolo_embed.cli.trim_vocab",
    "piccolo_embed.cli.serve",
    "piccolo_embed.cli.eval",
    "piccolo_embed.cli.export",
    "piccolo_embed.cli.merge",
)


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="piccolo-embed", description="Train, evaluate and serve Chinese text embedders."
    )
    parser.add_argument("--version", action="version", version=f"piccolo-embed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; user errors print one line and exit 2.

    User errors are ours (:class:`~piccolo_embed.errors.PiccoloEmbedError`) and the built-in ones bad input and
    missing files raise inside the libraries we call.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "transformers", "sentence_transformers", "huggingface_hub", "urllib3", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (PiccoloEmbedError, ValueError, TypeError, OSError) as err:
        print(f"piccolo-embed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"piccolo-embed {args.command}: interrupted", file=sys.stderr)
        return 130
