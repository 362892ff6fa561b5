"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from piccolo_embed.defaults import BATCH_SIZE, MAX_BATCH_TOKENS
from piccolo_embed.types import Device, Engine, Precision, RolePreset

if TYPE_CHECKING:
    from piccolo_embed.inference.embedder import Embedder


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """Add the options that choose and configure a model (``--model``, ``--roles``, ``--engine``, ...)."""
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
    parser.add_argument(
        "--engine",
        choices=[e.value for e in Engine],
        default=Engine.TORCH.value,
        help="what runs the model; onnx and onnx-int8 run on CPU and need `piccolo-embed export --model SPEC` "
        "(with --quantize int8 for onnx-int8) first; torch-bf16 needs CUDA or an AMX CPU",
    )
    parser.add_argument(
        "--precision",
        choices=[p.value for p in Precision],
        default=Precision.AUTO.value,
        help="with --engine torch: auto picks bf16 on CUDA and AMX CPUs, else fp32 (fp16 on old GPUs)",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="most texts per forward pass")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS, help="most padded tokens per forward pass"
    )


def embedder_options(args: argparse.Namespace) -> dict[str, object]:
    """``Embedder.from_pretrained`` keyword arguments from :func:`add_model_arguments`' options, but the device."""
    return {
        "roles": args.roles,
        "engine": args.engine,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "max_batch_tokens": args.max_batch_tokens,
    }


def load_embedder(args: argparse.Namespace) -> Embedder:
    """Build the :class:`Embedder` described by :func:`add_model_arguments`' options."""
    from piccolo_embed.inference.embedder import Embedder

    return Embedder.from_pretrained(args.model, device=args.device, **embedder_options(args))
