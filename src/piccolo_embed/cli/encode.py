"""``piccolo-embed encode``: embed a text file into a ``.npy`` matrix, streaming in chunks."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from piccolo_embed.cli.common import add_model_arguments, load_embedder
from piccolo_embed.types import Role


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``encode`` subcommand."""
    parser = subparsers.add_parser("encode", help="embed a .txt (one text per line) or .jsonl file into .npy")
    add_model_arguments(parser)
    parser.add_argument("--role", choices=[r.value for r in Role], default=Role.NONE.value)
    parser.add_argument("--input", required=True, type=Path, help=".txt (one text per line) or .jsonl")
    parser.add_argument("--field", default="text", help="JSON field holding the text (.jsonl input)")
    parser.add_argument("--output", required=True, type=Path, help="where to write the float32 .npy matrix")
    parser.add_argument("--chunk-size", type=int, default=4096, help="texts read and encoded at a time")
    parser.set_defaults(func=run)


def iter_texts(path: Path, field: str = "text") -> Iterator[str]:
    """Yield texts from a .txt file (every line, kept as is) or a .jsonl file (``field`` of each object).

    Raises:
        ValueError: A .jsonl line is not an object with a string ``field``; names the file and line.
    """
    is_jsonl = path.suffix.lower() in (".jsonl", ".json")
    with path.open(encoding="utf-8") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not is_jsonl:
                yield line
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{line_no}: field {field!r} must be a string")
            yield obj[field]


def count_texts(path: Path, field: str = "text") -> int:
    """Number of texts :func:`iter_texts` will yield (one cheap pass, needed to pre-size the output)."""
    return sum(1 for _ in iter_texts(path, field))


def chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    """Group an iterator into lists of at most ``size`` items."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(args: argparse.Namespace) -> int:
    """Encode ``args.input`` into ``args.output``; written to a temporary file and renamed when complete."""
    if not args.input.is_file():
        raise FileNotFoundError(f"input file not found: {args.input}")
    if args.chunk_size < 1:
        raise ValueError("--chunk-size must be positive")
    total = count_texts(args.input, args.field)
    embedder = load_embedder(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, embedder.dim))
    try:
        row = 0
        with tqdm(total=total, desc="encode", unit="text") as bar:
            for chunk in chunks(iter_texts(args.input, args.field), args.chunk_size):
                out[row : row + len(chunk)] = embedder.encode(chunk, args.role, show_progress=False)
                row += len(chunk)
                bar.update(len(chunk))
        out.flush()
        del out
        tmp.replace(args.output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"wrote {total} x {embedder.dim} float32 embeddings to {args.output}")
    return 0
