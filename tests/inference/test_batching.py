from hypothesis import given, settings
from hypothesis import strategies as st

from piccolo_embed.inference.batching import plan_batches


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=200),
    max_batch_size=st.integers(min_value=1, max_value=64),
    max_batch_tokens=st.integers(min_value=1, max_value=5000),
)
def test_plan_covers_every_index_once_and_respects_limits(lengths, max_batch_size, max_batch_tokens):
    batches = plan_batches(lengths, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_batch_size
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= max_batch_tokens or len(batch) == 1


def test_longest_first_and_grouped_by_length():
    lengths = [5, 100, 7, 100, 6]
    batches = plan_batches(lengths, max_batch_size=2, max_batch_tokens=10_000)
    assert batches == [[1, 3], [2, 4], [0]]


def test_token_budget_splits_before_count_limit():
    batches = plan_batches([50] * 10, max_batch_size=100, max_batch_tokens=120)
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2]
