"""``piccolo-embed merge``: average same-architecture checkpoints (model soups; LM-Cocktail's fine-tuned + base)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``merge`` subcommand."""
    parser = subparsers.add_parser(
        "merge",
        help="write a weighted average of same-architecture models (e.g. a fine-tuned model and its base)",
        description=(
            "Average the weights of models that share architecture, tensors and vocabulary. The output is a copy "
            "of the first model's directory (tokenizer, modules, role settings) with the averaged weights."
        ),
    )
    parser.add_argument(
        "--models",
        required=True,
        nargs="+",
        metavar="MODEL",
        help="two or more local model directories, hub ids, or 'starter'; the first one's files are copied",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        type=float,
        default=None,
        metavar="W",
        help="one finite weight >= 0 per model, normalised to sum to 1 (0.7 0.3 == 7 3); default: equal weights",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory for the merged model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge and print one line saying what was written."""
    from piccolo_embed.modeling.merge import merge_models

    report = merge_models(args.models, args.output, weights=args.weights, overwrite=args.overwrite)
    print(report)
    return 0
