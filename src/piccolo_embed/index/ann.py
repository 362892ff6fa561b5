"""Vector search kernels: exact inner product over blocks of rows, and faiss IVF / HNSW for large corpora.

Exact search keeps no index in memory. The ``flat`` index type reads the stored embeddings a block at a
time and merges per-block top-k with faiss's ``ResultHeap``. A faiss ``IndexFlatIP`` would search the same
way but needs a full in-RAM copy of a file we already have on disk. IVF and HNSW do hold their vectors
(and HNSW its graph) in memory; that is the price of sub-linear search.

faiss is imported inside the functions that use it: the CLI reads :class:`IndexType` at start-up, and faiss comes
only with the ``mining`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from piccolo_embed.atomic import publish_file
from piccolo_embed.types import HelpfulEnum

if TYPE_CHECKING:
    import faiss


class IndexType(HelpfulEnum):
    """How an index answers queries."""

    FLAT = "flat"  # exact: every stored vector is scored
    IVF = "ivf"  # inverted lists over k-means cells; approximate, ``nprobe`` cells searched
    HNSW = "hnsw"  # graph search; approximate, fastest queries, most memory


@dataclass(frozen=True)
class AnnParams:
    """Settings of an approximate index (ignored by ``flat``).

    Attributes:
        nlist: IVF cells; ``0`` picks about ``4 * sqrt(n)`` at the first build.
        nprobe: IVF cells searched per query (more is slower and more accurate).
        hnsw_m: HNSW neighbours per node.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW query-time beam width.
    """

    nlist: int = 0
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def to_json(self) -> dict[str, int]:
        """Manifest form."""
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, payload: dict[str, int]) -> AnnParams:
        """Inverse of :meth:`to_json`; unknown keys are an error so typos in edited manifests surface."""
        return cls(**payload)


def _metric() -> int:
    """Inner product: embeddings are L2-normalised, so it is cosine."""
    import faiss

    return faiss.METRIC_INNER_PRODUCT


def exact_search(
    queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of ``queries`` against rows delivered in blocks.

    Args:
        queries: ``(nq, dim)`` float32.
        blocks: ``(first_row, (rows, dim) float32)`` pairs covering the corpus in any order.
        k: Results per query.

    Returns:
        ``(scores, rows)``, each ``(nq, k)``, best first; rows are ``-1`` (score ``-inf``) where the corpus
        has fewer than ``k`` rows.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for first_row, block in blocks:
        if len(block) == 0:
            continue
        scores, local = faiss.knn(queries, np.ascontiguousarray(block), min(k, len(block)), metric=_metric())
        heap.add_result(scores, np.where(local >= 0, local + first_row, -1))
    heap.finalize()
    scores = np.where(heap.I >= 0, heap.D, -np.inf).astype(np.float32)
    return scores, heap.I


def choose_nlist(count: int) -> int:
    """IVF cells for ``count`` vectors: ``4 * sqrt(n)``, but at least 39 training points per cell (faiss)."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def new_ann_index(index_type: IndexType, dim: int, params: AnnParams, train: np.ndarray | None) -> faiss.Index:
    """An empty approximate index; IVF is trained on ``train`` (a sample of the vectors to be added)."""
    import faiss

    if index_type is IndexType.HNSW:
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, _metric())
        index.hnsw.efConstruction = params.ef_construction
        return index
    if index_type is IndexType.IVF and train is not None:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist or choose_nlist(len(train)), _metric())
        index.train(np.ascontiguousarray(train, dtype=np.float32))  # faiss's wrapper keeps `quantizer` alive
        return index
    raise ValueError(f"cannot build a faiss index of type {index_type.value} (flat is searched exactly)")


def configure_search(index: faiss.Index, params: AnnParams) -> None:
    """Apply the query-time knobs of ``params`` to a loaded index."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.nprobe = params.nprobe
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = params.ef_search


def ann_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search a faiss index; same return convention as :func:`exact_search`."""
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows


def write_ann(index: faiss.Index, path: Path) -> None:
    """Write ``index`` under a temporary name, sync it and rename it into place: a crash never leaves half a file."""
    import faiss

    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    publish_file(tmp, path)


def read_ann(path: Path) -> faiss.Index:
    """Load a faiss index written by :func:`write_ann`."""
    import faiss

    return faiss.read_index(str(path))
