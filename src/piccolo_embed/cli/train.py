"""``piccolo-embed train``: run the two-stage recipe from a YAML config (see ``configs/`` and docs/training.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train an embedder from a YAML config (one GPU, many GPUs via torchrun, or CPU)",
        description="Train with the piccolo recipe. Multi-GPU: torchrun --nproc_per_node N -m piccolo_embed train ...",
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML file with model/data/loss/training")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.max_steps=100 (repeatable; VALUE is YAML)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output_dir that holds a trained model or checkpoints (replaced; new log)",
    )
    parser.add_argument(
        "--allow-change",
        dest="allow_changes",
        action="append",
        default=[],
        metavar="KEY",
        help="with --resume, accept this config key differing from the checkpoint's (repeatable; only bookkeeping "
        "keys such as training.save_every, training.log_every, training.eval.*; see README 'What is safe')",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the whole config first (bad keys fail before any model is loaded), then train.

    Training modules are imported here, not at the top: every ``piccolo-embed`` command builds this parser, and
    they need the ``train`` extra (datasets, accelerate).
    """
    from piccolo_embed.training.config import RunConfig
    from piccolo_embed.training.run import train_from_config

    config = RunConfig.from_yaml(args.config, args.overrides)
    output = train_from_config(config, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes)
    print(f"trained model written to {output}")
    return 0
