"""Hard-negative mining for stage-2 training data (FlagEmbedding ``{"query", "pos", "neg"}`` records)."""

from piccolo_embed.mining.mine import (
    MinedRecord,
    MiningConfig,
    NegativeMode,
    TaskKind,
    corpus_from_positives,
    mine,
    mine_file,
)
from piccolo_embed.mining.policy import Candidate, NegativePolicy, Selection
from piccolo_embed.mining.stats import MiningStats, describe

__all__ = [
    "Candidate",
    "MinedRecord",
    "MiningConfig",
    "MiningStats",
    "NegativeMode",
    "NegativePolicy",
    "Selection",
    "TaskKind",
    "corpus_from_positives",
    "describe",
    "mine",
    "mine_file",
]
