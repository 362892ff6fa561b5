"""The recipe's losses: InfoNCE or GTE for triplets, CoSENT for scored pairs, label contrast for classification.

The label contrast is piccolo2's: each labelled record against its own negatives only.

Temperatures are the recipe's parameters; sentence-transformers calls the same thing ``scale = 1 / temperature``
(piccolo2's 0.01 is ``scale=100``).

Why sentence-transformers' ``MultipleNegativesRankingLoss`` is right for GTE: with
``directions=(q→d, q→q, d→q, d→d)`` and ``partition_mode="joint"`` it computes, for each local query ``i``,
``-log(exp(s(q_i,d_i)/τ) / Z_i)`` with ``Z_i`` summing ``q_i``·every document (positives and hard negatives),
``q_i``·every other query, every query·``d_i``, and ``d_i``·every document not belonging to query ``i``: GTE's
formula (Li et al. 2023, eq. 3), reading "``j ≠ i``" in the same-type terms as "not query ``i``'s own
documents" once hard negatives are present. ``tests/losses/test_contrastive_losses.py`` checks this, with hard
negatives and both with and without GradCache, against an explicit loop over that formula.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
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


class LabelContrastLoss(nn.Module):
    """InfoNCE of each query over its own positive and negatives only: no in-batch negatives.

    Columns are ``[query, positive, negative_1..k]``. For record ``i``:
    ``-log(e^{cos(q_i,p_i)/τ} / (e^{cos(q_i,p_i)/τ} + Σ_j e^{cos(q_i,n_ij)/τ}))``. Classification records need
    this because another record of the batch may share the query's label, so it is not a negative.
    sentence-transformers' ranking losses always add in-batch negatives, hence this small loss of our own.
    """

    def __init__(self, model: SentenceTransformer, *, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; ``labels`` is unused (the positive is always candidate 0)."""
        if len(features) < 3:
            raise ValueError("label contrast needs at least one negative column (set num_negatives >= 1)")
        return self.compute_loss_from_embeddings([self.model(column)["sentence_embedding"] for column in features])

    def compute_loss_from_embeddings(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """The loss from one ``(batch, dim)`` tensor per column (sentence-transformers' convention)."""
        query = F.normalize(embeddings[0], dim=-1)  # (batch, dim)
        candidates = F.normalize(torch.stack(list(embeddings[1:]), dim=1), dim=-1)  # (batch, 1 + k, dim)
        scores = torch.einsum("bd,bkd->bk", query, candidates) / self.temperature  # (batch, 1 + k)
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, target)


class HybridLoss(nn.Module):
    """Dispatch each batch to the loss of its record kind (every batch holds one dataset, so one kind).

    ``weights`` scale a kind's loss against the others (a missing kind weighs 1), as piccolo2 weighs CoSENT and
    classification against retrieval.
    """

    def __init__(self, losses: Mapping[RecordKind, nn.Module], weights: Mapping[RecordKind, float] | None = None):
        super().__init__()
        self.losses = nn.ModuleDict({kind.value: loss for kind, loss in losses.items()})
        self.weights = {kind.value: float(weight) for kind, weight in (weights or {}).items()}

    def forward(self, batch: TrainBatch) -> torch.Tensor:
        """Weighted scalar loss of ``batch`` (for cached losses, the backward pass replays the forward)."""
        kind = batch.records.value
        if kind not in self.losses:
            raise ValueError(f"no loss configured for {kind} records (dataset {batch.dataset})")
        return self.losses[kind](batch.features, batch.labels) * self.weights.get(kind, 1.0)

    def use_model(self, model: nn.Module) -> None:
        """Point every inner loss at ``model`` (the DDP/DeepSpeed-wrapped one), as sentence-transformers does.

        Wrappers hide the model's methods, so the two the losses call are bound onto the wrapper.
        """
        _replace_model(self, model)


def _replace_model(module: nn.Module, model: nn.Module) -> None:
    """Set ``model`` on every loss under ``module``, as sentence-transformers' trainer does for its one loss.

    This follows sentence-transformers internals (6.x): losses keep their model as ``.model`` and call its
    ``preprocess`` and ``get_embedding_dimension``. ``tests/losses/test_hybrid_losses.py`` pins both, so an
    upgrade that changes them fails there, not in a distributed run.
    """
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
    label_temperature: float | None = None,
    weights: Mapping[RecordKind, float] | None = None,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
    matryoshka_dims: Sequence[int] = (),
) -> HybridLoss:
    """The full recipe: a loss per record kind, each scaled by ``weights``, optionally Matryoshka-wrapped.

    Triplets get the contrastive objective, scored pairs CoSENT, labelled records the label contrast (at
    ``label_temperature``, default ``temperature``).
    """
    losses: dict[RecordKind, nn.Module] = {
        RecordKind.TRIPLET: contrastive_loss(
            model,
            objective,
            temperature=temperature,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
        ),
        RecordKind.SCORED: cosent_loss(model, temperature=cosent_temperature),
        RecordKind.LABELLED: LabelContrastLoss(model, temperature=label_temperature or temperature),
    }
    if matryoshka_dims:
        losses = {kind: MatryoshkaLoss(model, loss, list(matryoshka_dims)) for kind, loss in losses.items()}
    return HybridLoss(losses, weights)
