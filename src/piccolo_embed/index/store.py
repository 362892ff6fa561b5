"""On-disk layout of an index directory and its read side.

Everything is append-only, and ``manifest.json`` is the commit record; it is always written last,
atomically. It states how many rows and text bytes are committed, so bytes that an interrupted build or
append left past those marks are invisible to readers and are truncated by the next build.

::

    manifest.json     commit record (format, generation, row count, model fingerprint, index type, sources,
                      checksums of the committed bytes of every other file; see checksum.py)
    probes.npy        the model's probe embeddings (see fingerprint.py)
    embeddings.f32    row-major float32, ``count x dim``, little-endian; np.memmap-able
    texts.jsonl       one ``{"id", "text", "title"?}`` line per row
    offsets.u64       byte offset of each row's line in texts.jsonl (uint64), for random access
    ann-<gen>.faiss   faiss IVF/HNSW index (absent for ``flat``)
    checkpoint.json   progress of a running or interrupted build (absent once committed)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from piccolo_embed.errors import CorruptIndexError, IncompleteIndexError, IndexNotFoundError
from piccolo_embed.index import checksum
from piccolo_embed.index.ann import AnnParams, IndexType, read_ann
from piccolo_embed.index.fingerprint import ModelFingerprint
from piccolo_embed.types import Role

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    import faiss

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROBES = "probes.npy"
EMBEDDINGS = "embeddings.f32"
TEXTS = "texts.jsonl"
OFFSETS = "offsets.u64"
CHECKPOINT = "checkpoint.json"
LOCK = ".lock"
DATA_FILES = (EMBEDDINGS, TEXTS, OFFSETS)
ANN_NAME = re.compile(r"ann-[0-9]+\.faiss")  # the only names a manifest may give its faiss file
SEARCH_BLOCK_BYTES = 32 << 20  # exact search reads about this much of embeddings.f32 at a time


@dataclass(frozen=True)
class Manifest:
    """The commit record of an index.

    Attributes:
        generation: Incremented by every committed build or append.
        count: Committed rows.
        texts_bytes: Committed bytes of ``texts.jsonl``.
        index_type: How the index is searched.
        passage_role: Role the passages were encoded with (``passage`` for s2p, ``none`` for s2s).
        model: Fingerprint of the model that encoded them.
        ann_file: The faiss file for IVF/HNSW, ``None`` for flat.
        ann_params: Settings of the approximate index.
        sources: ``{"path", "first_row", "rows", "skipped_duplicates"}`` per committed build/append.
        checksums: Per file name, the :mod:`~piccolo_embed.index.checksum` record of its committed bytes.
    """

    generation: int
    count: int
    texts_bytes: int
    index_type: IndexType
    passage_role: Role
    model: ModelFingerprint
    ann_file: str | None = None
    ann_params: AnnParams = field(default_factory=AnnParams)
    sources: tuple[dict[str, object], ...] = ()
    checksums: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """JSON form (``format_version`` included)."""
        return {
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "count": self.count,
            "texts_bytes": self.texts_bytes,
            "dim": self.model.dim,
            "index_type": self.index_type.value,
            "passage_role": self.passage_role.value,
            "model": self.model.to_json(),
            "ann_file": self.ann_file,
            "ann_params": self.ann_params.to_json(),
            "sources": list(self.sources),
            "checksums": self.checksums,
        }

    @classmethod
    def from_json(cls, payload: dict, probes: np.ndarray) -> Manifest:
        """Inverse of :meth:`to_json`; file names are checked to be ones an index writes (see :func:`contained`)."""
        if payload.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(f"unsupported index format_version {payload.get('format_version')!r}")
        ann_file = payload.get("ann_file")
        if ann_file is not None and not (isinstance(ann_file, str) and ANN_NAME.fullmatch(ann_file)):
            raise CorruptIndexError(f"ann_file {ann_file!r} is not an index file name (ann-<generation>.faiss)")
        checksums = payload.get("checksums") or {}
        unknown = sorted(set(checksums) - {*DATA_FILES, PROBES, ann_file})
        if unknown:
            raise CorruptIndexError(f"checksums name files that are not part of the index: {unknown}")
        return cls(
            generation=int(payload["generation"]),
            count=int(payload["count"]),
            texts_bytes=int(payload["texts_bytes"]),
            index_type=IndexType.parse(payload["index_type"]),
            passage_role=Role.parse(payload["passage_role"]),
            model=ModelFingerprint.from_json(payload["model"], probes),
            ann_file=ann_file,
            ann_params=AnnParams.from_json(payload.get("ann_params") or {}),
            sources=tuple(payload.get("sources") or ()),
            checksums=checksums,
        )


def contained(directory: Path, name: str) -> Path:
    """``directory / name``, refused unless it is a plain file name that resolves inside ``directory``.

    Names come from the manifest, which a user or attacker may edit; ``../x`` must not make an append delete
    or a search read a file elsewhere.
    """
    path = directory / name
    if Path(name).name != name or name in ("", ".", "..") or path.resolve().parent != directory.resolve():
        raise CorruptIndexError(f"{directory / MANIFEST}: {name!r} is not a file inside the index directory")
    return path


def read_manifest(directory: Path) -> Manifest | None:
    """The committed manifest of ``directory``, or ``None`` when nothing was committed yet.

    Raises:
        CorruptIndexError: The manifest or the probes are unreadable or lack a key; names the file.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return Manifest.from_json(payload, np.load(directory / PROBES, allow_pickle=False))
    except CorruptIndexError as err:
        raise CorruptIndexError(f"{path}: {err}") from None
    except KeyError as err:
        raise CorruptIndexError(f"{path}: missing key {err}") from None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise CorruptIndexError(f"{path}: unreadable index ({type(err).__name__}: {err})") from None


