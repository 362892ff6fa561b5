"""Losses over embeddings: sentence-transformers' implementations, chosen by record kind (piccolo2's hybrid loss).

``tests/losses`` prove that sentence-transformers' MultipleNegativesRankingLoss (plain and GTE directions), its
GradCache variant and CoSENTLoss match explicit-loop references written from the papers, in loss and gradients.
The one loss of our own is the label contrast of classification records (no in-batch negatives), which
sentence-transformers lacks; it is tested the same way. The rest is wiring: temperature → ``scale``, which
directions each objective uses, dispatch by record kind and the weight of each kind.
"""

from piccolo_embed.losses.hybrid import (
    OBJECTIVES,
    ContrastiveObjective,
    HybridLoss,
    LabelContrastLoss,
    ObjectiveSpec,
    build_hybrid_loss,
    contrastive_loss,
    cosent_loss,
)

__all__ = [
    "OBJECTIVES",
    "ContrastiveObjective",
    "HybridLoss",
    "LabelContrastLoss",
    "ObjectiveSpec",
    "build_hybrid_loss",
    "contrastive_loss",
    "cosent_loss",
]
