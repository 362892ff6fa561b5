"""``piccolo-embed encode``: embed a text file into a ``.npy`` matrix, streaming in chunks."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_embed.cli.common import add_model_arguments
from piccolo_embed.cli.scale import add_scale_arguments, open_encoder, ray_parts
from piccolo_embed.types import Role

if TYPE_CHECKING:
    import numpy as np

    from piccolo_embed.protocols import Encoder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``encode`` subcommand."""
    parser = subparsers.add_parser("encode", help="embed a .txt (one text per line) or .jsonl file into .npy")
    add_model_arguments(parser)
    parser.add_argument("--role", choices=[r.value for r in Role], default=Role.NONE.value)
    parser.add_argument("--input", required=True, type=Path, help=".txt (one text per line) or .jsonl")
    parser.add_argument("--field", default="text", help="JSON field holding the text (.jsonl input)")
    parser.add_argument("--output", required=True, type=Path, help="where to write the float32 .npy matrix")
    parser.add_argument("--chunk-size", type=int, default=4096, help="texts read and encoded at a time")
    add_scale_arguments(parser, ray=True)
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
    if args.ray:
        dim, blocks = _ray_blocks(args)
        write_matrix(args.output, total, dim, blocks)
    else:
        with open_encoder(args, args.model) as encoder:
            dim = encoder.dim
            write_matrix(args.output, total, dim, _encoded_chunks(encoder, args))
    print(f"wrote {total} x {dim} float32 embeddings to {args.output}")
    return 0


def _encoded_chunks(encoder: Encoder, args: argparse.Namespace) -> Iterator[tuple[int, np.ndarray]]:
    row = 0
    for chunk in chunks(iter_texts(args.input, args.field), args.chunk_size):
        yield row, encoder.encode(chunk, role=args.role)
        row += len(chunk)


def _ray_blocks(args: argparse.Namespace) -> tuple[int, Iterator[tuple[int, np.ndarray]]]:
    """The embedding size and ``(first_row, vectors)`` blocks encoded by a Ray actor pool, in input order."""
    from piccolo_embed.parallel.ray_encode import encoded_dataset, exactly_once

    loader, options = ray_parts(args, args.model)
    dataset = encoded_dataset(args.input, 0, Role.coerce(args.role), loader, options, text_field=args.field)
    if dataset is None:
        raise ValueError(f"{args.input}: no texts to encode")
    batches = exactly_once(dataset.iter_batches(batch_size=args.chunk_size, batch_format="numpy"), str(args.input))
    first = next(batches)
    blocks = ((int(batch["row"][keep][0]), batch["vector"][keep]) for batch, keep in itertools.chain([first], batches))
    return first[0]["vector"].shape[1], blocks


def write_matrix(output: Path, total: int, dim: int, blocks: Iterable[tuple[int, np.ndarray]]) -> None:
    """Write ``(first_row, vectors)`` blocks into a ``total x dim`` float32 ``.npy`` at ``output``.

    The matrix is a memory map in a temporary file, renamed into place only when complete.
    """
    import numpy as np
    from tqdm.auto import tqdm

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dim))
    written = 0
    try:
        with tqdm(total=total, desc="encode", unit="text") as bar:
            for row, vectors in blocks:
                bad = ~np.isfinite(vectors).all(axis=1)
                if bad.any():  # a NaN matrix would look like a valid result; nothing is written
                    raise ValueError(
                        f"{output}: the model returned NaN or infinite values for text {row + 1 + int(np.argmax(bad))}"
                    )
                out[row : row + len(vectors)] = vectors
                written += len(vectors)
                bar.update(len(vectors))
        if written != total:
            raise ValueError(f"{output}: {written} rows were encoded, but the input has {total} texts")
        out.flush()
        del out
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
