"""Fixtures for the loss tests: a dropout-free tiny sentence-transformer and tokenised columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

from piccolo_embed.modeling.loading import load_sentence_transformer


def _no_dropout(model_dir: Path) -> Path:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path.write_text(json.dumps(config))
    return model_dir


@pytest.fixture
def tiny_st(tiny_bert_dir: Path) -> SentenceTransformer:
    """The tiny BERT as a sentence-transformer in train mode, without dropout (two passes give equal numbers)."""
    torch.manual_seed(0)
    return load_sentence_transformer(_no_dropout(tiny_bert_dir), device="cpu").train()


@pytest.fixture
def tokenize(tiny_st: SentenceTransformer) -> Callable[[list[list[str]]], list[dict[str, torch.Tensor]]]:
    def run(texts: list[list[str]]) -> list[dict[str, torch.Tensor]]:
        out = []
        for column in texts:
            encoded = tiny_st.tokenizer(column, padding=True, truncation=True, max_length=32, return_tensors="pt")
            out.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
        return out

    return run


@pytest.fixture
def check_against_reference() -> Callable[..., None]:
    """``check(loss_fn, reference_fn, embeddings)``: same loss and same gradients on every input tensor.

    ``loss_fn`` and ``reference_fn`` each take a list of tensors; the reference gets detached copies.
    """

    def check(
        loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
        reference_fn: Callable[[list[torch.Tensor]], torch.Tensor],
        embeddings: list[torch.Tensor],
    ) -> None:
        copies = [t.detach().clone().requires_grad_() for t in embeddings]
        got, want = loss_fn(embeddings), reference_fn(copies)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        got.backward()
        want.backward()
        for ours, theirs in zip(embeddings, copies, strict=True):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)

    return check
