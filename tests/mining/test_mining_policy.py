import math

import pytest

from piccolo_embed.mining import Candidate, NegativePolicy


def cands(*scored: tuple[str, float]) -> list[Candidate]:
    return [Candidate(text, score, rank) for rank, (text, score) in enumerate(scored)]


RANKED = cands(
    ("fn-high", 0.97),  # rank 0: above the positive
    ("pos", 0.90),  # rank 1: the positive itself
    ("fn-near", 0.87),  # rank 2: above 0.95 * 0.9 = 0.855
    ("h1", 0.85),  # rank 3
    ("h2", 0.78),  # rank 4
    ("h3", 0.70),  # rank 5
    ("easy", 0.10),  # rank 6
)


def choose(policy: NegativePolicy, candidates=RANKED, **kwargs) -> list[str]:
    args = {"query": "q", "positives": ["pos"], "positive_score": 0.9, "query_index": 0} | kwargs
    return [c.text for c in policy.apply(candidates, **args).negatives]


def test_window_ratio_and_positive_rules():
    policy = NegativePolicy(rank_start=0, rank_end=7, num_negatives=10, max_score_ratio=0.95)
    selection = policy.apply(RANKED, query="q", positives=["pos"], positive_score=0.9, query_index=0)
    assert [c.text for c in selection.negatives] == ["h1", "h2", "h3", "easy"]
    assert (selection.eligible, selection.dropped_positive, selection.dropped_false_negative) == (4, 1, 2)


def test_rank_window_is_start_inclusive_end_exclusive():
    policy = NegativePolicy(rank_start=3, rank_end=5, num_negatives=10, max_score_ratio=None)
    assert choose(policy) == ["h1", "h2"]


def test_without_filters_only_positives_and_the_query_are_dropped():
    policy = NegativePolicy(rank_start=0, rank_end=7, num_negatives=10, max_score_ratio=None)
    assert choose(policy, query="easy") == ["fn-high", "fn-near", "h1", "h2", "h3"]


def test_absolute_margin():
    policy = NegativePolicy(rank_start=0, rank_end=7, num_negatives=10, max_score_ratio=None, margin=0.1)
    assert choose(policy) == ["h2", "h3", "easy"]  # limit 0.8: h1 (0.85) is too close to the positive


def test_both_rules_take_the_stricter_limit():
    assert NegativePolicy(max_score_ratio=0.95, margin=0.01).score_limit(0.9) == pytest.approx(0.855)
    assert NegativePolicy(max_score_ratio=0.99, margin=0.1).score_limit(0.9) == pytest.approx(0.8)
    assert math.isinf(NegativePolicy(max_score_ratio=None).score_limit(0.9))


def test_ratio_never_lifts_the_limit_above_a_negative_positive_score():
    assert NegativePolicy(max_score_ratio=0.5).score_limit(-0.2) == pytest.approx(-0.2)


def test_positive_match_ignores_surrounding_whitespace_and_duplicates_count_once():
    ranked = cands((" pos\n", 0.5), ("dup", 0.4), ("dup ", 0.3), ("pos", 0.2))
    policy = NegativePolicy(rank_start=0, rank_end=4, num_negatives=5, max_score_ratio=None)
    selection = policy.apply(ranked, query="q", positives=["pos"], positive_score=0.9, query_index=0)
    assert [c.text for c in selection.negatives] == ["dup"]
    assert selection.dropped_positive == 1


def test_excluded_texts_are_skipped_silently():
    policy = NegativePolicy(rank_start=0, rank_end=7, num_negatives=10, max_score_ratio=None)
    assert choose(policy, exclude=["h2 "]) == ["fn-high", "fn-near", "h1", "h3", "easy"]


def test_sampling_is_seeded_per_query_and_in_rank_order():
    ranked = cands(*[(f"n{i}", 0.5 - i / 100) for i in range(40)])
    policy = NegativePolicy(rank_start=0, rank_end=40, num_negatives=5, max_score_ratio=None, seed=3)
    first = choose(policy, ranked, query_index=7)
    assert first == choose(policy, ranked, query_index=7)
    assert first == sorted(first, key=lambda t: int(t[1:]))
    assert len(first) == 5 and len(set(first)) == 5
    draws = {tuple(choose(policy, ranked, query_index=i)) for i in range(20)}
    assert len(draws) > 15  # different queries get different draws
    reseeded = NegativePolicy(rank_start=0, rank_end=40, num_negatives=5, max_score_ratio=None, seed=4)
    assert choose(reseeded, ranked, query_index=7) != first


def test_candidate_order_does_not_matter():
    policy = NegativePolicy(rank_start=1, rank_end=6, num_negatives=2)
    assert choose(policy, list(reversed(RANKED))) == choose(policy)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank_start": 5, "rank_end": 5},
        {"rank_start": -1},
        {"num_negatives": 0},
        {"max_score_ratio": 0.0},
        {"max_score_ratio": 1.5},
        {"margin": -0.1},
    ],
)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        NegativePolicy(**kwargs)


def test_policy_is_frozen():
    with pytest.raises(AttributeError):
        NegativePolicy().num_negatives = 3
