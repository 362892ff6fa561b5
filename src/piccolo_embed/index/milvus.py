"""Write a corpus index to Milvus, and search it with the model fingerprint check of the file index.

``milvus:PATH`` (a local file: Milvus Lite, nothing to run) or ``milvus:http://host:19530`` (a server or
cluster; ``PICCOLO_MILVUS_TOKEN`` authenticates) names the database; ``#NAME`` after it picks the collection
(default ``piccolo``). Each row holds the corpus id (primary key), the vector, its row number, text and title.
The collection's properties hold what the file index keeps in ``manifest.json``: the model fingerprint and
probe embeddings, the passage role, and the build progress.

Writes are upserts keyed by corpus id, and the progress property records the last finished source line after
every chunk, so a killed build resumes there without duplicating rows. A collection whose build has not
finished is refused by :class:`MilvusSearcher`, like an uncommitted file index.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from piccolo_embed.index.ann import AnnParams, IndexType
from piccolo_embed.index.build import BuildMode, ChunkSource, EncoderChunks, source_identity
from piccolo_embed.index.corpus import Passage
from piccolo_embed.index.fingerprint import ModelFingerprint, check_same_model, fingerprint_encoder
from piccolo_embed.index.search import Hit, checked_query_role
from piccolo_embed.index.store import IncompleteIndexError, IndexNotFoundError
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import Role

log = logging.getLogger(__name__)

SCHEME = "milvus:"
DEFAULT_COLLECTION = "piccolo"
TOKEN_ENV = "PICCOLO_MILVUS_TOKEN"
MAX_VARCHAR = 65_535  # Milvus's limit for a VARCHAR field, in bytes
MAX_ID = 512
PROPERTY = "piccolo.{}"  # collection property names


@dataclass(frozen=True)
class MilvusTarget:
    """Where a Milvus-backed index lives.

    Attributes:
        uri: A local file path (Milvus Lite) or a server URI (``http://host:19530``).
        collection: Collection name.
    """

    uri: str
    collection: str = DEFAULT_COLLECTION

    @classmethod
    def parse(cls, value: str) -> MilvusTarget:
        """Parse ``milvus:PATH_OR_URI[#COLLECTION]``; a relative path is made absolute.

        Raises:
            ValueError: ``value`` does not start with ``milvus:`` or names nothing.
        """
        if not value.startswith(SCHEME):
            raise ValueError(f"--store: expected milvus:PATH_OR_URI (e.g. milvus:./my.db), got {value!r}")
        rest, _, collection = value[len(SCHEME) :].partition("#")
        if not rest:
            raise ValueError(f"--store {value!r}: no path or URI after 'milvus:'")
        uri = rest if "://" in rest else str(Path(rest).expanduser().resolve())
        return cls(uri=uri, collection=collection or DEFAULT_COLLECTION)

    @property
    def is_lite(self) -> bool:
        """Whether this is a local Milvus Lite file (rather than a server)."""
        return "://" not in self.uri

    def connect(self) -> Any:
        """A ``pymilvus.MilvusClient`` for :attr:`uri` (Milvus Lite starts for a local file)."""
        try:
            from pymilvus import MilvusClient
        except ImportError as err:
            raise ImportError("Milvus support needs the extra: pip install 'piccolo-embed[milvus]'") from err
        if self.is_lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        return MilvusClient(self.uri, token=os.environ.get(TOKEN_ENV, ""))


def is_milvus(value: str | None) -> bool:
    """Whether a ``--store``/``--index`` value names a Milvus target."""
    return bool(value) and str(value).startswith(SCHEME)


def index_params(index_type: IndexType, params: AnnParams, count_hint: int = 0) -> dict[str, Any]:
    """Milvus vector index settings for our index types (inner product on normalised vectors = cosine)."""
    if index_type is IndexType.IVF:
        nlist = params.nlist or max(16, min(65_536, int(4 * max(count_hint, 1) ** 0.5)))
        return {"index_type": "IVF_FLAT", "metric_type": "IP", "params": {"nlist": nlist}}
    if index_type is IndexType.HNSW:
        return {
            "index_type": "HNSW",
            "metric_type": "IP",
            "params": {"M": params.hnsw_m, "efConstruction": params.ef_construction},
        }
    return {"index_type": "FLAT", "metric_type": "IP", "params": {}}


@dataclass(frozen=True)
class MilvusState:
    """What the collection properties record (the Milvus counterpart of ``manifest.json`` + checkpoint)."""

    model: ModelFingerprint
    passage_role: Role
    index_type: IndexType
    committed: bool = False
    generation: int = 0
    count: int = 0
    progress: dict[str, Any] | None = None  # {"source", "lines_done", "rows"} of a running build

    def properties(self) -> dict[str, str]:
        """As collection properties (strings)."""
        state = {k: getattr(self, k) for k in ("committed", "generation", "count", "progress")}
        return {
            PROPERTY.format("model"): json.dumps(self.model.to_json(), ensure_ascii=False),
            PROPERTY.format("probes"): base64.b64encode(self.model.probes.astype("<f4").tobytes()).decode(),
            PROPERTY.format("passage_role"): self.passage_role.value,
            PROPERTY.format("index_type"): self.index_type.value,
            PROPERTY.format("state"): json.dumps(state, ensure_ascii=False),
        }

    @classmethod
    def from_properties(cls, props: dict[str, str], where: str) -> MilvusState:
        """Inverse of :meth:`properties`."""
        if PROPERTY.format("model") not in props:
            raise IndexNotFoundError(f"{where}: the collection was not written by piccolo-embed (no model recorded)")
        model = json.loads(props[PROPERTY.format("model")])
        probes = np.frombuffer(base64.b64decode(props[PROPERTY.format("probes")]), dtype="<f4")
        state = json.loads(props[PROPERTY.format("state")])
        return cls(
            model=ModelFingerprint.from_json(model, probes.reshape(-1, int(model["dim"]))),
            passage_role=Role.parse(props[PROPERTY.format("passage_role")]),
            index_type=IndexType.parse(props[PROPERTY.format("index_type")]),
            **state,
        )


class MilvusStore:
    """An open collection and its recorded state."""

    def __init__(self, target: MilvusTarget, client: Any, state: MilvusState) -> None:
        self.target = target
        self.client = client
        self.state = state
        self.last_build_rows = 0  # passages written by the last build or append through this store

    @classmethod
    def open(cls, target: MilvusTarget | str, *, allow_incomplete: bool = False, client: Any = None) -> MilvusStore:
        """Open a built collection.

        Raises:
            IndexNotFoundError: No such collection, or not one of ours.
            IncompleteIndexError: Its build was interrupted (rerun the same command to resume).
        """
        target = MilvusTarget.parse(target) if isinstance(target, str) else target
        client = client or target.connect()
        where = f"milvus:{target.uri}#{target.collection}"
        if not client.has_collection(target.collection):
            raise IndexNotFoundError(f"{where}: no such collection")
        props = client.describe_collection(target.collection).get("properties") or {}
        state = MilvusState.from_properties(props, where)
        client.load_collection(target.collection)  # a reopened collection starts released
        if not state.committed and not allow_incomplete:
            raise IncompleteIndexError(
                f"{where}: the index build was interrupted before it finished; rerun the same "
                f"`piccolo-embed index` command to resume it"
            )
        return cls(target, client, state)

    @property
    def count(self) -> int:
        """Rows in the collection (corpus ids are unique keys, so a repeated id counts once)."""
        result = self.client.query(self.target.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def save_state(self, state: MilvusState) -> None:
        """Record ``state`` in the collection properties."""
        self.client.alter_collection_properties(self.target.collection, properties=state.properties())
        self.state = state

    def upsert(self, passages: Sequence[Passage], vectors: np.ndarray, first_row: int) -> None:
        """Write one chunk; a row already stored under the same id is replaced, never duplicated."""
        rows = [
            {
                "id": _checked(p.id if p.id is not None else str(first_row + i), MAX_ID, "id", p),
                "vector": vector.tolist(),
                "row": first_row + i,
                "text": _checked(p.text, MAX_VARCHAR, "text", p),
                "title": _checked(p.title, MAX_VARCHAR, "title", p),
            }
            for i, (p, vector) in enumerate(zip(passages, vectors, strict=True))
        ]
        self.client.upsert(self.target.collection, rows)


def _checked(value: str, limit: int, field: str, passage: Passage) -> str:
    if len(value.encode("utf-8")) > limit:
        raise ValueError(f"corpus line {passage.line}: {field}: longer than Milvus allows ({limit} bytes)")
    return value


def _create_collection(target: MilvusTarget, client: Any, state: MilvusState, params: AnnParams) -> MilvusStore:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=state.model.dim)
    schema.add_field("row", DataType.INT64)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR)
    settings = client.prepare_index_params()
    settings.add_index("vector", **index_params(state.index_type, params))
    client.create_collection(target.collection, schema=schema, index_params=settings, properties=state.properties())
    return MilvusStore(target, client, state)


def build_milvus(
    encoder: Encoder,
    source: str | Path | Iterable[Passage],
    target: MilvusTarget | str,
    *,
    mode: BuildMode | str = BuildMode.CREATE,
    chunk_size: int = 4096,
    index_type: IndexType | str | None = None,
    passage_role: Role | str | None = None,
    model_name: str | None = None,
    chunks: ChunkSource | None = None,
) -> MilvusStore:
    """Encode ``source`` into a Milvus collection; arguments as :func:`~piccolo_embed.index.build_index`.

    An interrupted build of the same file resumes after its last finished chunk (rows are upserted by id).
    """
    target = MilvusTarget.parse(target) if isinstance(target, str) else target
    fingerprint = fingerprint_encoder(encoder, name=model_name)
    store = _prepare(target, BuildMode.parse(mode), fingerprint, index_type, passage_role)
    source_key = source_identity(source)
    progress = store.state.progress or {}
    if source_key is None or progress.get("source") != source_key:
        progress = {"source": source_key, "lines_done": 0, "rows": store.state.count}
    else:
        log.info("resuming: %d rows already written (source line %d)", progress["rows"], progress["lines_done"])
    encoded = (chunks or EncoderChunks(encoder))(
        source,
        start_line=progress["lines_done"],
        role=store.state.passage_role,
        dim=fingerprint.dim,
        chunk_size=chunk_size,
    )
    for chunk, vectors in encoded:
        store.upsert(chunk, vectors, progress["rows"])
        if target.is_lite:  # a server persists acknowledged writes in its log; Lite only on flush
            store.client.flush(target.collection)
        progress = {**progress, "lines_done": chunk[-1].line, "rows": progress["rows"] + len(chunk)}
        store.save_state(replace(store.state, progress=progress))
        log.info("wrote %d passages to %s", progress["rows"], target.collection)
    store.client.flush(target.collection)
    store.last_build_rows = progress["rows"] - store.state.count
    state = replace(store.state, committed=True, generation=store.state.generation + 1, progress=None)
    store.save_state(replace(state, count=store.count))
    return store


def _prepare(
    target: MilvusTarget,
    mode: BuildMode,
    fingerprint: ModelFingerprint,
    index_type: IndexType | str | None,
    passage_role: Role | str | None,
) -> MilvusStore:
    """The collection to write to: created, reopened to resume or append, or dropped and recreated."""
    client = target.connect()
    where = f"milvus:{target.uri}#{target.collection}"
    if mode is BuildMode.OVERWRITE and client.has_collection(target.collection):
        client.drop_collection(target.collection)
    if not client.has_collection(target.collection):
        if mode is BuildMode.APPEND:
            raise FileNotFoundError(f"{where}: no index to append to; build it first (without --append)")
        role = Role.PASSAGE if passage_role is None else Role.parse(passage_role)
        kind = IndexType.FLAT if index_type is None else IndexType.parse(index_type)
        return _create_collection(target, client, MilvusState(fingerprint, role, kind), AnnParams())
    store = MilvusStore.open(target, allow_incomplete=True, client=client)
    check_same_model(store.state.model, fingerprint)
    if store.state.committed and mode is BuildMode.CREATE:
        raise FileExistsError(f"{where}: an index exists; use --append to extend it or --overwrite")
    role = store.state.passage_role if passage_role is None else Role.parse(passage_role)
    kind = store.state.index_type if index_type is None else IndexType.parse(index_type)
    if role is not store.state.passage_role or kind is not store.state.index_type:
        raise ValueError(
            f"{where}: the index is {store.state.index_type.value} with {store.state.passage_role.value} passages; "
            f"cannot add {kind.value} with {role.value} passages"
        )
    return store


class MilvusSearcher:
    """A Milvus collection paired with the encoder that built it (the counterpart of ``Searcher``).

    Args:
        store: The collection.
        encoder: Must reproduce the recorded model fingerprint (checked here, once).
        query_role: As in ``Searcher``: ``query`` for s2p collections, ``none`` for s2s by default.
        search_params: Milvus search parameters (e.g. ``{"nprobe": 32}`` for IVF, ``{"ef": 128}`` for HNSW).

    Raises:
        ModelMismatchError: ``encoder`` is not the model that built the collection.
    """

    def __init__(
        self,
        store: MilvusStore,
        encoder: Encoder,
        *,
        query_role: Role | str | None = None,
        search_params: dict[str, Any] | None = None,
    ) -> None:
        self.query_role = checked_query_role(store.state.model, store.state.passage_role, encoder, query_role)
        self.store = store
        self.encoder = encoder
        self.search_params = {"metric_type": "IP", "params": dict(search_params or {})}

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector, best first."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        results = self.store.client.search(
            self.store.target.collection,
            data=np.asarray(queries, dtype=np.float32).tolist(),
            limit=k,
            output_fields=["row", "text", "title"],
            search_params=self.search_params,
        )
        return [
            [
                Hit(
                    id=str(hit["id"]),
                    score=float(hit["distance"]),
                    text=hit["entity"]["text"],
                    title=hit["entity"].get("title", ""),
                    row=int(hit["entity"]["row"]),
                )
                for hit in per_query
            ]
            for per_query in results
        ]

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Encode ``queries`` and return the ``k`` best passages of each, best first."""
        queries = validate_texts(queries)
        if not queries:
            return []
        return self.search_vectors(np.asarray(self.encoder.encode(queries, role=self.query_role)), k)


def iter_rows(store: MilvusStore, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Every stored row (id, row, text, title, vector), for checks and exports."""
    iterator = store.client.query_iterator(
        store.target.collection, batch_size=batch_size, filter="", output_fields=["row", "text", "title", "vector"]
    )
    while batch := iterator.next():
        yield from batch
    iterator.close()
