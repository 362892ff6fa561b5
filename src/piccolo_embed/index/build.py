"""Build or extend an index in chunks, with memory bounded by the chunk and crash-safe commits.

A build streams passages, encodes ``chunk_size`` of them at a time and appends vectors, texts and offsets
to the data files. After each chunk it syncs them and records its progress in ``checkpoint.json``. The
manifest is written only at the end. An interrupted build therefore leaves the last committed state
readable (or nothing, for a first build), and rerunning the same command resumes after the last finished
chunk instead of re-encoding. An overwrite builds the new index in a directory beside the old one and swaps
the two only when it is complete, so the old index stays searchable until then.
Passage ids must be unique within the index (see guards.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from piccolo_embed.atomic import replace_dir, write_bytes_atomic, write_json_atomic
from piccolo_embed.errors import IndexLockedError
from piccolo_embed.index import checksum
from piccolo_embed.index.ann import IndexType, new_ann_index, write_ann
from piccolo_embed.index.corpus import Passage, read_corpus
from piccolo_embed.index.fingerprint import ModelFingerprint, check_same_model, fingerprint_encoder
from piccolo_embed.index.guards import EmptyCorpusError, IdFilter, check_corpus, check_replaceable, indexed_ids
from piccolo_embed.index.store import (
    CHECKPOINT,
    DATA_FILES,
    EMBEDDINGS,
    LOCK,
    MANIFEST,
    OFFSETS,
    PROBES,
    TEXTS,
    IndexStore,
    Manifest,
    contained,
    read_manifest,
)
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import HelpfulEnum, Role

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4096  # ~85 MB of working memory with the tiny model (tokeniser output dominates)
IVF_TRAIN_ROWS = 100_000  # a sample of this many vectors trains the IVF cells


class BuildMode(HelpfulEnum):
    """What to do with an index that already exists in the target directory."""

    CREATE = "create"  # refuse if there is one (an interrupted first build is resumed)
    APPEND = "append"  # add passages to it, encoding only the new ones
    OVERWRITE = "overwrite"  # discard it and build from scratch


class ChunkSource(Protocol):
    """Turns a corpus into encoded chunks, resuming after a source line; the seam for Ray (see ``parallel``)."""

    def __call__(
        self, source: str | Path | Iterable[Passage], *, start_line: int, role: Role, dim: int, chunk_size: int
    ) -> Iterator[tuple[list[Passage], np.ndarray]]:
        """Yield ``(passages, vectors)`` in corpus order; ``vectors`` is ``(len(passages), dim)`` float32."""
        ...


@dataclass(frozen=True)
class EncoderChunks:
    """The plain chunk source: read the corpus in this process and encode each chunk with ``encoder``.

    ``encoder`` may itself be an :class:`~piccolo_embed.parallel.EncoderPool` spreading each chunk over devices.
    """

    encoder: Encoder

    def __call__(
        self, source: str | Path | Iterable[Passage], *, start_line: int, role: Role, dim: int, chunk_size: int
    ) -> Iterator[tuple[list[Passage], np.ndarray]]:
        """See :class:`ChunkSource`."""
        passages = read_corpus(source, start_line=start_line) if isinstance(source, str | Path) else iter(source)
        while chunk := list(islice(passages, chunk_size)):
            yield chunk, encode_chunk(self.encoder, chunk, role, dim)


@dataclass(frozen=True)
class _Progress:
    """Where the data files end: committed state plus finished chunks."""

    rows: int
    texts_bytes: int
    lines_done: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class _Job:
    """What to build, independent of where (an overwrite builds it in a directory beside the target)."""

    encoder: Encoder
    source: str | Path | Iterable[Passage]
    chunk_size: int
    index_type: IndexType | str | None
    role: Role | None
    model_name: str | None
    chunks: ChunkSource | None
    skip_duplicates: bool


def build_index(
    encoder: Encoder,
    source: str | Path | Iterable[Passage],
    directory: str | Path,
    *,
    mode: BuildMode | str = BuildMode.CREATE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    index_type: IndexType | str | None = None,
    passage_role: Role | str | None = None,
    model_name: str | None = None,
    chunks: ChunkSource | None = None,
    skip_duplicates: bool = False,
) -> IndexStore:
    """Encode ``source`` and commit it to the index in ``directory``.

    Args:
        encoder: Encodes the passages; its fingerprint is recorded (or, when appending, must match).
        source: A corpus JSONL path (resumable) or an iterable of passages (not resumable).
        directory: The index directory (created if missing).
        mode: Create, append to, or overwrite the index there. An overwrite builds beside the old index and
            swaps only when complete; the directory must hold nothing but an index.
        chunk_size: Passages encoded and written per step; memory use scales with it, not with the corpus.
        index_type: ``flat`` (default for a new index), ``ivf`` or ``hnsw``; fixed once the index exists.
        passage_role: Role to encode passages with: ``passage`` (default for a new index) or ``none`` for
            short-text-to-short-text data; fixed once the index exists.
        model_name: Recorded name of the model (how ``search`` reloads it); defaults to the encoder's name.
        chunks: Where encoded chunks come from (default: ``encoder`` on each chunk, in this process); ``encoder``
            still provides the fingerprint.
        skip_duplicates: Skip passages whose id is already indexed or earlier in the corpus (counted in the
            manifest's last ``sources`` entry) instead of refusing the build.

    Returns:
        The committed index.

    Raises:
        DuplicateIdError: A repeated passage id without ``skip_duplicates`` (for a corpus file, before any
            encoding).
        EmptyCorpusError: The corpus holds no passages.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    role = None if passage_role is None else Role.parse(passage_role)
    job = _Job(encoder, source, chunk_size, index_type, role, model_name, chunks, skip_duplicates)
    directory, mode = Path(directory), BuildMode.parse(mode)
    if mode is BuildMode.OVERWRITE:
        return _overwrite(job, directory.resolve())
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        return _build(job, directory, mode)


def _build(job: _Job, directory: Path, mode: BuildMode) -> IndexStore:
    base = _prepare(directory, mode, job.index_type, job.role)
    fingerprint = fingerprint_encoder(job.encoder, name=job.model_name)
    if base.generation:
        check_same_model(base.model, fingerprint)
    else:
        base = replace(base, model=fingerprint)
        write_bytes_atomic(directory / PROBES, _npy_bytes(fingerprint.probes))
    source_key = source_identity(job.source)
    progress = _resume_point(directory, base, source_key)
    _truncate(directory, progress, base.model.dim)
    where = str(job.source) if source_key else ""
    ids = IdFilter(indexed_ids(directory / TEXTS), skip=job.skip_duplicates, skipped=progress.skipped, where=where)
    if source_key and not job.skip_duplicates:
        check_corpus(Path(where), start_line=progress.lines_done, first_row=progress.rows, seen=ids.seen)
    encoded = (job.chunks or EncoderChunks(job.encoder))(
        job.source,
        start_line=progress.lines_done,
        role=base.passage_role,
        dim=base.model.dim,
        chunk_size=job.chunk_size,
    )
    progress = _write_chunks(encoded, directory, base, progress, source_key, ids)
    return _commit(directory, base, progress, source_key)


def _overwrite(job: _Job, directory: Path) -> IndexStore:
    """Build into ``.<name>.overwrite`` beside ``directory``, then swap it in; the old index lives until then.

    The staging name is fixed so that rerunning an interrupted overwrite resumes it. A staging directory that
    holds a manifest is stale (the old index, left by a kill after the swap, or a build never swapped in).
    """
    check_replaceable(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.overwrite")
    with _locked(directory):
        if (staging / MANIFEST).exists():
            shutil.rmtree(staging)
        staging.mkdir(exist_ok=True)
        with _locked(staging):
            store = _build(job, staging, BuildMode.CREATE)
        replace_dir(staging, directory)  # an atomic exchange on Linux: no moment without an index
        shutil.rmtree(staging, ignore_errors=True)
    return IndexStore(directory, store.manifest)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _prepare(directory: Path, mode: BuildMode, index_type: IndexType | str | None, role: Role | None) -> Manifest:
    """The committed state to build on: the existing manifest, or an empty one for a new index."""
    existing = read_manifest(directory)
    if existing is not None and mode is BuildMode.CREATE:
        raise FileExistsError(f"{directory}: an index exists; use --append to extend it or --overwrite")
    if existing is None and mode is BuildMode.APPEND:
        raise FileNotFoundError(f"{directory}: no index to append to; build it first (without --append)")
    if existing is not None and mode is BuildMode.APPEND:
        wanted = IndexType.parse(index_type) if index_type is not None else existing.index_type
        role = role or existing.passage_role
        if wanted is not existing.index_type or role is not existing.passage_role:
            raise ValueError(
                f"{directory}: the index is {existing.index_type.value} with {existing.passage_role.value} "
                f"passages; cannot append as {wanted.value} with {role.value} passages"
            )
        return existing
    index_type = IndexType.FLAT if index_type is None else IndexType.parse(index_type)
    return Manifest(
        generation=0,
        count=0,
        texts_bytes=0,
        index_type=index_type,
        passage_role=role or Role.PASSAGE,
        model=ModelFingerprint(name="", dim=0),  # generation 0: replaced by the encoder's before any write
    )


def source_identity(source: str | Path | Iterable[Passage]) -> dict[str, object] | None:
    """Identity of a corpus file, so a checkpoint is only resumed against the same unchanged file."""
    if not isinstance(source, str | Path):
        return None
    path = Path(source).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _resume_point(directory: Path, base: Manifest, source_key: dict[str, object] | None) -> _Progress:
    start = _Progress(rows=base.count, texts_bytes=base.texts_bytes)
    path = directory / CHECKPOINT
    if source_key is None or not path.is_file():
        return start
    saved = json.loads(path.read_text(encoding="utf-8"))
    expected = {
        "base_generation": base.generation,
        "source": source_key,
        "model_digest": base.model.digest,
        "passage_role": base.passage_role.value,
    }
    if any(saved.get(key) != value for key, value in expected.items()):
        log.info("ignoring a checkpoint from a different build in %s", directory)
        return start
    progress = _Progress(
        int(saved["rows"]), int(saved["texts_bytes"]), int(saved["lines_done"]), int(saved.get("skipped", 0))
    )
    log.info("resuming: %d rows already encoded (source line %d)", progress.rows, progress.lines_done)
    return progress


def _truncate(directory: Path, progress: _Progress, dim: int) -> None:
    """Cut the data files back to ``progress``, dropping whatever an interrupted run wrote after it."""
    sizes = {EMBEDDINGS: progress.rows * dim * 4, TEXTS: progress.texts_bytes, OFFSETS: progress.rows * 8}
    for name in DATA_FILES:
        path = directory / name
        path.touch()
        if path.stat().st_size < sizes[name]:
            raise ValueError(f"{path}: shorter than the committed index or checkpoint says; rebuild it")
        os.truncate(path, sizes[name])


def _write_chunks(
    encoded: Iterator[tuple[list[Passage], np.ndarray]],
    directory: Path,
    base: Manifest,
    progress: _Progress,
    source_key: dict[str, object] | None,
    ids: IdFilter,
) -> _Progress:
    started, first_rows, read = time.monotonic(), progress.rows, 0
    handles = [(directory / name).open("ab") for name in DATA_FILES]
    try:
        for chunk, vectors in encoded:
            read += len(chunk)
            kept = ids.keep(chunk, progress.rows)
            new = _append_chunk(handles, [chunk[i] for i in kept], vectors[kept], progress)
            progress = replace(new, lines_done=chunk[-1].line, skipped=ids.skipped)
            _write_checkpoint(directory, base, progress, source_key)
            rate = (progress.rows - first_rows) / max(time.monotonic() - started, 1e-9)
            log.info("encoded %d passages (%.0f/s)", progress.rows, rate)
    finally:
        for handle in handles:
            handle.close()
    if read == 0 and progress.lines_done == 0 and progress.rows == base.count:
        raise EmptyCorpusError(f"{ids.where or 'the corpus'}: the corpus holds no passages")
    return progress


def _append_chunk(handles: list[BinaryIO], chunk: list[Passage], vectors: np.ndarray, progress: _Progress) -> _Progress:
    """Append one chunk to the data files (in ``DATA_FILES`` order) and sync them before the checkpoint."""
    lines, offsets, position = [], [], progress.texts_bytes
    for index, passage in enumerate(chunk):
        line = _text_line(passage, progress.rows + index)
        offsets.append(position)
        lines.append(line)
        position += len(line)
    payloads = (vectors.astype("<f4").tobytes(), b"".join(lines), np.asarray(offsets, dtype="<u8").tobytes())
    for handle, data in zip(handles, payloads, strict=True):
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return replace(progress, rows=progress.rows + len(chunk), texts_bytes=position)


def encode_chunk(encoder: Encoder, chunk: list[Passage], role: Role, dim: int) -> np.ndarray:
    """Encode passages (title and text) and check the vectors' shape, values and norms."""
    return check_vectors(encoder.encode([p.embed_text for p in chunk], role=role), len(chunk), dim, chunk)


def check_vectors(vectors: np.ndarray, rows: int, dim: int, passages: list[Passage] | None = None) -> np.ndarray:
    """``vectors`` as float32, after checking it is ``(rows, dim)``, finite and L2-normalised.

    Raises:
        ValueError: Naming the first passage (its line and id, when ``passages`` are given) with NaN or infinite
            values, which would otherwise be stored and score above 1 or never match.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (rows, dim):
        raise ValueError(f"encoder returned shape {vectors.shape}, expected {(rows, dim)}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        what = f"line {passages[row].line} (id {passages[row].id!r})" if passages else f"row {row} of the chunk"
        raise ValueError(f"encoder returned NaN or infinite values for the passage at {what}; nothing was committed")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        raise ValueError("encoder returned vectors that are not L2-normalised (or not finite)")
    return vectors


def _text_line(passage: Passage, row: int) -> bytes:
    entry = {"id": passage.id if passage.id is not None else str(row), "text": passage.text}
    if passage.title:
        entry["title"] = passage.title
    entry.update(passage.entry_fields())
    return (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")


def _write_checkpoint(
    directory: Path, base: Manifest, progress: _Progress, source_key: dict[str, object] | None
) -> None:
    write_json_atomic(
        directory / CHECKPOINT,
        {
            "base_generation": base.generation,
            "source": source_key,
            "model_digest": base.model.digest,
            "passage_role": base.passage_role.value,
            "rows": progress.rows,
            "texts_bytes": progress.texts_bytes,
            "lines_done": progress.lines_done,
            "skipped": progress.skipped,
        },
    )


def _commit(directory: Path, base: Manifest, progress: _Progress, source_key: dict[str, object] | None) -> IndexStore:
    generation = base.generation + 1
    # A store over the new rows before they are committed, to feed the faiss index.
    staged = IndexStore(directory, replace(base, count=progress.rows, texts_bytes=progress.texts_bytes))
    ann_file = _update_ann(staged, base, generation)
    added = {"path": source_key["path"] if source_key else None, "first_row": base.count}
    added["rows"] = progress.rows - base.count
    added["skipped_duplicates"] = progress.skipped
    manifest = replace(
        base,
        generation=generation,
        count=progress.rows,
        texts_bytes=progress.texts_bytes,
        ann_file=ann_file,
        sources=(*base.sources, added),
        checksums=_checksums(directory, base, progress, ann_file),
    )
    write_json_atomic(directory / MANIFEST, manifest.to_json())
    (directory / CHECKPOINT).unlink(missing_ok=True)
    if base.ann_file and base.ann_file != ann_file:
        contained(directory, base.ann_file).unlink(missing_ok=True)
    log.info("committed %s: %d passages (generation %d)", directory, manifest.count, generation)
    return IndexStore(directory, manifest)


def _checksums(directory: Path, base: Manifest, progress: _Progress, ann_file: str | None) -> dict[str, dict]:
    """The manifest's checksums: the data files' new bytes hashed onto the committed ones', the others whole."""
    sizes = {EMBEDDINGS: progress.rows * base.model.dim * 4, TEXTS: progress.texts_bytes, OFFSETS: progress.rows * 8}
    out = {name: checksum.extend(base.checksums.get(name), directory / name, size) for name, size in sizes.items()}
    for name in (PROBES, ann_file) if ann_file else (PROBES,):
        out[name] = checksum.extend(None, directory / name, (directory / name).stat().st_size)
    return out


def _update_ann(staged: IndexStore, base: Manifest, generation: int) -> str | None:
    """Add the new rows to the IVF/HNSW index and write it under a new generation's name."""
    if base.index_type is IndexType.FLAT or staged.count == 0:
        return None
    if base.ann_file:
        index = IndexStore(staged.directory, base).load_ann()
    else:
        step = max(1, staged.count // IVF_TRAIN_ROWS)
        train = staged.vectors(range(0, staged.count, step)) if base.index_type is IndexType.IVF else None
        index = new_ann_index(base.index_type, base.model.dim, base.ann_params, train)
    for first_row, block in staged.iter_blocks():
        if first_row + len(block) > base.count:
            index.add(block[max(0, base.count - first_row) :])
    name = f"ann-{generation}.faiss"
    write_ann(index, staged.directory / name)
    return name


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the index, so two builds cannot interleave their appends."""
    with (directory / LOCK).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexLockedError(f"{directory}: another build is writing to this index") from None
        yield
