"""``piccolo-embed encode``: embed a text file into a ``.npy`` matrix, streaming in chunks, reading it once."""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

import numpy as np
from tqdm.auto import tqdm

from piccolo_embed.atomic import staged_file
from piccolo_embed.chunking import Chunker, LongMode, embed_long
from piccolo_embed.cli.common import add_model_arguments
from piccolo_embed.cli.long import add_chunk_arguments, chunk_options, given_chunk_options, tokenized_model
from piccolo_embed.cli.scale import add_scale_arguments, open_encoder, ray_parts
from piccolo_embed.textfiles import utf8_lines
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
    parser.add_argument(
        "--long",
        choices=[m.value for m in LongMode],
        default=LongMode.TRUNCATE.value,
        help="texts longer than the role's max length: truncate (one vector of the first tokens), mean (one vector, "
        "the normalised mean of its chunks' vectors) or chunks (a row per chunk; spans in --spans)",
    )
    parser.add_argument(
        "--spans",
        type=Path,
        default=None,
        help="with --long chunks: JSONL of each row's {row, doc, chunk, start, end} (default: OUTPUT.chunks.jsonl)",
    )
    add_chunk_arguments(parser)
    add_scale_arguments(parser, ray=True)
    parser.set_defaults(func=run)


def iter_texts(path: Path, field: str = "text") -> Iterator[str]:
    """Yield texts from a .txt file (every line, kept as is) or a .jsonl file (``field`` of each object).

    Raises:
        ValueError: A .jsonl line is not an object with a string ``field``, or a line is not UTF-8
            (:class:`~piccolo_embed.errors.EncodingError`); names the file and line.
    """
    is_jsonl = path.suffix.lower() in (".jsonl", ".json")
    for line_no, raw in utf8_lines(path):
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
    """Encode ``args.input`` into ``args.output`` (and the spans file with ``--long chunks``), reading it once."""
    if not args.input.is_file():
        raise FileNotFoundError(f"input file not found: {args.input}")
    if args.chunk_size < 1:
        raise ValueError("--chunk-size must be positive")
    mode = LongMode.parse(args.long)
    _check_long_options(args, mode)
    if args.ray:
        dim, blocks = _ray_blocks(args)
        rows = write_matrix(args.output, dim, blocks)
    elif mode is LongMode.CHUNKS:
        spans = args.spans or default_spans_path(args.output)
        with open_encoder(args, args.model) as encoder, staged_file(spans) as handle:
            dim = encoder.dim
            rows = write_matrix(args.output, dim, _long_blocks(encoder, args, mode, handle))
    else:
        with open_encoder(args, args.model) as encoder:
            dim = encoder.dim
            encoded = _encoded_chunks(encoder, args) if mode is LongMode.TRUNCATE else _long_blocks(encoder, args, mode)
            rows = write_matrix(args.output, dim, encoded)
    what = "chunk embeddings" if mode is LongMode.CHUNKS else "embeddings"
    print(f"wrote {rows} x {dim} float32 {what} to {args.output}")
    if mode is LongMode.CHUNKS:
        print(f"wrote their spans to {args.spans or default_spans_path(args.output)}")
    return 0


def _check_long_options(args: argparse.Namespace, mode: LongMode) -> None:
    """Chunk options need a chunking mode, ``--spans`` needs ``chunks``, and chunking runs in this process."""
    if mode is LongMode.TRUNCATE and (given := given_chunk_options(args)):
        raise ValueError(f"{', '.join(given)} only apply with --long mean or --long chunks")
    if args.spans is not None and mode is not LongMode.CHUNKS:
        raise ValueError("--spans only applies with --long chunks")
    if args.ray and mode is not LongMode.TRUNCATE:
        raise ValueError(f"--long {mode.value} chunks documents in this process; drop --ray")


def default_spans_path(output: Path) -> Path:
    """Where ``--long chunks`` writes the spans by default: ``OUT.npy`` -> ``OUT.chunks.jsonl``."""
    return output.with_name(f"{output.stem}.chunks.jsonl")


def _encoded_chunks(encoder: Encoder, args: argparse.Namespace) -> Iterator[tuple[int, np.ndarray]]:
    row = 0
    for chunk in chunks(iter_texts(args.input, args.field), args.chunk_size):
        yield row, encoder.encode(chunk, role=args.role)
        row += len(chunk)


def _long_blocks(
    encoder: Encoder, args: argparse.Namespace, mode: LongMode, spans: TextIO | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``mean`` or ``chunks`` vectors of ``--chunk-size`` documents at a time; with ``spans``, a line per chunk.

    A spans line is ``{"row", "doc", "chunk", "start", "end"}``: the chunk's row in the matrix, its document's
    position in the input (from 0), its position in the document and its character span there.
    """
    chunker = Chunker.for_model(tokenized_model(encoder, args.model), role=args.role, **chunk_options(args))
    row = first_doc = 0
    for texts in chunks(iter_texts(args.input, args.field), args.chunk_size):
        result = embed_long(encoder, texts, mode=mode, chunker=chunker, role=args.role)
        for offset, (chunk, doc) in enumerate(zip(result.chunks or (), result.documents.tolist(), strict=False)):
            line = {"row": row + offset, "doc": first_doc + doc, "chunk": chunk.index}
            spans.write(json.dumps(line | {"start": chunk.start, "end": chunk.end}) + "\n")
        yield row, result.vectors
        row, first_doc = row + len(result.vectors), first_doc + len(texts)


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


def write_matrix(output: Path, dim: int, blocks: Iterable[tuple[int, np.ndarray]]) -> int:
    """Stream ``(first_row, vectors)`` blocks, in row order, into a float32 ``.npy`` at ``output``; return the rows.

    The row count is not known until the input ends, and the input is read only once: the header is written
    with 0 rows and rewritten in place at the end (numpy pads ``.npy`` headers so the first dimension can grow
    without moving the data). All in a temporary file (see :func:`piccolo_embed.atomic.staged_file`).
    """
    written = 0
    with staged_file(output, "wb", ".tmp.npy") as handle, tqdm(desc="encode", unit="row") as bar:
        data_start = _write_header(handle, 0, dim)
        for row, block in blocks:
            vectors = np.ascontiguousarray(block, dtype="<f4")
            if row != written or vectors.ndim != 2 or vectors.shape[1] != dim:
                raise ValueError(f"{output}: got a block of {vectors.shape} at row {row}, expected row {written}")
            bad = ~np.isfinite(vectors).all(axis=1)
            if bad.any():  # a NaN matrix would look like a valid result; nothing is written
                raise ValueError(
                    f"{output}: the model returned NaN or infinite values for row {row + 1 + int(np.argmax(bad))}"
                )
            handle.write(vectors.tobytes())
            written += len(vectors)
            bar.update(len(vectors))
        handle.seek(0)
        if _write_header(handle, written, dim) != data_start:
            raise RuntimeError(f"{output}: the .npy header changed size")
    return written


def _write_header(handle: BinaryIO, rows: int, dim: int) -> int:
    """Write a float32 ``(rows, dim)`` ``.npy`` header at the handle's position; return where the data starts."""
    np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return handle.tell()
