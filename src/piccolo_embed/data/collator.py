"""Turn one dataset's rows into model inputs: a seeded choice of positive and negatives, then per-role tokenisation.

Columns follow sentence-transformers' loss convention, ``[query, positive, negative_1, ..., negative_k]`` (or
``[sentence1, sentence2]`` with float labels for scored pairs), but each column is tokenised with its own role's
instruction and token budget: piccolo trains queries at 64 tokens and passages at 512, which one
``max_seq_length`` for every column cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from piccolo_embed.data.records import RecordKind
from piccolo_embed.data.sources import RawBatch
from piccolo_embed.types import Role, RoleSpecs

_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TrainBatch:
    """A collated batch.

    Attributes:
        dataset: The dataset's name (every row comes from it).
        records: Its record kind, which picks the loss.
        features: One tokenised column per text position.
        labels: Scores for scored pairs; zeros for triplets (the positive is the diagonal).
        num_records: Rows in the batch.
        num_tokens: Non-padding tokens over all columns (for throughput logs).
    """

    dataset: str
    records: RecordKind
    features: list[dict[str, torch.Tensor]]
    labels: torch.Tensor
    num_records: int
    num_tokens: int

    def to(self, device: torch.device | str) -> TrainBatch:
        """The same batch with tensors on ``device``."""
        features = [{key: value.to(device) for key, value in column.items()} for column in self.features]
        return TrainBatch(
            self.dataset, self.records, features, self.labels.to(device), self.num_records, self.num_tokens
        )


class RoleAwareCollator:
    """Collate a :class:`RawBatch` into a :class:`TrainBatch`.

    Args:
        tokenizer: The model's (fast) tokenizer.
        roles: Prefix and max length per role; ``s2p`` data uses ``QUERY``/``PASSAGE``, ``s2s`` uses ``NONE``.
        num_negatives: Hard negatives per triplet record unless the dataset sets its own; records with fewer are
            filled by repetition.
        seed: Seeds the choice of positive and negatives together with each row's sample key.
    """

    def __init__(self, tokenizer: Any, roles: RoleSpecs, *, num_negatives: int = 0, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.roles = dict(roles)
        self.num_negatives = num_negatives
        self.seed = seed

    def __call__(self, batch: RawBatch) -> TrainBatch:
        """Columns and labels for the loss of ``batch``'s record kind."""
        spec = batch.source
        first, second = spec.kind.roles
        if spec.records is RecordKind.SCORED:
            columns = [(batch.rows["sentence1"], first), (batch.rows["sentence2"], second)]
            labels = torch.tensor(batch.rows["score"], dtype=torch.float32)
        else:
            wanted = self.num_negatives if spec.num_negatives is None else spec.num_negatives
            columns = self._triplet_columns(batch, first, second, wanted)
            labels = torch.zeros(len(batch.keys), dtype=torch.long)
        features = [self.tokenize(texts, role) for texts, role in columns]
        tokens = sum(int(column["attention_mask"].sum()) for column in features)
        return TrainBatch(spec.name, spec.records, features, labels, len(batch.keys), tokens)

    def tokenize(self, texts: Sequence[str], role: Role) -> dict[str, torch.Tensor]:
        """Prefix and truncate ``texts`` for ``role``; pad to the longest in the column."""
        spec = self.roles[role]
        encoded = self.tokenizer(
            [spec.prefix + text for text in texts],
            padding=True,
            truncation=True,
            max_length=spec.max_length,
            return_tensors="pt",
        )
        return {key: encoded[key] for key in _MODEL_KEYS if key in encoded}

    def _triplet_columns(self, batch: RawBatch, first: Role, second: Role, k: int) -> list[tuple[list[str], Role]]:
        positives, negatives = [], []
        for row, key in enumerate(batch.keys):
            rng = np.random.default_rng([self.seed, key])
            pos, neg = batch.rows["pos"][row], batch.rows["neg"][row]
            positives.append(pos[int(rng.integers(len(pos)))])
            if k:
                if not neg:
                    raise ValueError(
                        f"dataset {batch.source.name!r}: a record has no 'neg' but {k} negatives per record are "
                        f"asked for (query: {batch.rows['query'][row][:40]!r})"
                    )
                negatives.append([neg[i] for i in _pick(len(neg), k, rng)])
        columns = [(list(batch.rows["query"]), first), (positives, second)]
        columns += [([negs[j] for negs in negatives], second) for j in range(k)]
        return columns


def _pick(available: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct indices below ``available``, or all of them and repeats when there are fewer."""
    if available >= k:
        return rng.choice(available, k, replace=False).tolist()
    extra = rng.choice(available, k - available, replace=True)
    return rng.permutation(available).tolist() + extra.tolist()
