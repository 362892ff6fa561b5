"""CoSENT against its formula, Matryoshka against per-dimension sums, and dispatch by record kind."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MatryoshkaLoss
from torch.nn import functional

from piccolo_embed.data.collator import TrainBatch
from piccolo_embed.data.records import RecordKind
from piccolo_embed.losses import HybridLoss, build_hybrid_loss, contrastive_loss, cosent_loss

LEFT = ["今天天气很好", "北京的美食推荐", "如何学习编程", "医院看病"]
RIGHT = ["今天天气不错", "上海的美食", "机器学习", "手机价格"]


def cosent_reference(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """CoSENT (Su 2022): log(1 + sum over pairs with label_i > label_j of e^{(cos_j - cos_i)/tau})."""
    cos = [functional.cosine_similarity(a[i], b[i], dim=0) / tau for i in range(len(labels))]
    terms = [torch.zeros(())]
    for i in range(len(labels)):
        for j in range(len(labels)):
            if labels[i] > labels[j]:
                terms.append(cos[j] - cos[i])
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("labels", [[0.0, 1.0, 1.0, 0.0, 1.0], [4.5, 0.2, 3.0, 3.0, 1.0]])
def test_cosent_matches_formula_in_loss_and_gradients(labels: list[float]) -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(5, 6, generator=generator, requires_grad=True) for _ in range(2))
    ra, rb = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    target = torch.tensor(labels)
    got = CoSENTLoss(None, scale=1 / 0.05).compute_loss_from_embeddings([a, b], target)
    want = cosent_reference(ra, rb, target, 0.05)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.backward()
    want.backward()
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-4, atol=1e-6)


def _batch(features, records: RecordKind, labels: torch.Tensor) -> TrainBatch:
    return TrainBatch("test", records, features, labels, len(labels), 0)


def test_hybrid_picks_the_loss_by_record_kind(tiny_st, tokenize) -> None:
    hybrid = build_hybrid_loss(tiny_st, objective="gte", temperature=0.05, cosent_temperature=0.05)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        scored = hybrid(_batch(tokenize([LEFT, RIGHT]), RecordKind.SCORED, scores))
        want_scored = cosent_loss(tiny_st, temperature=0.05)(tokenize([LEFT, RIGHT]), scores)
        triplet = hybrid(_batch(tokenize([LEFT, RIGHT]), RecordKind.TRIPLET, torch.zeros(4)))
        want_triplet = contrastive_loss(tiny_st, "gte", temperature=0.05)(tokenize([LEFT, RIGHT]), torch.zeros(4))
    torch.testing.assert_close(scored, want_scored)
    torch.testing.assert_close(triplet, want_triplet)


def test_hybrid_without_a_loss_for_the_kind_fails_clearly(tiny_st, tokenize) -> None:
    hybrid = HybridLoss({RecordKind.TRIPLET: contrastive_loss(tiny_st, "infonce", temperature=0.05)})
    with pytest.raises(ValueError, match="no loss configured for scored"):
        hybrid(_batch(tokenize([LEFT, RIGHT]), RecordKind.SCORED, torch.zeros(4)))


def test_matryoshka_is_the_sum_over_truncated_renormalised_dims(tiny_st, tokenize) -> None:
    hybrid = build_hybrid_loss(
        tiny_st, objective="infonce", temperature=0.05, cosent_temperature=0.05, matryoshka_dims=(32, 8)
    )
    assert isinstance(hybrid.losses["triplet"], MatryoshkaLoss)
    with torch.no_grad():
        got = hybrid(_batch(tokenize([LEFT, RIGHT]), RecordKind.TRIPLET, torch.zeros(4)))
        q, p = (tiny_st(column)["sentence_embedding"] for column in tokenize([LEFT, RIGHT]))
        plain = contrastive_loss(tiny_st, "infonce", temperature=0.05)
        want = sum(
            plain.compute_loss_from_embeddings(
                [functional.normalize(q[:, :d], dim=-1), functional.normalize(p[:, :d], dim=-1)], None
            )
            for d in (32, 8)
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_use_model_repoints_every_inner_loss(tiny_st) -> None:
    hybrid = build_hybrid_loss(
        tiny_st, objective="gte", temperature=0.05, cosent_temperature=0.05, matryoshka_dims=(32, 16)
    )
    wrapper = torch.nn.Sequential(tiny_st)  # stands in for DDP: a module that is not a SentenceTransformer
    hybrid.use_model(wrapper)
    inner = [m for m in hybrid.losses.modules() if type(m).__name__.endswith("Loss")]
    assert len(inner) == 6  # Matryoshka(MNRL), Matryoshka(CoSENT), Matryoshka(label contrast)
    assert all(m.model is wrapper for m in inner)
    assert wrapper.get_embedding_dimension() == tiny_st.get_embedding_dimension()


def test_inner_losses_keep_the_model_where_replace_model_looks(tiny_st) -> None:
    # _replace_model follows sentence-transformers internals: each loss holds the model as `.model`, and the
    # losses call `preprocess` and `get_embedding_dimension` on it (the two methods bound onto a wrapper).
    hybrid = build_hybrid_loss(
        tiny_st, objective="gte", temperature=0.05, cosent_temperature=0.05, matryoshka_dims=(32, 16)
    )
    inner = [m for m in hybrid.losses.modules() if type(m).__name__.endswith("Loss")]
    assert inner and all(m.model is tiny_st for m in inner)
    assert callable(tiny_st.preprocess) and tiny_st.get_embedding_dimension() == 32
