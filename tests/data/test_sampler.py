"""Property tests of the one-dataset-per-batch sampler: purity, rank agreement, coverage, seeds, resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piccolo_embed.data.sampler import OneDatasetBatchSampler, decode_key, mixture_quotas


def _dataset_of(sampler: OneDatasetBatchSampler, key: int) -> tuple[int, int]:
    _, index = decode_key(key, sampler.total)
    dataset = int(np.searchsorted(sampler.offsets, index, side="right") - 1)
    return dataset, index - sampler.offsets[dataset]


def _epoch(sampler: OneDatasetBatchSampler, epoch: int, start: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start)
    return list(sampler)


sizes_strategy = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_strategy, batch=st.integers(1, 8), alpha=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 99))
def test_every_batch_holds_one_dataset(sizes: list[int], batch: int, alpha: float, seed: int) -> None:
    sampler = OneDatasetBatchSampler(sizes, batch, alpha=alpha, seed=seed)
    batches = _epoch(sampler, 0)
    assert len(batches) == sampler.steps_per_epoch == len(sampler) + 0
    for keys in batches:
        assert len(keys) == batch
        assert len({_dataset_of(sampler, key)[0] for key in keys}) == 1


@settings(max_examples=30, deadline=None)
@given(sizes=sizes_strategy, batch=st.integers(1, 5), world=st.integers(2, 4), epoch=st.integers(0, 3))
def test_ranks_agree_on_the_dataset_and_split_the_global_batch(
    sizes: list[int], batch: int, world: int, epoch: int
) -> None:
    ranks = [OneDatasetBatchSampler(sizes, batch, seed=3, rank=r, world_size=world) for r in range(world)]
    single = OneDatasetBatchSampler(sizes, batch * world, seed=3)
    per_rank = [_epoch(sampler, epoch) for sampler in ranks]
    for step, global_batch in enumerate(_epoch(single, epoch)):
        shards = [batches[step] for batches in per_rank]
        assert len({_dataset_of(ranks[0], shard[0])[0] for shard in shards}) == 1
        assert list(itertools.chain.from_iterable(shards)) == global_batch


@pytest.mark.parametrize(("sizes", "batch"), [([10, 7, 23], 4), ([5], 5), ([1, 40], 3), ([13, 13], 16)])
def test_alpha_one_covers_every_record_in_one_epoch(sizes: list[int], batch: int) -> None:
    sampler = OneDatasetBatchSampler(sizes, batch, alpha=1.0, seed=0)
    seen = {_dataset_of(sampler, key) for keys in _epoch(sampler, 0) for key in keys}
    assert seen == {(d, row) for d, size in enumerate(sizes) for row in range(size)}


def test_same_seed_and_epoch_reproduce_and_others_differ() -> None:
    make = lambda seed: OneDatasetBatchSampler([30, 50, 20], 4, alpha=0.5, seed=seed)  # noqa: E731
    assert _epoch(make(1), 2) == _epoch(make(1), 2)
    assert _epoch(make(1), 2) != _epoch(make(1), 3)
    assert _epoch(make(1), 2) != _epoch(make(2), 2)


@pytest.mark.parametrize("start", [0, 1, 7, 14])
def test_resume_continues_the_same_stream(start: int) -> None:
    sampler = OneDatasetBatchSampler([30, 50, 20], 4, alpha=0.5, seed=5, rank=1, world_size=2)
    full = _epoch(sampler, 1)
    resumed = _epoch(sampler, 1, start)
    assert resumed == full[start:]
    assert len(sampler) == len(full) - start


def test_stream_carries_on_across_epochs_and_draws_differ() -> None:
    sampler = OneDatasetBatchSampler([12], 4, seed=0)
    first, second = _epoch(sampler, 0), _epoch(sampler, 1)
    keys = [k for batch in first + second for k in batch]
    assert len(set(keys)) == len(keys)  # a second pass has its own draw number, so keys never repeat
    assert sorted(decode_key(k, 12)[1] for batch in second for k in batch) == list(range(12))


def test_quotas_follow_size_power_caps_and_weights() -> None:
    assert mixture_quotas([100, 100], 10) == [10, 10]
    assert mixture_quotas([100, 25], 5, alpha=1.0) == [20, 5]
    equal = mixture_quotas([400, 100], 10, alpha=0.0)
    assert equal[0] == equal[1] == 25
    assert mixture_quotas([400, 100], 10, alpha=0.0, caps=[None, 30]) == [22, 3]  # T = (400 + 30) / 10
    assert mixture_quotas([100, 100], 10, weights=[3.0, 1.0]) == [15, 5]


def test_small_dataset_is_oversampled_with_low_alpha() -> None:
    sampler = OneDatasetBatchSampler([1000, 10], 5, alpha=0.0, seed=0)
    counts = np.bincount(sampler.schedule(0), minlength=2)
    assert counts[1] == counts[0]


def test_rejects_empty_datasets_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        OneDatasetBatchSampler([3, 0], 2)
    with pytest.raises(ValueError, match="outside world size"):
        OneDatasetBatchSampler([3], 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_step"):
        OneDatasetBatchSampler([3], 2).set_epoch(0, 99)
