"""Score document search over indexes of a retrieval task's corpus: nDCG@10 (and recall, MRR) per index.

Built for the long-document measurement (docs/results.md): the same corpus indexed plainly (each document
truncated at the passage role's max length) and with ``--chunk`` (a document scores its best chunk). Both go
through :class:`~piccolo_embed.index.DocumentSearcher`, which leaves plain rows as they are, with the model each
index recorded; queries are encoded once per model and scored with mteb's retrieval metrics.

    python scripts/score_index_search.py TASK_DIR INDEX_DIR [INDEX_DIR ...] [--max-queries N] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from piccolo_embed.cli.index import QuietEncoder
from piccolo_embed.cli.search import recorded_roles
from piccolo_embed.evaluation.loading import load_task
from piccolo_embed.evaluation.metrics import retrieval_scores
from piccolo_embed.evaluation.tasks import RetrievalData
from piccolo_embed.index import DocumentSearcher, IndexStore, Searcher
from piccolo_embed.inference.embedder import Embedder

K_VALUES = (1, 3, 5, 10)
REPORTED = ("ndcg_at_10", "recall_at_10", "mrr_at_10", "ndcg_at_1")


def score_index(index: Path, data: RetrievalData, encoders: dict[str, QuietEncoder]) -> dict[str, object]:
    """Search every query of ``data`` in ``index`` (top 10 documents) and score the ranking."""
    store = IndexStore.open(index)
    model = store.manifest.model
    if model.digest not in encoders:
        embedder = Embedder.from_pretrained(model.name, roles=recorded_roles(dict(model.roles)), device="cpu")
        encoders[model.digest] = QuietEncoder(embedder, model.name)
    searcher = Searcher(store, encoders[model.digest])
    vectors = np.asarray(searcher.encoder.encode(list(data.query_texts), role=searcher.query_role), dtype=np.float32)
    ranked = DocumentSearcher(searcher).search_vectors(vectors, max(K_VALUES))
    results = {qid: {hit.id: hit.score for hit in hits} for qid, hits in zip(data.query_ids, ranked, strict=True)}
    scores = retrieval_scores(results, data.qrels, K_VALUES)
    chunked = any("doc" in entry for entry in store.entries([0])) if store.count else False
    return {
        "index": str(index),
        "rows": store.count,
        "chunked": chunked,
        "queries": len(data),
        **{key: round(scores[key], 5) for key in REPORTED},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per index."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", type=Path, help="retrieval task folder (e.g. from scripts/build_long_doc_task.py)")
    parser.add_argument("indexes", type=Path, nargs="+", help="index directories built from the task's corpus")
    parser.add_argument("--max-queries", type=int, default=None, help="score a seeded sample of this many queries")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    data = load_task(args.task).data
    if args.max_queries is not None and args.max_queries < len(data):
        data = data.select(sorted(random.Random(args.seed).sample(range(len(data)), args.max_queries)))
    encoders: dict[str, QuietEncoder] = {}
    for index in args.indexes:
        print(json.dumps(score_index(index, data, encoders), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
