"""Fast tests for the E5S1 reader, the Q4_0 dequantiser, the tokenizer pipeline and ensure_starter's atomicity."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from piccolo_embed.defaults import CACHE_ENV
from piccolo_embed.starter import convert as conv
from piccolo_embed.starter import tokenizer as tok
from piccolo_embed.starter.e5s1 import DTYPE_F32, DTYPE_Q4_0, dequantize_q4_0, read_e5s1
from piccolo_embed.starter.weights import build_state_dict

# Two hand-made Q4_0 blocks. fp16 0.5 is 0x3800, fp16 -2.0 is 0xC000 (little-endian below).
BLOCK_A = b"\x00\x38" + bytes(range(16))  # low nibbles 0..15, high nibbles 0
BLOCK_B = b"\x00\xc0" + bytes([0xF8] * 16)  # low nibbles 8, high nibbles 15
EXPECTED_A = [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5] + [-4.0] * 16
EXPECTED_B = [0.0] * 16 + [-14.0] * 16

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "a", "b", "▁ab", "ab", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -3.0, -3.0, -1.0, -2.5, 0.0]
NORM = {0x07: "", 0x3000: " ", 0xFF41: "a", 0x00BD: "1⁄2"}


def e5s1_bytes(tensors: dict[str, tuple[int, int, bytes]]) -> bytes:
    """Serialise a tiny model in the E5S1 layout e5.c's e5_parse reads (H=32, 1 layer, vocab 10)."""
    out = bytearray(b"E5S1")
    out += struct.pack("<I7i", 1, 32, 1, 2, 64, len(PIECES), 8, 2)
    out += struct.pack("<fi", 1e-12, 32)
    encoded = [p.encode("utf-8") for p in PIECES]
    offsets = [0]
    for piece in encoded:
        offsets.append(offsets[-1] + len(piece))
    blob = b"".join(encoded)
    out += struct.pack("<5i", len(PIECES), 0, 2, 1, 3) + struct.pack("<Q", len(blob))
    out += struct.pack(f"<{len(offsets)}I", *offsets) + struct.pack(f"<{len(SCORES)}f", *SCORES) + blob
    norm = b"".join(struct.pack("<IB", cp, len(v)) + struct.pack(f"<{len(v)}I", *map(ord, v)) for cp, v in NORM.items())
    out += struct.pack("<iI", len(NORM), len(norm)) + norm
    data_start = len(out) + 4 + sum(2 + len(name) + 21 for name in tensors)
    entries, data = [], bytearray()
    for name, (dtype, numel, payload) in tensors.items():
        entry = struct.pack("<BIQQ", dtype, numel, data_start + len(data), len(payload))
        entries.append(struct.pack("<H", len(name)) + name.encode() + entry)
        data += payload
    return bytes(out + struct.pack("<i", len(tensors)) + b"".join(entries) + data)


TENSORS = {
    "emb.word": (DTYPE_Q4_0, 64, BLOCK_A + BLOCK_B),
    "emb.ln.b": (DTYPE_F32, 3, struct.pack("<3f", 1.5, -2.0, 0.25)),
}


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.bin"
    path.write_bytes(e5s1_bytes(TENSORS))
    return path


def test_reads_header_vocab_and_norm_map(tiny_file: Path) -> None:
    model = read_e5s1(tiny_file)
    head = model.header
    assert (head.hidden, head.layers, head.heads, head.ffn) == (32, 1, 2, 64)
    assert (head.vocab_size, head.max_positions, head.type_vocab_size, head.block_size) == (10, 8, 2, 32)
    assert head.eps == pytest.approx(1e-12)
    assert model.pieces == PIECES
    assert model.scores.tolist() == SCORES
    assert (model.bos, model.eos, model.pad, model.unk) == (0, 2, 1, 3)
    assert model.norm_map == NORM
    assert set(model.tensors) == {"emb.word", "emb.ln.b"}


