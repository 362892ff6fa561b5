"""The padding-free runner against the plain padded forward, on every layout it accepts."""

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

from piccolo_embed import Embedder
from piccolo_embed.inference import unpadded
from piccolo_embed.inference.runners import TorchRunner, pad_batch
from piccolo_embed.inference.unpadded import UnpaddedRunner, unpadded_unsupported

# Lengths from one character to well past the others, so each batch has heavy padding.
TEXTS = ["机", "今天天气很好", "北京的美食推荐", "我们去公园散步吧，明天会下雨吗？" * 3, "如何学习编程", "医院看病"]


def _batch(model: SentenceTransformer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = model.tokenizer(texts, truncation=True, max_length=100)["input_ids"]
    return pad_batch(rows, model.tokenizer.pad_token_id)


def _assert_same(model: SentenceTransformer, texts: list[str] = TEXTS) -> None:
    batch = _batch(model, texts)
    expected = TorchRunner(model)(*batch)
    got = UnpaddedRunner(model)(*batch)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_default_runner_is_unpadded_and_matches_padded(request, fixture):
    embedder = Embedder.from_pretrained(request.getfixturevalue(fixture), device="cpu")
    assert isinstance(embedder.runner, UnpaddedRunner)
    _assert_same(embedder.model)


@pytest.mark.parametrize("pack_above", [1.0, 1e9], ids=["packed", "padded"])
def test_packed_and_padded_layouts_match(tiny_bert_dir, monkeypatch, pack_above):
    """Batches with little padding run padded, the rest packed; both must give the plain forward's vectors."""
    monkeypatch.setattr(unpadded, "PACK_ABOVE", pack_above)
    _assert_same(Embedder.from_pretrained(tiny_bert_dir, device="cpu").model)


@pytest.mark.parametrize(
    ("width", "expected"),
    [(1, 16), (9, 16), (15, 16), (16, 16), (17, 17), (23, 23), (24, 32), (31, 32), (32, 32), (33, 33), (40, 48)],
)
def test_attention_width_rounds_up_to_16_only_when_close(width, expected):
    assert unpadded.attention_width(width) == expected


@pytest.mark.parametrize(
    "texts", [TEXTS[:3], [*TEXTS[:2], "我们去公园散步吧，明天会下雨吗？今天天气很好北京"]], ids=["to16", "to32"]
)
def test_widened_attention_matches_padded(tiny_bert_dir, monkeypatch, texts):
    """A packed batch whose attention runs wider than its longest text (masked columns) loses nothing."""
    model = Embedder.from_pretrained(tiny_bert_dir, device="cpu").model
    layouts = []
    choose = unpadded._Layout.choose

    def spy(*args):
        chosen = choose(*args)
        layouts.append(chosen[0])
        return chosen

    monkeypatch.setattr(unpadded._Layout, "choose", spy)
    _assert_same(model, texts)
    width = _batch(model, texts)[0].shape[1]
    assert [layout.width for layout in layouts] == [unpadded.attention_width(width)]
    assert layouts[0].width > width and layouts[0].tokens is not None


def test_batch_without_padding_and_single_text(tiny_bert_dir):
    model = Embedder.from_pretrained(tiny_bert_dir, device="cpu").model
    _assert_same(model, ["今天天气", "明天下雨"])
    _assert_same(model, ["今天天气很好"])


def test_cls_pooling_and_dense_head(tiny_xlmr_dir):
    transformer = Transformer(str(tiny_xlmr_dir))
    head = [Pooling(32, pooling_mode="cls"), Dense(32, 8), Normalize()]
    model = SentenceTransformer(modules=[transformer, *head], device="cpu").eval()
    assert unpadded_unsupported(model) is None
    _assert_same(model)


def test_follows_weights_changed_in_place(tiny_bert_dir):
    """No cached copies: a model trained after the runner was built is run with its new weights."""
    model = Embedder.from_pretrained(tiny_bert_dir, device="cpu").model
    runner = UnpaddedRunner(model)
    batch = _batch(model, TEXTS)
    before = runner(*batch)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.1)
    after = runner(*batch)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, TorchRunner(model)(*batch), atol=2e-6)


def test_unsupported_models_fall_back_to_the_padded_runner(tiny_bert_dir):
    transformer = Transformer(str(tiny_bert_dir))
    model = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="max"), Normalize()], device="cpu")
    reason = unpadded_unsupported(model)
    assert reason is not None and "max" in reason
    with pytest.raises(ValueError, match="cannot run this model: pooling"):
        UnpaddedRunner(model)
    assert isinstance(Embedder(model, Embedder.from_pretrained(tiny_bert_dir).roles).runner, TorchRunner)


def test_relative_positions_are_refused(tiny_bert_dir):
    model = Embedder.from_pretrained(tiny_bert_dir, device="cpu").model
    model[0].auto_model.config.position_embedding_type = "relative_key"
    assert "relative_key" in unpadded_unsupported(model)
