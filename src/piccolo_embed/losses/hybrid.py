"""The recipe's losses: InfoNCE or GTE's improved contrastive loss for triplets, CoSENT for scored pairs.

Temperatures are the recipe's parameters; sentence-transformers calls the same thing ``scale = 1 / temperature``
(piccolo2's 0.01 is ``scale=100``).

Why sentence-transformers' ``MultipleNegativesRankingLoss`` is right for GTE: with
``directions=(q→d, q→q, d→q, d→d)`` and ``partition_mode="joint"`` it computes, for each local query ``i``,
``-log(exp(s(q_i,d_i)/τ) / Z_i)`` with ``Z_i`` summing ``q_i``·every document (positives and hard negatives),
``q_i``·every other query, every query·``d_i``, and ``d_i``·every document not belonging to query ``i``: GTE's
formula (Li et al. 2023, eq. 3), reading "``j ≠ i``" in the same-type terms as "not query ``i``'s own
documents" once hard negatives are present. ``tests/losses/test_contrastive.py`` checks this, with hard
negatives and both with and without GradCache, against an explicit loop over that formula.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from sentence_transformers.base.model import BaseModel
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    CoSENTLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from torch import nn

from piccolo_embed.data.records import RecordKind
from piccolo_embed.types import HelpfulEnum

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from piccolo_embed.data.collator import TrainBatch


class ContrastiveObjective(HelpfulEnum):
    """Which contrastive loss triplet datasets get."""

    INFONCE = "infonce"  # q -> d over in-batch (and hard) negatives: stage 1
    GTE = "gte"  # GTE's improved contrastive loss: q->d, q->q, d->q, d->d in one partition: stage 2


@dataclass(frozen=True)
class ObjectiveSpec:
    """How an objective maps onto sentence-transformers' MultipleNegativesRankingLoss."""

    directions: tuple[str, ...]
    partition_mode: str = "joint"


OBJECTIVES: dict[ContrastiveObjective, ObjectiveSpec] = {
    ContrastiveObjective.INFONCE: ObjectiveSpec(("query_to_doc",)),
    ContrastiveObjective.GTE: ObjectiveSpec(("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")),
}


def contrastive_loss(
    model: SentenceTransformer,
    objective: ContrastiveObjective | str,
    *,
    temperature: float,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
) -> nn.Module:
    """InfoNCE/GTE over ``[query, positive, negatives...]`` columns; GradCache when ``mini_batch_size`` is set."""
    spec = OBJECTIVES[ContrastiveObjective.parse(objective)]
    common = {
        "scale": 1.0 / temperature,
        "gather_across_devices": gather_across_devices,
        "directions": spec.directions,
        "partition_mode": spec.partition_mode,
    }
    if mini_batch_size:
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size, **common)
    return MultipleNegativesRankingLoss(model, **common)


def cosent_loss(model: SentenceTransformer, *, temperature: float) -> nn.Module:
    """CoSENT over ``[sentence1, sentence2]`` columns with score labels."""
    return CoSENTLoss(model, scale=1.0 / temperature)


class HybridLoss(nn.Module):
    """Dispatch each batch to the loss of its record kind (every batch holds one dataset, so one kind)."""

    def __init__(self, losses: Mapping[RecordKind, nn.Module]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict({kind.value: loss for kind, loss in losses.items()})

    def forward(self, batch: TrainBatch) -> torch.Tensor:
        """Scalar loss of ``batch`` (for cached losses, the backward pass replays the forward)."""
        if batch.records.value not in self.losses:
            raise ValueError(f"no loss configured for {batch.records.value} records (dataset {batch.dataset})")
        return self.losses[batch.records.value](batch.features, batch.labels)

    def use_model(self, model: nn.Module) -> None:
        """Point every inner loss at ``model`` (the DDP/DeepSpeed-wrapped one), as sentence-transformers does.

        Wrappers hide the model's methods, so the two the losses call are bound onto the wrapper.
        """
        _replace_model(self, model)


def _replace_model(module: nn.Module, model: nn.Module) -> None:
    for name, child in module.named_children():
        if name == "model" and isinstance(child, BaseModel):
            for attr in ("preprocess", "get_embedding_dimension"):
                if not hasattr(model, attr):
                    setattr(model, attr, getattr(child, attr))
            module.model = model
        elif isinstance(child, nn.Module) and not isinstance(child, BaseModel):
            _replace_model(child, model)


def build_hybrid_loss(
    model: SentenceTransformer,
    *,
    objective: ContrastiveObjective | str,
    temperature: float,
    cosent_temperature: float,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
    matryoshka_dims: Sequence[int] = (),
) -> HybridLoss:
    """The full recipe: contrastive loss for triplets, CoSENT for scored pairs, optionally Matryoshka-wrapped."""
    losses: dict[RecordKind, nn.Module] = {
        RecordKind.TRIPLET: contrastive_loss(
            model,
            objective,
            temperature=temperature,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
        ),
        RecordKind.SCORED: cosent_loss(model, temperature=cosent_temperature),
    }
    if matryoshka_dims:
        losses = {kind: MatryoshkaLoss(model, loss, list(matryoshka_dims)) for kind, loss in losses.items()}
    return HybridLoss(losses)
