"""The batching policy as a pure function: snapshots in, decisions out, time given as numbers (no threads)."""

from __future__ import annotations

import math

from pytest import approx

from piccolo_embed.serving.policy import Budgets, LastWindow, Run, Snapshot, Wait, Waiting, decide
from piccolo_embed.types import Role

BUDGETS = Budgets(max_batch_size=8, max_batch_tokens=1000, max_wait_s=0.005, window_texts=32)


def waiting(role: Role, *arrivals: float, tokens: int = 10) -> Waiting:
    return Waiting(role, list(arrivals), [tokens] * len(arrivals))


def test_nothing_waiting_waits_for_work() -> None:
    assert decide(Snapshot([]), BUDGETS, now=1.0) == Wait(math.inf, 1)


def test_a_lone_text_waits_for_company_until_its_deadline() -> None:
    snapshot = Snapshot([waiting(Role.NONE, 1.0)])
    assert decide(snapshot, BUDGETS, now=1.001) == Wait(approx(1.005), 8)
    assert decide(snapshot, BUDGETS, now=1.005) == Run(Role.NONE, 1)


def test_a_full_batch_runs_at_once_by_count_or_by_padded_tokens() -> None:
    assert decide(Snapshot([waiting(Role.NONE, *[1.0] * 8)]), BUDGETS, now=1.0) == Run(Role.NONE, 8)
    long_texts = Waiting(Role.NONE, [1.0, 1.0], [10, 500])  # 2 x 500 padded tokens = the budget
    assert decide(Snapshot([long_texts]), BUDGETS, now=1.0) == Run(Role.NONE, 2)


def test_the_window_caps_what_is_taken() -> None:
    assert decide(Snapshot([waiting(Role.NONE, *[1.0] * 100)]), BUDGETS, now=1.0) == Run(Role.NONE, 32)


def test_the_oldest_texts_role_goes_first() -> None:
    snapshot = Snapshot([waiting(Role.PASSAGE, 2.0, 2.0), waiting(Role.QUERY, 1.0)])
    assert decide(snapshot, BUDGETS, now=1.01) == Run(Role.QUERY, 1)


def test_the_deadline_counts_from_the_previous_windows_end_when_later() -> None:
    last = LastWindow(answered=0, answers_at=1.0, ended_at=3.0)
    snapshot = Snapshot([waiting(Role.NONE, 1.0)], last)
    assert decide(snapshot, BUDGETS, now=3.001) == Wait(approx(3.005), 8)


def test_after_a_window_the_batch_runs_once_its_clients_are_back() -> None:
    last = LastWindow(answered=3, answers_at=1.0, ended_at=1.002)
    assert decide(Snapshot([waiting(Role.NONE, 1.001, 1.002)], last), BUDGETS, now=1.003) == Wait(approx(1.007), 3)
    back = Snapshot([waiting(Role.NONE, 1.001, 1.002, 1.003)], last)
    assert decide(back, BUDGETS, now=1.003) == Run(Role.NONE, 3)  # no wait for the deadline


def test_texts_waiting_before_the_answers_are_not_the_clients_coming_back() -> None:
    last = LastWindow(answered=2, answers_at=1.0, ended_at=1.002)
    snapshot = Snapshot([waiting(Role.NONE, 0.999, 1.001)], last)
    assert decide(snapshot, BUDGETS, now=1.003) == Wait(approx(1.007), 3)  # 1 older text + the 2 answered clients
    back = Snapshot([waiting(Role.NONE, 0.999, 1.001, 1.002)], last)
    assert decide(back, BUDGETS, now=1.003) == Run(Role.NONE, 3)


def test_after_an_idle_spell_nobody_is_expected_back() -> None:
    last = LastWindow(answered=1, answers_at=1.0, ended_at=1.0)
    late = Snapshot([waiting(Role.NONE, 1.5)], last)  # far more than 2 x max_wait after the answers
    assert decide(late, BUDGETS, now=1.501) == Wait(approx(1.505), 8)
    soon = Snapshot([waiting(Role.NONE, 1.009)], last)  # within 2 x max_wait: the client came back
    assert decide(soon, BUDGETS, now=1.009) == Run(Role.NONE, 1)


def test_the_expected_count_never_exceeds_a_full_batch() -> None:
    last = LastWindow(answered=50, answers_at=1.0, ended_at=1.0)
    assert decide(Snapshot([waiting(Role.NONE, *[1.001] * 5)], last), BUDGETS, now=1.002) == Wait(approx(1.006), 8)
