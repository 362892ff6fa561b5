"""``piccolo-embed index``: encode a corpus into an on-disk index, in chunks, resumable and appendable."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_embed.cli.common import add_model_arguments
from piccolo_embed.cli.long import add_chunk_arguments, chunk_options, given_chunk_options, tokenized_model
from piccolo_embed.cli.scale import add_scale_arguments, open_encoder, ray_parts
from piccolo_embed.index.ann import IndexType
from piccolo_embed.index.build import DEFAULT_CHUNK_SIZE
from piccolo_embed.types import TaskKind

if TYPE_CHECKING:
    from piccolo_embed.index import IndexStore
    from piccolo_embed.index.milvus import MilvusStore


def model_reference(spec: str) -> str:
    """How the index records the model: an absolute path for a local directory, else the spec itself."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def add_kind_argument(
    parser: argparse.ArgumentParser, *, default: str | None = TaskKind.S2P.value, note: str = ""
) -> None:
    """``--kind s2p|s2s``: which roles texts are encoded with (shared by index and mine)."""
    parser.add_argument(
        "--kind",
        choices=[k.value for k in TaskKind],
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
    add_model_arguments(parser, default="")  # required, except with --verify
    parser.add_argument("--corpus", type=Path, help="JSONL: {'_id'|'id'?, 'title'?, 'text'} per line (required)")
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
        default=DEFAULT_CHUNK_SIZE,
        help="passages encoded and written per step; peak memory grows with it, not with the corpus",
    )
    parser.add_argument(
        "--index-type",
        choices=[t.value for t in IndexType],
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
    mode.add_argument("--overwrite", action="store_true", help="replace an existing index (swapped in when complete)")
    mode.add_argument("--verify", action="store_true", help="check INDEX_DIR against its checksums; no --corpus")
    parser.add_argument(
        "--skip-duplicates",
        action="store_true",
        help="skip passages whose id is already indexed or earlier in the corpus (default: refuse the corpus)",
    )
    add_scale_arguments(parser, ray=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build or extend the index and print a one-line summary."""
    from piccolo_embed.index import BuildMode, build_index
    from piccolo_embed.index.milvus import build_milvus

    if args.verify:
        return verify(args)
    if args.corpus is None or not args.model:
        raise ValueError("--model and --corpus are required (except with --verify)")
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
        build = build_milvus if args.store else partial(build_index, skip_duplicates=args.skip_duplicates)
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


def verify(args: argparse.Namespace) -> int:
    """``--verify``: rehash every file of the index and check its rows; one line either way."""
    from piccolo_embed.index import IndexStore

    if args.output is None:
        raise ValueError("index --verify checks a directory index: give it --output INDEX_DIR")
    store = IndexStore.open(args.output)
    store.verify(full=True)
    print(f"{args.output}: ok ({store.count} passages, {len(store.manifest.checksums)} files match their checksums)")
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

    skipped = 0
    if isinstance(store, IndexStore):
        added, manifest = store.manifest.sources[-1]["rows"], store.manifest
        kind, model, count = manifest.index_type, manifest.model, store.count
        skipped = int(manifest.sources[-1].get("skipped_duplicates") or 0)
    else:
        kind, model, count = store.state.index_type, store.state.model, store.state.count
        added = store.last_build_rows
    duplicates = f", skipped {skipped} with duplicate ids" if skipped else ""
    return (
        f"indexed {added} {unit} into {where}{duplicates} ({count} in total, {kind.value}, dim {model.dim}, "
        f"model {model.name}, fingerprint {model.digest})"
    )
