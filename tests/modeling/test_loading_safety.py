"""A broken or mismatched weights file is refused with one line naming the problem, never loaded half-random."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from piccolo_embed.cli import main
from piccolo_embed.modeling.loading import ModelLoadError, load_sentence_transformer

WEIGHTS = "model.safetensors"


def _rewrite(model_dir: Path, edit) -> None:
    tensors = load_file(str(model_dir / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(model_dir / WEIGHTS), metadata={"format": "pt"})


def test_a_model_missing_a_layer_is_refused_listing_the_weights(tiny_bert_dir: Path) -> None:
    _rewrite(tiny_bert_dir, lambda t: [t.pop(k) for k in list(t) if k.startswith("encoder.layer.1.")])
    with pytest.raises(ModelLoadError, match=r"missing \(16\): encoder\.layer\.1\.") as info:
        load_sentence_transformer(tiny_bert_dir, device="cpu")
    assert "\n" not in str(info.value)
    load_sentence_transformer(tiny_bert_dir, device="cpu", allow_weight_mismatch=True)


def test_unexpected_weights_are_refused(tiny_bert_dir: Path) -> None:
    _rewrite(
        tiny_bert_dir, lambda t: t.update({"encoder.layer.9.extra.weight": t["embeddings.LayerNorm.weight"].clone()})
    )
    with pytest.raises(ModelLoadError, match=r"unexpected \(1\): encoder\.layer\.9\.extra\.weight"):
        load_sentence_transformer(tiny_bert_dir, device="cpu")


def test_shape_mismatch_and_truncated_weights_are_one_line_errors(tiny_bert_dir: Path) -> None:
    name = "encoder.layer.0.attention.self.query.weight"
    _rewrite(tiny_bert_dir, lambda t: t.update({name: t[name][:, :16].contiguous()}))
    with pytest.raises(ModelLoadError, match="cannot load the model's weights") as info:
        load_sentence_transformer(tiny_bert_dir, device="cpu")
    assert "\n" not in str(info.value)
    data = (tiny_bert_dir / WEIGHTS).read_bytes()
    (tiny_bert_dir / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cannot load the model's weights"):
        load_sentence_transformer(tiny_bert_dir, device="cpu")


def test_cli_reports_a_broken_model_in_one_line(tiny_bert_dir: Path, tmp_path: Path, capsys) -> None:
    data = (tiny_bert_dir / WEIGHTS).read_bytes()
    (tiny_bert_dir / WEIGHTS).write_bytes(data[:100])
    task = tmp_path / "S"
    task.mkdir()
    spec = {"name": "S", "type": "STS", "split": "test", "main_score": "cosine_spearman", "s2p": False}
    (task / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    rows = [{"sentence1": "今天", "sentence2": "明天", "score": float(i)} for i in range(3)]
    (task / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["eval", "--model", str(tiny_bert_dir), "--tasks", str(task)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("piccolo-embed eval: error:")
