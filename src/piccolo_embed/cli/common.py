"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from piccolo_embed.defaults import BATCH_SIZE, MAX_BATCH_TOKENS
from piccolo_embed.types import Backend, Device, Precision, RolePreset

if TYPE_CHECKING:
    from piccolo_embed.inference.embedder import Embedder


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """Add the options that choose and configure a model (``--model``, ``--roles``, ``--backend``, ...)."""
    parser.add_argument(
        "--model",
        required=default is None,
        default=default,
        help="local model directory, Hugging Face hub id, or 'starter' (bundled multilingual-e5-small)",
    )
    parser.add_argument(
        "--roles",
        choices=[p.value for p in RolePreset],
        default=None,
        help="override the model's role settings with a preset (default: the model's own)",
    )
    parser.add_argument("--device", choices=[d.value for d in Device], default=Device.AUTO.value)
    parser.add_argument("--precision", choices=[p.value for p in Precision], default=Precision.AUTO.value)
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default=Backend.TORCH.value,
        help="onnx needs `piccolo-embed export --model SPEC` first (CPU only)",
    )
    parser.add_argument("--int8", action="store_true", help="with --backend onnx: use the int8 graph")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="most texts per forward pass")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS, help="most padded tokens per forward pass"
    )


def load_embedder(args: argparse.Namespace) -> Embedder:
    """Build the :class:`Embedder` described by :func:`add_model_arguments`' options."""
    from piccolo_embed.inference.embedder import Embedder

    return Embedder.from_pretrained(
        args.model,
        roles=args.roles,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        backend=args.backend,
        int8=args.int8,
    )
