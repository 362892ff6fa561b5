"""``piccolo-embed index``: encode a corpus into an on-disk index, in chunks, resumable and appendable."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_embed.cli.common import add_model_arguments
from piccolo_embed.cli.long import add_chunk_arguments, chunk_options, given_chunk_options, tokenized_model
from piccolo_embed.cli.scale import add_scale_arguments, open_encoder, ray_parts
from piccolo_embed.parallel.pool import QuietEmbedder

if TYPE_CHECKING:
    from piccolo_embed.index import IndexStore
    from piccolo_embed.index.milvus import MilvusStore

# Same as piccolo_embed.index.DEFAULT_CHUNK_SIZE (a test checks it); not imported, so that registering the
# subcommand does not import faiss, which only the `mining` extra installs.
CHUNK_SIZE = 4096


QuietEncoder = QuietEmbedder  # the name other subcommands import


def model_reference(spec: str) -> str:
    """How the index records the model: an absolute path for a local directory, else the spec itself."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def add_kind_argument(parser: argparse.ArgumentParser, *, default: str | None = "s2p", note: str = "") -> None:
    """``--kind s2p|s2s``: which roles texts are encoded with (shared by index and mine)."""
    parser.add_argument(
        "--kind",
        choices=["s2p", "s2s"],
        default=default,
        help="s2p: queries get the query instruction, passages the passage one; s2s: no instruction on either "
        f"side{note}",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``index`` subcommand."""
    parser = subparsers.add_parser(
        "index",
        help="encode a corpus .jsonl ({_id|id, title?, text}) into a searchable index directory",
        description="Encode passages in chunks into INDEX_DIR. An interrupted run resumes when rerun; "
        "--append adds passages without re-encoding the old ones.",
    )
    add_model_arguments(parser)
    parser.add_argument("--corpus", required=True, type=Path, help="JSONL: {'_id'|'id'?, 'title'?, 'text'} per line")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", type=Path, metavar="INDEX_DIR", help="index directory")
    target.add_argument(
        "--store",
        metavar="milvus:PATH_OR_URI[#COLLECTION]",
        help="write to Milvus instead: milvus:./my.db (Milvus Lite, a local file) or milvus:http://host:19530 "
        "(needs the `milvus` extra; token from PICCOLO_MILVUS_TOKEN)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=CHUNK_SIZE,
        help="passages encoded and written per step; peak memory grows with it, not with the corpus",
    )
    parser.add_argument(
        "--index-type",
        choices=["flat", "ivf", "hnsw"],
        default=None,
        help="flat: exact inner product (default); ivf/hnsw: approximate faiss index for millions of passages",
    )
    add_kind_argument(parser, default=None, note=" (default: s2p for a new index, the index's own when appending)")
    parser.add_argument(
        "--chunk",
        action="store_true",
        help="long documents: index each document's chunks (`search` then returns documents, scored by their best "
        "chunk, with its character span); --chunk-size then counts chunks",
    )
    add_chunk_arguments(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add the corpus to an existing index")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing index")
    add_scale_arguments(parser, ray=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build or extend the index and print a one-line summary."""
    from piccolo_embed.index import BuildMode, build_index
    from piccolo_embed.index.milvus import build_milvus
    from piccolo_embed.mining import TaskKind

    if not args.corpus.is_file():
        raise FileNotFoundError(f"corpus file not found: {args.corpus}")
    mode = BuildMode.APPEND if args.append else BuildMode.OVERWRITE if args.overwrite else BuildMode.CREATE
    _check_chunk_options(args)
    started = time.monotonic()
    name = model_reference(args.model)
    chunks = None
    if args.ray:
        from piccolo_embed.parallel.ray_encode import RayChunks

        chunks = RayChunks(*ray_parts(args, name))  # the model here only fingerprints the index
    with open_encoder(args, name) as encoder:
        if args.chunk:
            from piccolo_embed.index.chunked import DocumentChunks, model_chunkers

            chunks = DocumentChunks(
                encoder, model_chunkers(tokenized_model(encoder, args.model), **chunk_options(args))
            )
        build = build_milvus if args.store else build_index
        store = build(
            encoder,
            args.corpus,
            args.store or args.output,
            mode=mode,
            chunk_size=args.chunk_size,
            index_type=args.index_type,
            passage_role=TaskKind.parse(args.kind).passage_role if args.kind else None,
            model_name=encoder.name,
            chunks=chunks,
        )
    print(
        f"{summary(store, args.store or args.output, 'chunks' if args.chunk else 'passages')} in "
        f"{time.monotonic() - started:.1f} s"
    )
    return 0


def _check_chunk_options(args: argparse.Namespace) -> None:
    """Chunking runs in this process, into a local index; its size options need ``--chunk``."""
    if not args.chunk and (given := given_chunk_options(args)):
        raise ValueError(f"{', '.join(given)} only apply with --chunk")
    if args.chunk and (args.store or args.ray):
        raise ValueError(f"--chunk builds a local index in this process; drop {'--store' if args.store else '--ray'}")


def summary(store: IndexStore | MilvusStore, where: object, unit: str = "passages") -> str:
    """One line on what a build added and what the index now holds."""
    from piccolo_embed.index import IndexStore

    if isinstance(store, IndexStore):
        added, manifest = store.manifest.sources[-1]["rows"], store.manifest
        kind, model, count = manifest.index_type, manifest.model, store.count
    else:
        kind, model, count = store.state.index_type, store.state.model, store.state.count
        added = store.last_build_rows
    return (
        f"indexed {added} {unit} into {where} ({count} in total, {kind.value}, dim {model.dim}, "
        f"model {model.name}, fingerprint {model.digest})"
    )
