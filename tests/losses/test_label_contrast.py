"""piccolo2's label contrast (classification records, no in-batch negatives) against an explicit loop."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from piccolo_embed.data.collator import TrainBatch
from piccolo_embed.data.records import RecordKind
from piccolo_embed.losses import LabelContrastLoss, build_hybrid_loss

QUERY = ["这家酒店很干净", "物流太慢了", "体育新闻：比赛结束", "股市今天上涨"]
POS = ["房间舒适服务好", "差评，质量不好", "足球联赛开幕", "财经：基金收益"]
NEG = ["服务态度很差", "非常满意的购物", "娱乐明星新片", "游戏新版本发布"]


def label_contrast_reference(columns: list[torch.Tensor], tau: float) -> torch.Tensor:
    """For each record alone: -log softmax over (its positive, its negatives) of cos/tau, at the positive."""
    losses = []
    for i in range(columns[0].shape[0]):
        logits = torch.stack(
            [functional.cosine_similarity(columns[0][i], column[i], dim=0) / tau for column in columns[1:]]
        )
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize(("negatives", "tau"), [(1, 0.05), (4, 0.01)])
def test_label_contrast_matches_the_explicit_loop_in_loss_and_gradients(
    negatives: int, tau: float, check_against_reference
) -> None:
    generator = torch.Generator().manual_seed(3)
    check_against_reference(
        LabelContrastLoss(None, temperature=tau).compute_loss_from_embeddings,
        lambda columns: label_contrast_reference(columns, tau),
        [torch.randn(5, 8, generator=generator, requires_grad=True) for _ in range(2 + negatives)],
    )


def test_other_records_are_not_negatives() -> None:
    """Record 0's term ignores the batch: another record's positive equal to its query changes nothing for it."""
    generator = torch.Generator().manual_seed(4)
    columns = [torch.randn(3, 8, generator=generator) for _ in range(3)]
    loss = LabelContrastLoss(None, temperature=0.05)

    def first_term(cols: list[torch.Tensor]) -> torch.Tensor:
        return 3 * loss.compute_loss_from_embeddings(cols) - 2 * loss.compute_loss_from_embeddings(
            [c[1:] for c in cols]
        )

    before = first_term(columns)
    columns[1][2] = columns[0][0]  # record 2's positive is a perfect match of query 0
    torch.testing.assert_close(first_term(columns), before)


def test_hybrid_runs_labelled_batches_through_the_label_contrast_with_its_weight(tiny_st, tokenize) -> None:
    hybrid = build_hybrid_loss(
        tiny_st,
        objective="gte",
        temperature=0.05,
        cosent_temperature=0.05,
        label_temperature=0.1,
        weights={RecordKind.LABELLED: 0.2},
    )
    features = tokenize([QUERY, POS, NEG])
    batch = TrainBatch("cls", RecordKind.LABELLED, features, torch.zeros(4), 4, 0)
    with torch.no_grad():
        got = hybrid(batch)
        want = LabelContrastLoss(tiny_st, temperature=0.1)(features, torch.zeros(4))
    torch.testing.assert_close(got, 0.2 * want)


def test_label_contrast_needs_a_negative_column(tiny_st, tokenize) -> None:
    with pytest.raises(ValueError, match="at least one negative"):
        LabelContrastLoss(tiny_st, temperature=0.05)(tokenize([QUERY, POS]), torch.zeros(4))