class IndexStore:
    """Read access to a committed index: vectors by block or row, texts by row, and the faiss index."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest
        self._check_sizes()

    @classmethod
    def open(cls, directory: str | Path) -> IndexStore:
        """Open the committed state of ``directory``.

        Raises:
            IncompleteIndexError: A build started but never committed.
            IndexNotFoundError: There is no index at all.
            CorruptIndexError: Files are shorter than the manifest says, or fail their sampled checksums.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest is None:
            if (directory / CHECKPOINT).is_file():
                raise IncompleteIndexError(
                    f"{directory}: the index build was interrupted before it finished; "
                    f"rerun the same `piccolo-embed index` command to resume it"
                )
            raise IndexNotFoundError(f"{directory}: no index here (no {MANIFEST})")
        store = cls(directory, manifest)
        store.verify(full=False)
        return store

    def verify(self, *, full: bool = True) -> None:
        """Check every file against the manifest's checksums; ``full`` also rehashes all bytes and checks rows.

        Without ``full`` only sampled blocks of large files are hashed (milliseconds); with it every committed
        byte is, every vector must be finite and unit-length, and the text offsets must be in order.

        Raises:
            CorruptIndexError: Naming the first file that does not match.
        """
        if not self.manifest.checksums:
            if full:
                raise CorruptIndexError(
                    f"{self.directory}: the index records no checksums (built by an older "
                    "version); rebuild it with --overwrite to make it verifiable"
                )
            log.warning("%s: the index records no checksums (built by an older version)", self.directory)
            return
        for name, record in self.manifest.checksums.items():
            problem = checksum.mismatch(contained(self.directory, name), record, full=full)
            if problem:
                raise CorruptIndexError(f"{self.directory / name}: {problem}")
        if full:
            self._check_rows()

    def _check_rows(self) -> None:
        for first_row, block in self.iter_blocks():
            bad = ~np.isfinite(block).all(axis=1) | (np.abs(np.linalg.norm(block, axis=1) - 1.0) > 1e-3)
            if bad.any():
                row = first_row + int(np.argmax(bad))
                raise CorruptIndexError(f"{self.directory / EMBEDDINGS}: row {row} is not a finite unit vector")
        if self.count:
            offsets = np.fromfile(self.directory / OFFSETS, dtype="<u8", count=self.count).astype(np.int64)
            if offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] >= self.manifest.texts_bytes:
                raise CorruptIndexError(f"{self.directory / OFFSETS}: text offsets are out of order")

    @property
    def count(self) -> int:
        """Committed rows."""
        return self.manifest.count

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.manifest.model.dim

    def _check_sizes(self) -> None:
        need = {
            EMBEDDINGS: self.count * self.dim * 4,
            TEXTS: self.manifest.texts_bytes,
            OFFSETS: self.count * 8,
        }
        for name, size in need.items():
            path = self.directory / name
            have = path.stat().st_size if path.is_file() else -1
            if have < size:
                raise CorruptIndexError(f"{path}: holds {max(have, 0)} bytes, the manifest needs {size}")

    def embeddings(self) -> np.ndarray:
        """All committed vectors as a read-only ``(count, dim)`` memory map (nothing is read until used)."""
        if self.count == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.directory / EMBEDDINGS, dtype="<f4", mode="r", shape=(self.count, self.dim))

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, vectors)`` blocks read with plain file reads.

        Plain reads rather than the memory map keep the process's resident memory at one block: mapped
        pages would count towards it until unmapped.
        """
        block_rows = block_rows or max(1024, SEARCH_BLOCK_BYTES // (4 * self.dim))
        with (self.directory / EMBEDDINGS).open("rb") as handle:
            for start in range(0, self.count, block_rows):
                rows = min(block_rows, self.count - start)
                block = np.fromfile(handle, dtype="<f4", count=rows * self.dim)
                yield start, block.reshape(rows, self.dim)

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """The vectors of ``rows`` (a copy, in the given order)."""
        return np.array(self.embeddings()[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def entries(self, rows: Sequence[int]) -> list[dict[str, str]]:
        """``{"id", "text", "title"?}`` for each of ``rows``, in the given order."""
        if not len(rows):
            return []
        offsets = np.memmap(self.directory / OFFSETS, dtype="<u8", mode="r", shape=(self.count,))
        out = []
        with (self.directory / TEXTS).open("rb") as handle:
            for row in rows:
                handle.seek(int(offsets[int(row)]))
                out.append(json.loads(handle.readline()))
        return out

    def iter_entries(self) -> Iterator[dict[str, str]]:
        """Stream every committed ``{"id", "text", "title"?}`` in row order (one line in memory at a time)."""
        with (self.directory / TEXTS).open("rb") as handle:
            for _ in range(self.count):
                yield json.loads(handle.readline())

    def load_ann(self) -> faiss.Index | None:
        """The faiss index of an IVF/HNSW index; ``None`` for flat."""
        if self.manifest.ann_file is None:
            return None
        path = contained(self.directory, self.manifest.ann_file)
        try:
            return read_ann(path)
        except RuntimeError as err:  # faiss reports a broken file as a multi-line C++ exception
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
            raise CorruptIndexError(f"{path}: not a readable faiss index ({reason})") from None