def test_dequantises_q4_0_blocks_like_the_engine(tiny_file: Path) -> None:
    weights = read_e5s1(tiny_file).tensor("emb.word")
    assert weights.dtype == np.float32
    assert weights.tolist() == EXPECTED_A + EXPECTED_B


def test_reads_fp32_tensor(tiny_file: Path) -> None:
    assert read_e5s1(tiny_file).tensor("emb.ln.b").tolist() == [1.5, -2.0, 0.25]


def test_dequantiser_is_chunk_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    from piccolo_embed.starter import e5s1

    raw = (BLOCK_A + BLOCK_B) * 5
    monkeypatch.setattr(e5s1, "_CHUNK_BLOCKS", 3)
    assert dequantize_q4_0(raw, 320).tolist() == (EXPECTED_A + EXPECTED_B) * 5


def test_dequantiser_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(BLOCK_A, 31)
    with pytest.raises(ValueError, match="bytes"):
        dequantize_q4_0(BLOCK_A, 64)


def test_bad_magic_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ValueError, match=r"bad\.bin: bad magic .* at offset 0"):
        read_e5s1(path)


def test_truncated_file_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "cut.bin"
    path.write_bytes(e5s1_bytes(TENSORS)[:60])
    with pytest.raises(ValueError, match=r"cut\.bin: truncated E5S1 file: .* at offset \d+"):
        read_e5s1(path)


def test_tensor_past_end_of_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(e5s1_bytes(TENSORS)[:-5])
    with pytest.raises(ValueError, match=r"short\.bin: truncated E5S1 file: tensor 'emb.ln.b'"):
        read_e5s1(path)


def test_charsmap_reproduces_the_norm_map() -> None:
    from tokenizers import normalizers

    precompiled = normalizers.Precompiled(tok.build_charsmap(NORM))
    assert precompiled.normalize_str("ａb\u3000c\x07½") == "ab c1⁄2"
    assert precompiled.normalize_str("不变 text ～") == "不变 text ～"


def test_unknown_char_pattern_uses_ranges() -> None:
    assert tok.unknown_char_pattern("abcx") == r"[^\x{61}-\x{63}\x{78}]"


def test_tokenizer_follows_engine_rules(tiny_file: Path) -> None:
    tokenizer = tok.build_tokenizer(read_e5s1(tiny_file))
    # NFKC-map, collapse spaces, one leading ▁, one <unk> per unknown character (x and y not fused).
    assert tokenizer.encode("ab  ａ\u3000x\x07y").ids == [0, 7, 4, 5, 4, 3, 3, 2]
    # a trailing space survives as its own ▁ piece, as in the engine
    assert tokenizer.encode("a ").ids == [0, 4, 5, 4, 2]


def test_bert_state_dict_names_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "one_layer.bin"
    h, ff = 32, 64
    q4 = {(h, h): BLOCK_A * h, (ff, h): BLOCK_B * ff, (h, ff): BLOCK_A * 2 * h}
    tensors = {
        "emb.word": (DTYPE_Q4_0, 10 * h, BLOCK_A * 10),
        "emb.pos": (DTYPE_F32, 8 * h, bytes(4 * 8 * h)),
        "emb.type": (DTYPE_F32, 2 * h, bytes(4 * 2 * h)),
        "emb.ln.w": (DTYPE_F32, h, bytes(4 * h)),
        "emb.ln.b": (DTYPE_F32, h, bytes(4 * h)),
    }
    for short in ("q", "k", "v", "ao", "fi", "fo"):
        shape = (ff, h) if short == "fi" else (h, ff) if short == "fo" else (h, h)
        tensors[f"l0.{short}.w"] = (DTYPE_Q4_0, shape[0] * shape[1], q4[shape])
        tensors[f"l0.{short}.b"] = (DTYPE_F32, shape[0], bytes(4 * shape[0]))
    for short in ("aln", "oln"):
        tensors[f"l0.{short}.w"] = (DTYPE_F32, h, bytes(4 * h))
        tensors[f"l0.{short}.b"] = (DTYPE_F32, h, bytes(4 * h))
    path.write_bytes(e5s1_bytes(tensors))
    state = build_state_dict(read_e5s1(path))
    assert state["embeddings.word_embeddings.weight"].shape == (10, h)
    assert state["encoder.layer.0.intermediate.dense.weight"].shape == (ff, h)
    assert state["encoder.layer.0.output.dense.weight"].shape == (h, ff)
    assert state["encoder.layer.0.output.dense.weight"][0, :32].tolist() == EXPECTED_A
    assert state["encoder.layer.0.attention.output.LayerNorm.weight"].shape == (h,)
    assert len(state) == 5 + 16 + 2


