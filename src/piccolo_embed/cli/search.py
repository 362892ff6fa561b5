"""``piccolo-embed search``: query an index built by ``piccolo-embed index``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piccolo_embed.cli.common import add_model_arguments, embedder_options
from piccolo_embed.cli.index import model_reference
from piccolo_embed.types import Role, RoleSpec, RoleSpecs

SNIPPET_CHARS = 80


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``search`` subcommand."""
    parser = subparsers.add_parser("search", help="find the passages of an index closest to one or more queries")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="query text(s)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", type=Path, metavar="INDEX_DIR", help="built by `index`")
    where.add_argument("--store", metavar="milvus:PATH_OR_URI[#COLLECTION]", help="a Milvus index built by `index`")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="results per query")
    add_model_arguments(parser, default="")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells searched per query")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW beam width at query time")
    parser.add_argument("--json", action="store_true", help="print one JSON object per query")
    parser.epilog = "--model defaults to the model recorded in the index (with the role prefixes it was built with)."
    parser.set_defaults(func=run)


def recorded_roles(roles: dict[str, dict[str, object]]) -> RoleSpecs | None:
    """The role specs an index recorded, to rebuild the exact encoder that made it."""
    if not roles:
        return None
    return {Role.parse(name): RoleSpec(str(spec["prefix"]), int(spec["max_length"])) for name, spec in roles.items()}


def run(args: argparse.Namespace) -> int:
    """Search and print ranked ``score id text`` lines (or JSON with ``--json``)."""
    from piccolo_embed.index import IndexStore, Searcher
    from piccolo_embed.index.chunked import DocumentSearcher
    from piccolo_embed.index.milvus import MilvusSearcher, MilvusStore
    from piccolo_embed.inference.embedder import Embedder
    from piccolo_embed.parallel.pool import QuietEmbedder

    store = MilvusStore.open(args.store) if args.store else IndexStore.open(args.index)
    recorded = store.state.model if args.store else store.manifest.model
    options = embedder_options(args) | {"roles": args.roles or recorded_roles(dict(recorded.roles))}
    embedder = Embedder.from_pretrained(args.model or recorded.name, device=args.device, **options)
    encoder = QuietEmbedder(embedder, model_reference(args.model or recorded.name))
    if args.store:
        params = {key: value for key, value in (("nprobe", args.nprobe), ("ef", args.ef_search)) if value}
        searcher = MilvusSearcher(store, encoder, search_params=params)
    else:
        # Documents indexed with --chunk come back once, scored by their best chunk; plain rows are unchanged.
        searcher = DocumentSearcher(Searcher(store, encoder, nprobe=args.nprobe, ef_search=args.ef_search))
    for query, hits in zip(args.queries, searcher.search(args.queries, k=args.k), strict=True):
        if args.json:
            print(json.dumps({"query": query, "hits": [h.to_json() for h in hits]}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            text = f"{hit.title} | {hit.text}" if hit.title else hit.text
            text = text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"
            span = f" [{hit.start}:{hit.end}]" if getattr(hit, "chunk", None) is not None else ""
            print(f"{rank:>4}  {hit.score:.4f}  {hit.id}{span}  {text}")
    return 0
