"""Options and helpers shared by the subcommands that chunk long documents (``index --chunk``, ``encode --long``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from piccolo_embed.types import Role, RoleSpec


def add_chunk_arguments(parser: argparse.ArgumentParser) -> None:
    """``--chunk-tokens`` / ``--overlap-tokens``: the size of the chunks long documents are cut into."""
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        metavar="N",
        help="most tokens per chunk (default and most allowed: the role's max length minus its prefix)",
    )
    parser.add_argument(
        "--overlap-tokens",
        type=int,
        default=None,
        metavar="M",
        help="most tokens neighbouring chunks share, in whole sentences (default: 64 or a quarter of a chunk)",
    )


def chunk_options(args: argparse.Namespace) -> dict[str, int | None]:
    """``Chunker.for_model`` keyword arguments from :func:`add_chunk_arguments`' options."""
    return {"chunk_tokens": args.chunk_tokens, "overlap_tokens": args.overlap_tokens}


def given_chunk_options(args: argparse.Namespace) -> list[str]:
    """The chunk options set on the command line (they only mean something when chunking)."""
    return [f"--{name.replace('_', '-')}" for name, value in chunk_options(args).items() if value is not None]


@dataclass(frozen=True)
class _Tokenized:
    """Role settings plus a tokenizer: what a chunker needs, for encoders that do not carry a tokenizer."""

    roles: Mapping[Role, RoleSpec]
    tokenizer: Any


def tokenized_model(encoder: Any, spec: str) -> Any:
    """What :meth:`Chunker.for_model` needs for ``encoder``: the model itself, or its roles plus its tokenizer.

    A worker pool holds no tokenizer in this process, so it is loaded from ``spec`` (the same files the workers
    loaded).
    """
    for candidate in (encoder, getattr(encoder, "embedder", None)):
        if candidate is not None and hasattr(candidate, "tokenizer") and hasattr(candidate, "roles"):
            return candidate
    from transformers import AutoTokenizer

    from piccolo_embed.modeling.loading import resolve_model_dir

    return _Tokenized(encoder.roles, AutoTokenizer.from_pretrained(str(resolve_model_dir(spec))))
