"""InfoNCE / GTE losses: sentence-transformers' MNRL against explicit loops written from the papers."""

from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from torch.nn import functional

from piccolo_embed.losses import OBJECTIVES, ContrastiveObjective, contrastive_loss

QUERIES = ["今天天气很好", "北京的美食推荐", "如何学习编程", "医院看病", "手机价格便宜", "城市旅游景点"]
POSITIVES = ["明天会下雨吗", "上海的美食", "深度神经网络模型训练", "感冒发烧吃药", "电脑质量", "公园散步"]
NEGATIVES = [["外卖送餐", "服务态度差"], ["机器人", "数据"], ["中国首都"], ["今天"], ["北京", "上海"], ["学习"]]


def gte_reference(q: torch.Tensor, docs: list[torch.Tensor], tau: float, objective: str) -> torch.Tensor:
    """GTE (Li et al. 2023, eq. 3) as loops: one softmax per query over four kinds of pairs.

    ``docs[0]`` are the positives, ``docs[1:]`` hard negatives; document ``docs[c][j]`` belongs to query ``j``.
    Z_i = sum_d e^{s(q_i,d)} + sum_{j!=i} e^{s(q_i,q_j)} + sum_j e^{s(q_j,d_i)} + sum_{d not of i} e^{s(d_i,d)}.
    InfoNCE keeps only the first sum.
    """

    def s(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return functional.cosine_similarity(a, b, dim=0) / tau

    n = q.shape[0]
    owned = [(j, column[j]) for column in docs for j in range(n)]
    losses = []
    for i in range(n):
        terms = [s(q[i], d) for _, d in owned]
        if objective == "gte":
            terms += [s(q[i], q[j]) for j in range(n) if j != i]
            terms += [s(q[j], docs[0][i]) for j in range(n)]
            terms += [s(docs[0][i], d) for j, d in owned if j != i]
        losses.append(torch.logsumexp(torch.stack(terms), 0) - s(q[i], docs[0][i]))
    return torch.stack(losses).mean()


def _embeddings(n: int, columns: int, dim: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(n * 10 + columns)
    return [torch.randn(n, dim, generator=generator, requires_grad=True) for _ in range(columns)]


@pytest.mark.parametrize("objective", ["infonce", "gte"])
@pytest.mark.parametrize("negatives", [0, 1, 3])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_mnrl_matches_paper_formula_in_loss_and_gradients(
    objective: str, negatives: int, tau: float, check_against_reference
) -> None:
    spec = OBJECTIVES[ContrastiveObjective(objective)]
    loss_fn = MultipleNegativesRankingLoss(
        None, scale=1 / tau, directions=spec.directions, partition_mode=spec.partition_mode
    )
    check_against_reference(
        lambda e: loss_fn.compute_loss_from_embeddings(e, torch.zeros(5)),
        lambda e: gte_reference(e[0], e[1:], tau, objective),
        _embeddings(5, 2 + negatives),
    )


def test_gte_differs_from_infonce() -> None:
    embeddings = _embeddings(4, 3)
    values = [
        MultipleNegativesRankingLoss(None, scale=20, directions=OBJECTIVES[o].directions)
        .compute_loss_from_embeddings(embeddings, torch.zeros(4))
        .item()
        for o in ContrastiveObjective
    ]
    assert values[0] < values[1]  # the GTE partition function has strictly more (positive) terms


def test_temperature_is_inverse_scale(tiny_st) -> None:
    loss = contrastive_loss(tiny_st, "gte", temperature=0.01)
    assert isinstance(loss, MultipleNegativesRankingLoss)
    assert math.isclose(loss.scale, 100.0)
    assert loss.directions == OBJECTIVES[ContrastiveObjective.GTE].directions
    cached = contrastive_loss(tiny_st, "infonce", temperature=0.05, mini_batch_size=4)
    assert isinstance(cached, CachedMultipleNegativesRankingLoss)
    assert math.isclose(cached.scale, 20.0)


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["infonce", "gte"])
def test_gradcache_matches_plain_loss_and_gradients(tiny_st, tokenize, objective: str) -> None:
    negatives = [[negs[0] for negs in NEGATIVES]]
    features = tokenize([QUERIES, POSITIVES, *negatives])
    labels = torch.zeros(len(QUERIES))
    plain = contrastive_loss(tiny_st, objective, temperature=0.05)
    value = plain(features, labels)
    value.backward()
    want = _grads(tiny_st)
    tiny_st.zero_grad(set_to_none=True)
    cached = contrastive_loss(tiny_st, objective, temperature=0.05, mini_batch_size=2)
    got_value = cached(tokenize([QUERIES, POSITIVES, *negatives]), labels)
    got_value.backward()
    got = _grads(tiny_st)
    torch.testing.assert_close(got_value, value.detach(), rtol=1e-5, atol=1e-6)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_plain_loss_on_model_matches_reference_on_its_embeddings(tiny_st, tokenize) -> None:
    features = tokenize([QUERIES, POSITIVES])
    loss = contrastive_loss(tiny_st, "gte", temperature=0.1)(features, torch.zeros(len(QUERIES)))
    with torch.no_grad():
        q, p = (tiny_st(column)["sentence_embedding"] for column in tokenize([QUERIES, POSITIVES]))
    torch.testing.assert_close(loss.detach(), gte_reference(q, [p], 0.1, "gte"), rtol=1e-5, atol=1e-5)
