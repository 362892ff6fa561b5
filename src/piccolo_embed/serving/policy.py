"""When to run a batch: one pure function of what waits, the budgets and the clock (no threads, no state).

:func:`decide` looks at a :class:`Snapshot` (per role: each waiting text's arrival time and token count, plus
what the previous window answered) and returns :class:`Run` (take this many texts of this role now) or
:class:`Wait` (until a time, or until that many texts wait). The rules, oldest text's role first:

* A full batch (``max_batch_size`` texts, or ``max_batch_tokens`` padded tokens) runs at once.
* Otherwise the batch waits at most ``max_wait_s``, counted from its oldest text's arrival or the previous
  window's end, whichever is later: once the model is free, a batch waits at most that long for company.
* Closed-loop clients (a fixed pool of callers, each sending again once answered) come back right after their
  answers, so after a window the batch stops waiting as soon as as many texts wait as that window answered,
  plus those that already waited when its answers went out. Without this, N such clients split into two
  cohorts that take turns, each pass holding about N/2 texts (32 one-text clients: 0.60 of offline ``encode``
  before, 0.66-0.69 after; docs/performance.md). The expectation lapses when the oldest text came more than
  ``RETURN_WINDOWS * max_wait_s`` after those answers (an idle spell): the batch waits for company again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from piccolo_embed.types import Role

# The previous window's clients count as returning if the oldest text came within this many max_wait_s.
RETURN_WINDOWS = 2


@dataclass(frozen=True)
class Budgets:
    """The batching limits."""

    max_batch_size: int
    max_batch_tokens: int
    max_wait_s: float
    window_texts: int  # most texts taken at once, then sorted by length and split into passes


@dataclass(frozen=True)
class Waiting:
    """The texts of one role waiting for the model, oldest first."""

    role: Role
    arrivals: Sequence[float]  # when each text's request arrived
    tokens: Sequence[int]  # each text's token count


@dataclass(frozen=True)
class LastWindow:
    """What the previous window answered: its clients may be sending again."""

    answered: int  # texts answered (or dropped) by the window
    answers_at: float  # when its first answers went out
    ended_at: float  # when its last pass ended


@dataclass(frozen=True)
class Snapshot:
    """Everything :func:`decide` looks at besides the budgets and the clock."""

    waiting: Sequence[Waiting]  # one entry per role with waiting texts
    last: LastWindow | None = None


@dataclass(frozen=True)
class Run:
    """Take the oldest ``texts`` waiting texts of ``role`` now."""

    role: Role
    texts: int


@dataclass(frozen=True)
class Wait:
    """Decide again at ``until`` (``inf``: when work arrives) or once ``texts`` texts wait, if sooner."""

    until: float
    texts: int


def decide(snapshot: Snapshot, budgets: Budgets, now: float) -> Run | Wait:
    """The next step for the batcher (see the module docstring for the rules)."""
    if not snapshot.waiting:
        return Wait(math.inf, 1)
    first = min(snapshot.waiting, key=lambda group: group.arrivals[0])
    queued = len(first.arrivals)
    take = Run(first.role, min(queued, budgets.window_texts))
    if _full(first, budgets):
        return take
    last = snapshot.last
    deadline = max(first.arrivals[0], last.ended_at if last else -math.inf) + budgets.max_wait_s
    expected = _expected_back(first, last, budgets)
    target = budgets.max_batch_size if expected is None else min(budgets.max_batch_size, expected)
    if queued >= target or now >= deadline:
        return take
    return Wait(deadline, target)


def _full(group: Waiting, budgets: Budgets) -> bool:
    """Whether ``group`` fills a forward pass, by count or by padded tokens."""
    if len(group.arrivals) >= budgets.max_batch_size:
        return True
    return len(group.tokens) * max(group.tokens, default=0) >= budgets.max_batch_tokens


def _expected_back(group: Waiting, last: LastWindow | None, budgets: Budgets) -> int | None:
    """How many texts to expect before running, or ``None`` when nobody is expected back."""
    if last is None or last.answered == 0:
        return None
    if group.arrivals[0] - max(last.answers_at, last.ended_at) > RETURN_WINDOWS * budgets.max_wait_s:
        return None  # an idle spell: the answered clients did not send again at once
    # Texts that already waited when the answers went out are not the answered clients coming back.
    already = sum(1 for arrival in group.arrivals if arrival < last.answers_at)
    return last.answered + already
