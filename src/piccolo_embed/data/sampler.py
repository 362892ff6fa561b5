"""One-dataset-per-batch sampling (uniem's M3E recipe), stateless, rank-aware and resumable.

Every global batch comes from a single dataset, so in-batch negatives are of the same kind as the positive
(mixing a news title with a medical answer makes negatives trivially easy). The dataset of each step is fixed
by ``(seed, epoch)`` alone, so every rank draws the same dataset at the same step and takes its own slice of the
global batch; resuming is just ``set_epoch(epoch, start_step)``.

Design:
    * Each dataset ``i`` is an endless stream: pass ``k`` over it is a permutation seeded by ``(seed, i, k)``.
      A batch is the next ``global_batch`` positions of that stream, wrapping into the next pass, so batches
      are always full and identical in shape on every rank (what cross-device negatives need).
    * Per epoch, dataset ``i`` gets ``ceil(T * w_i / sum(w))`` batches, ``w_i = weight_i * m_i**alpha``,
      ``m_i = min(size_i, cap_i)``, ``T = sum(m) / global_batch``; the step order is a seeded shuffle of these
      quotas. That is "choose a dataset with probability ∝ size**alpha" sampled without replacement: the same
      expected mix, less variance, and with ``alpha=1`` (no caps/weights) exactly one pass over every dataset.
    * Yielded ints are *sample keys*: ``draw * total + index`` where ``draw`` is the pass number. The
      collator seeds its positive/negative choice with the key, so a record shows different negatives on
      different passes yet every run is reproducible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

_EPSILON = 1e-9


def encode_key(draw: int, index: int, total: int) -> int:
    """Sample key of global ``index`` on pass ``draw`` (``total`` = records in the mixture)."""
    return draw * total + index


def decode_key(key: int, total: int) -> tuple[int, int]:
    """``(draw, global index)`` of a sample key."""
    return divmod(int(key), total)


def mixture_quotas(
    sizes: Sequence[int],
    global_batch: int,
    *,
    weights: Sequence[float] | None = None,
    caps: Sequence[int | None] | None = None,
    alpha: float = 1.0,
) -> list[int]:
    """Batches per epoch for each dataset (see the module docstring)."""
    weights = weights or [1.0] * len(sizes)
    caps = caps or [None] * len(sizes)
    effective = [min(size, cap) if cap else size for size, cap in zip(sizes, caps, strict=True)]
    scores = [w * m**alpha for w, m in zip(weights, effective, strict=True)]
    steps = sum(effective) / global_batch
    quotas = []
    for score, cap in zip(scores, caps, strict=True):
        quota = math.ceil(steps * score / sum(scores) - _EPSILON)
        if cap:
            quota = min(quota, math.ceil(cap / global_batch))
        quotas.append(max(quota, 1))
    return quotas


class OneDatasetBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's share of each global batch, every global batch drawn from one dataset.

    Args:
        sizes: Records in each dataset (in mixture order).
        batch_size: Records per rank per step; the global batch is ``batch_size * world_size``.
        weights: Per-dataset sampling-weight multipliers (default 1).
        caps: Per-dataset most records per epoch (``None`` entries: no cap).
        alpha: Sampling exponent on dataset sizes.
        seed: Seeds the schedule and the permutations.
        rank: This process's rank.
        world_size: Number of ranks.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        *,
        weights: Sequence[float] | None = None,
        caps: Sequence[int | None] | None = None,
        alpha: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every dataset needs at least one record, got sizes {list(sizes)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.quotas = mixture_quotas(sizes, self.global_batch, weights=weights, caps=caps, alpha=alpha)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.total = self.offsets[-1]
        self.epoch = 0
        self.start_step = 0
        self._permutations: dict[tuple[int, int], np.ndarray] = {}
        small = [i for i, size in enumerate(self.sizes) if size < self.global_batch]
        if small:
            log.warning(
                "datasets %s hold fewer records than the global batch (%d): their batches repeat records",
                small,
                self.global_batch,
            )

    @property
    def steps_per_epoch(self) -> int:
        """Global batches in one epoch."""
        return sum(self.quotas)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch to iterate, starting at ``start_step`` within it (to resume)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        schedule = self.schedule(self.epoch)
        seen = np.zeros(len(self.sizes), dtype=np.int64)
        for step, dataset in enumerate(schedule.tolist()):
            counter = self.epoch * self.quotas[dataset] + int(seen[dataset])
            seen[dataset] += 1
            if step < self.start_step:
                continue
            keys = self._stream(dataset, counter * self.global_batch, self.global_batch)
            yield keys[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def schedule(self, epoch: int) -> np.ndarray:
        """Dataset index of each step of ``epoch``: the same on every rank."""
        ids = np.repeat(np.arange(len(self.sizes)), self.quotas)
        return np.random.default_rng([self.seed, epoch]).permutation(ids)

    def _stream(self, dataset: int, start: int, count: int) -> list[int]:
        size = self.sizes[dataset]
        keys = []
        for position in range(start, start + count):
            draw, offset = divmod(position, size)
            row = int(self._permutation(dataset, draw)[offset])
            keys.append(encode_key(draw, self.offsets[dataset] + row, self.total))
        return keys

    def _permutation(self, dataset: int, draw: int) -> np.ndarray:
        key = (dataset, draw)
        if key not in self._permutations:
            if len(self._permutations) > 4 * len(self.sizes):
                self._permutations.clear()
            rng = np.random.default_rng([self.seed, dataset, draw])
            self._permutations[key] = rng.permutation(self.sizes[dataset])
        return self._permutations[key]