# ----------------------------------------------------------------------------- ensure_starter


@pytest.fixture
def fake_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    source = tmp_path / "fake-q4.bin"
    source.write_bytes(b"E5S1")
    monkeypatch.setattr(conv, "bundled_model_path", lambda: source)
    return source


def _fake_convert(calls: list[Path]):
    def fake(source: Path, out_dir: Path, *, progress: bool = True) -> Path:
        calls.append(Path(out_dir))
        (Path(out_dir) / "config.json").write_text("{}", encoding="utf-8")
        (Path(out_dir) / conv.MARKER_FILE).write_text("{}", encoding="utf-8")
        return Path(out_dir)

    return fake


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_source: Path) -> None:
    def broken(source: Path, out_dir: Path, *, progress: bool = True) -> Path:
        (Path(out_dir) / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("disk full")

    cache = tmp_path / "cache"
    monkeypatch.setattr(conv, "convert", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        conv.ensure_starter(cache, progress=False)
    assert not conv.starter_dir(cache).exists()
    assert list(cache.iterdir()) == []


def test_second_call_reuses_finished_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_source: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(conv, "convert", _fake_convert(calls))
    cache = tmp_path / "cache"
    first = conv.ensure_starter(cache, progress=False)
    second = conv.ensure_starter(cache, progress=False)
    assert first == second == cache / conv.STARTER_NAME
    assert len(calls) == 1
    assert (first / "config.json").is_file()
    assert [p.name for p in cache.iterdir()] == [conv.STARTER_NAME]


def test_concurrent_finisher_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_source: Path) -> None:
    cache = tmp_path / "cache"
    target = conv.starter_dir(cache)

    def racing(source: Path, out_dir: Path, *, progress: bool = True) -> Path:
        target.mkdir(parents=True)  # another process publishes while we convert
        (target / "theirs.txt").write_text("x", encoding="utf-8")
        (target / conv.MARKER_FILE).write_text("{}", encoding="utf-8")
        return _fake_convert([])(source, out_dir)

    monkeypatch.setattr(conv, "convert", racing)
    assert conv.ensure_starter(cache, progress=False) == target
    assert (target / "theirs.txt").is_file()
    assert [p.name for p in cache.iterdir()] == [conv.STARTER_NAME]


def test_unfinished_target_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_source: Path) -> None:
    cache = tmp_path / "cache"
    target = conv.starter_dir(cache)
    target.mkdir(parents=True)
    (target / "leftover.bin").write_bytes(b"junk")
    monkeypatch.setattr(conv, "convert", _fake_convert([]))
    assert conv.ensure_starter(cache, progress=False) == target
    assert conv.is_complete(target)
    assert not (target / "leftover.bin").exists()


def test_cache_location_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    assert conv.starter_dir() == tmp_path / "envcache" / conv.STARTER_NAME
    assert conv.starter_dir(tmp_path / "explicit") == tmp_path / "explicit" / conv.STARTER_NAME
    monkeypatch.delenv(CACHE_ENV)
    assert conv.starter_dir() == Path.home() / ".cache" / "piccolo-embed" / conv.STARTER_NAME
