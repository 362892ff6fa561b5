"""Options shared by ``encode``, ``index`` and ``mine`` for running on several devices (one worker process each)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from piccolo_embed.cli.common import load_embedder

if TYPE_CHECKING:
    from piccolo_embed.parallel import EncoderPool, QuietEmbedder


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``--devices`` / ``--processes`` / ``--shard-size``."""
    group = parser.add_argument_group("several devices (one worker process per device, each with its own model)")
    group.add_argument(
        "--devices", default=None, metavar="LIST", help="comma-separated devices, e.g. cuda:0,cuda:1,cuda:2,cuda:3"
    )
    group.add_argument(
        "--processes", type=int, default=None, metavar="N", help="N CPU worker processes (the threads are split)"
    )
    group.add_argument("--shard-size", type=int, default=256, help="texts per worker task (default 256)")


def wants_pool(args: argparse.Namespace) -> bool:
    """Whether the options ask for worker processes rather than a model in this process."""
    return bool(getattr(args, "devices", None)) or (getattr(args, "processes", None) or 1) > 1


def loader_options(args: argparse.Namespace) -> dict[str, object]:
    """``Embedder.from_pretrained`` keyword arguments from the model options, without the device."""
    return {
        "roles": args.roles,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "max_batch_tokens": args.max_batch_tokens,
        "backend": args.backend,
        "int8": args.int8,
    }


@contextlib.contextmanager
def open_encoder(args: argparse.Namespace, name: str) -> Iterator[EncoderPool | QuietEmbedder]:
    """The encoder the options describe: a worker pool with ``--devices``/``--processes``, else one model here."""
    from piccolo_embed.parallel import EmbedderLoader, EncoderPool, QuietEmbedder, parse_devices

    if not wants_pool(args):
        yield QuietEmbedder(load_embedder(args), name)
        return
    devices = parse_devices(args.devices, args.processes)
    loader = EmbedderLoader(args.model, name=name, options=loader_options(args))
    with EncoderPool(loader, devices, shard_size=args.shard_size) as pool:
        yield pool
