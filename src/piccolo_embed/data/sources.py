"""Training datasets: validated once from JSONL into memory-mapped Arrow caches, then mixed for the sampler.

Each file is read through :func:`piccolo_embed.data.records.read_records`, so a bad line fails with
``file:line: field`` (or, when asked, is skipped and counted in the log), and written once to an Arrow file
keyed by the file's path, size and modification time plus the record kind. Later runs, and every rank of a
distributed run, memory-map that file instead of parsing JSON again.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import torch

from piccolo_embed import distributed
from piccolo_embed.data.records import OnError, ReadStats, RecordKind, ScoredPair, TripletRecord, read_records
from piccolo_embed.data.sampler import decode_key
from piccolo_embed.defaults import cache_root
from piccolo_embed.types import TaskKind

log = logging.getLogger(__name__)

RESOURCE_PREFIX = "resource:"
CACHE_FORMAT = 1

_FEATURES = {
    RecordKind.TRIPLET: datasets.Features(
        {
            "query": datasets.Value("string"),
            "pos": datasets.List(datasets.Value("string")),
            "neg": datasets.List(datasets.Value("string")),
        }
    ),
    RecordKind.SCORED: datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "score": datasets.Value("float64"),
        }
    ),
}


_FEATURES[RecordKind.LABELLED] = _FEATURES[RecordKind.TRIPLET]  # the label picks the loss, not the columns


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset is and how it is used.

    Attributes:
        name: Label in logs.
        path: The JSONL file.
        kind: ``s2p`` or ``s2s``.
        records: Record shape of every line.
        weight: Sampling-weight multiplier.
        cap: Most records drawn per epoch (``None``: no cap).
        num_negatives: Negatives per record for this dataset (``None``: the run's ``num_negatives``).
    """

    name: str
    path: Path
    kind: TaskKind = TaskKind.S2P
    records: RecordKind = RecordKind.TRIPLET
    weight: float = 1.0
    cap: int | None = None
    num_negatives: int | None = None


@dataclass(frozen=True)
class TrainSource:
    """A loaded dataset: its spec, its memory-mapped table and what reading it cost."""

    spec: SourceSpec
    table: datasets.Dataset
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.table)


@dataclass(frozen=True)
class RawBatch:
    """Rows of one dataset as the sampler asked for them (columns → lists), with their sample keys."""

    source: SourceSpec
    rows: dict[str, list[Any]]
    keys: tuple[int, ...]


def resolve_data_file(text: str) -> Path:
    """A config's ``file``: a path, or ``resource:NAME`` for a file bundled in ``piccolo_embed/resources``."""
    if text.startswith(RESOURCE_PREFIX):
        return Path(str(resources.files("piccolo_embed") / "resources" / text.removeprefix(RESOURCE_PREFIX)))
    return Path(text).expanduser()


def default_cache_dir() -> Path:
    """``$PICCOLO_EMBED_CACHE/arrow``, else ``~/.cache/piccolo-embed/arrow``."""
    return cache_root() / "arrow"


def cache_key(path: Path, records: RecordKind, on_error: OnError) -> str:
    """Key of a file's Arrow cache: resolved path, size and mtime (any edit makes a new cache), record kind.

    ``on_error`` is part of the key so that a cache built while skipping bad lines never satisfies a strict run.
    """
    stat = path.stat()
    text = f"{CACHE_FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{records.value}|{on_error.value}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def load_source(spec: SourceSpec, *, cache_dir: Path, on_error: OnError = OnError.RAISE) -> TrainSource:
    """Validate ``spec.path`` into an Arrow cache (once) and memory-map it.

    Raises:
        RecordError: A malformed line when ``on_error`` is ``raise``.
        FileNotFoundError: The file does not exist.
    """
    if not spec.path.is_file():
        raise FileNotFoundError(f"dataset {spec.name!r}: no such file {spec.path}")
    target = cache_dir / f"{spec.path.stem}-{cache_key(spec.path, spec.records, on_error)}"
    if not (target / "meta.json").is_file():
        _convert(spec, target, on_error)
    meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
    table = datasets.Dataset.from_file(str(target / "data.arrow"))
    if meta["skipped"]:
        log.warning(
            "dataset %s: skipped %d bad record(s) of %d (first: %s)",
            spec.name,
            meta["skipped"],
            meta["skipped"] + meta["read"],
            meta["errors"][0],
        )
    if len(table) == 0:
        raise ValueError(f"dataset {spec.name!r}: {spec.path} holds no valid records")
    return TrainSource(spec, table, meta["skipped"])


def load_sources(
    specs: Sequence[SourceSpec], *, cache_dir: Path | None = None, on_error: OnError = OnError.RAISE
) -> list[TrainSource]:
    """Load every dataset; in a distributed run rank 0 builds missing caches while the others wait."""
    cache_dir = cache_dir or default_cache_dir()
    if distributed.is_main():
        for spec in specs:
            load_source(spec, cache_dir=cache_dir, on_error=on_error)
    distributed.barrier()
    return [load_source(spec, cache_dir=cache_dir, on_error=on_error) for spec in specs]


def _convert(spec: SourceSpec, target: Path, on_error: OnError) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    stats = ReadStats()
    try:
        writer = datasets.arrow_writer.ArrowWriter(features=_FEATURES[spec.records], path=str(tmp / "data.arrow"))
        with writer:
            for record in read_records(spec.path, spec.records, on_error=on_error, stats=stats):
                writer.write(_row(record))
            writer.finalize()
        meta = {"source": str(spec.path), "read": stats.read, "skipped": stats.skipped, "errors": stats.errors[:5]}
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("dataset %s: cached %d records from %s in %s", spec.name, stats.read, spec.path, target)


def _row(record: TripletRecord | ScoredPair) -> dict[str, Any]:
    if isinstance(record, TripletRecord):
        return {"query": record.query, "pos": list(record.pos), "neg": list(record.neg)}
    return {"sentence1": record.sentence1, "sentence2": record.sentence2, "score": record.score}


class SourceMixture(torch.utils.data.Dataset):
    """Several datasets behind one index space, fetched a whole batch at a time.

    Global index ``g`` is row ``g - offset[i]`` of dataset ``i``; the sampler's sample keys add a draw number on
    top (see :func:`piccolo_embed.data.sampler.decode_key`). ``__getitems__`` returns one :class:`RawBatch`,
    which the DataLoader hands to the collator as is.
    """

    def __init__(self, sources: Sequence[TrainSource]) -> None:
        self.sources = list(sources)
        self.offsets = [0]
        for source in self.sources:
            self.offsets.append(self.offsets[-1] + len(source))

    @property
    def sizes(self) -> list[int]:
        """Records per dataset."""
        return [len(source) for source in self.sources]

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, key: int) -> tuple[int, int]:
        """``(dataset index, row)`` of a sample key."""
        _, index = decode_key(key, len(self))
        source = bisect.bisect_right(self.offsets, index) - 1
        return source, index - self.offsets[source]

    def __getitems__(self, keys: list[int]) -> RawBatch:
        located = [self.locate(key) for key in keys]
        source = located[0][0]
        if any(index != source for index, _ in located):
            raise ValueError("a batch mixes datasets; the sampler must draw every batch from one dataset")
        rows = self.sources[source].table[[row for _, row in located]]
        return RawBatch(self.sources[source].spec, rows, tuple(keys))

    def __getitem__(self, key: int) -> RawBatch:
        return self.__getitems__([key])
