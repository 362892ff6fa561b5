"""Options shared by ``encode``, ``index`` and ``mine`` for running on several devices (one worker process each)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from piccolo_embed.cli.common import embedder_options, load_embedder

if TYPE_CHECKING:
    from piccolo_embed.parallel import EmbedderLoader, EncoderPool, QuietEmbedder
    from piccolo_embed.parallel.ray_encode import RayOptions


def add_scale_arguments(parser: argparse.ArgumentParser, *, ray: bool = False) -> None:
    """``--devices`` / ``--processes`` / ``--shard-size``, and with ``ray`` the ``--ray`` options."""
    group = parser.add_argument_group("several devices (one worker process per device, each with its own model)")
    group.add_argument(
        "--devices", default=None, metavar="LIST", help="comma-separated devices, e.g. cuda:0,cuda:1,cuda:2,cuda:3"
    )
    group.add_argument(
        "--processes", type=int, default=None, metavar="N", help="N CPU worker processes (the threads are split)"
    )
    group.add_argument(
        "--shard-size", type=int, default=256, help="texts per worker task, or lines per Ray actor call (default 256)"
    )
    if not ray:
        return
    group = parser.add_argument_group("a Ray cluster (needs the `ray` extra)")
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="encode on Ray with an actor pool; no ADDRESS starts a cluster on this machine, "
        "'auto' or ray://HOST:10001 joins one (its nodes must see the input at the same path)",
    )
    group.add_argument("--ray-actors", type=int, default=2, help="encoder actors, one model each (default 2)")
    group.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs (torch threads) per actor")
    group.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (1 on a GPU cluster)")


def wants_pool(args: argparse.Namespace) -> bool:
    """Whether the options ask for worker processes rather than a model in this process."""
    return bool(getattr(args, "devices", None)) or (getattr(args, "processes", None) or 1) > 1


def ray_parts(args: argparse.Namespace, name: str) -> tuple[EmbedderLoader, RayOptions]:
    """The actor loader and cluster options that ``--ray`` and its companions describe."""
    from piccolo_embed.parallel import EmbedderLoader
    from piccolo_embed.parallel.ray_encode import RayOptions

    if wants_pool(args):
        raise ValueError("--ray runs its own workers; drop --devices/--processes")
    if args.ray_actors < 1:
        raise ValueError(f"--ray-actors must be positive, got {args.ray_actors}")
    options = RayOptions(
        address=args.ray,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor,
        block_lines=args.shard_size,
    )
    return EmbedderLoader(args.model, name=name, options=embedder_options(args)), options


@contextlib.contextmanager
def open_encoder(args: argparse.Namespace, name: str) -> Iterator[EncoderPool | QuietEmbedder]:
    """The encoder the options describe: a worker pool with ``--devices``/``--processes``, else one model here."""
    from piccolo_embed.parallel import EmbedderLoader, EncoderPool, QuietEmbedder, parse_devices

    if not wants_pool(args):
        yield QuietEmbedder(load_embedder(args), name)
        return
    devices = parse_devices(args.devices, args.processes)
    loader = EmbedderLoader(args.model, name=name, options=embedder_options(args))
    with EncoderPool(loader, devices, shard_size=args.shard_size) as pool:
        yield pool
