"""Checksums of an index's files, recorded in its manifest so overwritten or edited files are noticed.

The data files only grow, so each commit hashes just the bytes it added (one *segment* per commit) and a full
check rehashes every segment. A *sample* digest over a few small blocks spread over the committed bytes is
recomputed at each commit; it lets :meth:`IndexStore.open` check a multi-gigabyte index in milliseconds. Files
up to :data:`FULL_AT_OPEN_BYTES` are hashed in full at open anyway.

Manifest form, per file name: ``{"segments": [[end, digest], ...], "sample": digest}``; a segment covers the
bytes from the previous segment's end (0 for the first) to ``end``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BYTES = 1 << 20
SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_BYTES = 4096
FULL_AT_OPEN_BYTES = 8 << 20  # smaller files (offsets of up to 1M rows, probes) are hashed fully at open


def _hasher() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def digest_range(path: Path, start: int, end: int) -> str:
    """Hex digest of the bytes ``[start, end)`` of ``path`` (streamed, one read buffer in memory)."""
    hasher = _hasher()
    with path.open("rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            data = handle.read(min(READ_BYTES, left))
            if not data:
                break
            hasher.update(data)
            left -= len(data)
    return hasher.hexdigest() if left == 0 else "short"


def sample_digest(path: Path, size: int) -> str:
    """Hex digest of ``size`` and of :data:`SAMPLE_BLOCKS` blocks at evenly spaced offsets below ``size``."""
    hasher = _hasher()
    hasher.update(size.to_bytes(8, "little"))
    with path.open("rb") as handle:
        step = max(SAMPLE_BLOCK_BYTES, size // SAMPLE_BLOCKS)
        for offset in range(0, size, step):
            handle.seek(offset)
            hasher.update(handle.read(min(SAMPLE_BLOCK_BYTES, size - offset)))
    return hasher.hexdigest()


def extend(record: dict | None, path: Path, size: int) -> dict:
    """``record`` (of the committed prefix, or ``None``) extended to the first ``size`` bytes of ``path``."""
    segments = [list(segment) for segment in (record or {}).get("segments", [])]
    start = segments[-1][0] if segments else 0
    if size > start:
        segments.append([size, digest_range(path, start, size)])
    return {"segments": segments, "sample": sample_digest(path, size)}


def committed_size(record: dict) -> int:
    """How many bytes ``record`` covers."""
    segments = record.get("segments") or []
    return int(segments[-1][0]) if segments else 0


def mismatch(path: Path, record: dict, *, full: bool) -> str | None:
    """Why ``path`` does not match ``record`` (``None`` when it does); the sample only unless ``full``."""
    size = committed_size(record)
    have = path.stat().st_size if path.is_file() else -1
    if have < size:
        return f"holds {max(have, 0)} bytes, the manifest needs {size}"
    if sample_digest(path, size) != record.get("sample"):
        return "checksum mismatch (sampled blocks): the file was changed after the index was built"
    if not (full or size <= FULL_AT_OPEN_BYTES):
        return None
    start = 0
    for end, digest in record.get("segments") or []:
        if digest_range(path, start, int(end)) != digest:
            return f"checksum mismatch in bytes {start}-{end}: the file was changed after the index was built"
        start = int(end)
    return None
