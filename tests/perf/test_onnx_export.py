"""ONNX export and runner: the fp32 graph must reproduce the torch path; int8 must stay close."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from piccolo_embed import Embedder
from piccolo_embed.cli import build_parser
from piccolo_embed.inference.export import (
    INT8_FILE,
    MANIFEST_FILE,
    Quantization,
    export_onnx,
    read_export,
)
from piccolo_embed.inference.onnx_runner import OnnxRunner, load_onnx_embedder
from piccolo_embed.inference.runners import pad_batch

TEXTS = [
    "今天天气很好",
    "北京的美食推荐",
    "如何学习编程",
    "我们去公园散步吧，明天会下雨吗？" * 6,
    "机器人",
    "",
    "中国首都是哪里",
]


@pytest.fixture(scope="module")
def exported(_tiny_bert_master, tmp_path_factory):
    """One tiny model with fp32 and int8 exports, shared by the read-only tests of this module."""
    model_dir = tmp_path_factory.mktemp("onnx-tiny") / "model"
    shutil.copytree(_tiny_bert_master, model_dir)
    export_onnx(model_dir, quantize=Quantization.INT8)
    return model_dir


@pytest.mark.parametrize("role", ["query", "passage", None])
def test_fp32_onnx_matches_torch_within_1e4(exported, role):
    torch_vectors = Embedder.from_pretrained(exported, device="cpu").encode(TEXTS, role)
    onnx_vectors = load_onnx_embedder(exported).encode(TEXTS, role)
    assert onnx_vectors.dtype == np.float32
    assert onnx_vectors.shape == torch_vectors.shape
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4)


def test_runner_handles_unpadded_single_row_and_long_batches(exported):
    """The trace must not have specialised on the example's shape or on the presence of padding."""
    embedder = Embedder.from_pretrained(exported, device="cpu")
    runner = OnnxRunner(read_export(exported / "onnx").path(quantized=False), threads=1)
    rows = embedder.tokenize(TEXTS, "passage")
    for batch in ([rows[0]], [rows[1], rows[1]], rows, [rows[3]] * 9):
        ids, mask = pad_batch(batch, embedder.tokenizer.pad_token_id)
        np.testing.assert_allclose(runner(ids, mask), embedder.runner(ids, mask), atol=1e-4)


def test_fused_and_unfused_exports_agree(exported, tmp_path):
    unfused = export_onnx(exported, output_dir=tmp_path / "plain", fuse=False)
    assert unfused.manifest["fused"] is False
    fused_vectors = load_onnx_embedder(exported).encode(TEXTS)
    plain_vectors = load_onnx_embedder(exported, onnx_dir=unfused.directory).encode(TEXTS)
    np.testing.assert_allclose(plain_vectors, fused_vectors, atol=1e-5)


def test_int8_is_close_to_fp32_and_unit_norm(exported):
    fp32 = load_onnx_embedder(exported).encode(TEXTS, "passage")
    int8 = load_onnx_embedder(exported, quantized=True).encode(TEXTS, "passage")
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)
    # A random 2-layer model is a harsh case for int8; real models are checked by the slow test.
    assert float((int8 * fp32).sum(axis=1).mean()) > 0.95


def test_manifest_records_files_and_source(exported):
    manifest = json.loads((exported / "onnx" / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["files"] == {"fp32": "model.onnx", "int8": INT8_FILE}
    assert manifest["output"] == "sentence_embedding"
    assert manifest["dim"] == 32
    assert manifest["fused"] is True
    assert manifest["int8"]["per_channel"] is True
    assert manifest["source"]["weights"]


def test_missing_export_names_the_command(tiny_bert_dir):
    with pytest.raises(FileNotFoundError, match="piccolo-embed export --model"):
        load_onnx_embedder(tiny_bert_dir)


def test_missing_int8_names_the_quantize_flag(tiny_bert_dir):
    export_onnx(tiny_bert_dir)
    with pytest.raises(FileNotFoundError, match="--quantize int8"):
        load_onnx_embedder(tiny_bert_dir, quantized=True)


def test_export_of_changed_weights_is_refused_then_redone(tiny_bert_dir):
    export_onnx(tiny_bert_dir, quantize="int8")
    weights = tiny_bert_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the last tensor: "retrained in place"
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="different weights"):
        load_onnx_embedder(tiny_bert_dir)
    export = export_onnx(tiny_bert_dir)
    assert not (export.directory / INT8_FILE).exists()
    np.testing.assert_allclose(
        load_onnx_embedder(tiny_bert_dir).encode(TEXTS),
        Embedder.from_pretrained(tiny_bert_dir, device="cpu").encode(TEXTS),
        atol=1e-4,
    )


def test_cli_export_writes_both_graphs_and_checks_them(tiny_bert_dir, capsys):
    parser = build_parser(("piccolo_embed.cli.export",))
    args = parser.parse_args(["export", "--model", str(tiny_bert_dir), "--format", "onnx", "--quantize", "int8"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "fp32:" in out
    assert "int8:" in out
    assert "check fp32: max |onnx - torch|" in out
    assert (tiny_bert_dir / "onnx" / INT8_FILE).is_file()


def test_export_reuses_current_graphs_and_force_redoes_them(tiny_bert_dir):
    first = export_onnx(tiny_bert_dir, quantize="int8")
    stamps = {name: (first.directory / name).stat().st_mtime_ns for name in first.manifest["files"].values()}
    again = export_onnx(tiny_bert_dir, quantize="int8")
    assert {name: (again.directory / name).stat().st_mtime_ns for name in stamps} == stamps
    forced = export_onnx(tiny_bert_dir, force=True)
    assert forced.manifest["files"] == {"fp32": "model.onnx"}  # the int8 graph went with its old source
    assert not (forced.directory / INT8_FILE).exists()
