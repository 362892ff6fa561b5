"""Losses over embeddings: sentence-transformers' implementations, chosen by record kind (piccolo2's hybrid loss).

We add no loss maths of our own: ``tests/losses`` prove that sentence-transformers' MultipleNegativesRankingLoss
(plain and GTE directions), its GradCache variant and CoSENTLoss match explicit-loop references written from the
papers, in loss and gradients. What lives here is the recipe wiring: temperature → ``scale``, which directions
each objective uses, and dispatch by record kind.
"""

from piccolo_embed.losses.hybrid import (
    OBJECTIVES,
    ContrastiveObjective,
    HybridLoss,
    ObjectiveSpec,
    build_hybrid_loss,
    contrastive_loss,
    cosent_loss,
)

__all__ = [
    "OBJECTIVES",
    "ContrastiveObjective",
    "HybridLoss",
    "ObjectiveSpec",
    "build_hybrid_loss",
    "contrastive_loss",
    "cosent_loss",
]
