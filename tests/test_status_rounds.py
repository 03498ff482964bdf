"""Which status round asks about a transaction (``actors.registry_gateway.round_for``):
rounds wait a little for company and never ask about a transaction before it is due."""

from __future__ import annotations

import pytest

from actors.registry_gateway import StatusRound, round_for

WAIT = 0.1


def test_a_round_starts_one_wait_after_its_first_transaction_and_takes_those_due_meanwhile() -> None:
    rounds: list[StatusRound] = []
    first = round_for(rounds, "Narnia", "a", 1.00, WAIT, limit=10)
    assert first is not None and first.at == pytest.approx(1.10)
    assert round_for(rounds, "Narnia", "b", 1.04, WAIT, limit=10) is None
    assert round_for(rounds, "Narnia", "c", 1.10, WAIT, limit=10) is None  # due just as it starts
    assert rounds == [first] and first.start() == ("a", "b", "c")


def test_a_transaction_never_joins_a_round_due_before_it() -> None:
    rounds: list[StatusRound] = []
    first = round_for(rounds, "Narnia", "a", 1.00, WAIT, limit=10)
    later = round_for(rounds, "Narnia", "b", 1.11, WAIT, limit=10)
    assert later is not None and later is not first and later.at == pytest.approx(1.21)
    # Due long before an open round (a retry's backoff ending sooner): a round of its own,
    # rather than asking it much later than due.
    sooner = round_for(rounds, "Narnia", "c", 0.95, WAIT, limit=10)
    assert sooner is not None and sooner.at == pytest.approx(1.05)
    assert [r.start() for r in rounds] == [("a",), ("b",), ("c",)]


def test_a_started_or_full_round_takes_no_one() -> None:
    rounds: list[StatusRound] = []
    first = round_for(rounds, "Narnia", "a", 1.00, WAIT, limit=2)
    assert first is not None
    assert round_for(rounds, "Narnia", "b", 1.01, WAIT, limit=2) is None
    full = round_for(rounds, "Narnia", "c", 1.02, WAIT, limit=2)
    assert full is not None and full is not first
    full.start()
    after_start = round_for(rounds, "Narnia", "d", 1.03, WAIT, limit=2)
    assert after_start is not None and after_start not in (first, full)


def test_with_no_wait_only_transactions_due_at_the_same_moment_share_a_round() -> None:
    rounds: list[StatusRound] = []
    first = round_for(rounds, "Narnia", "a", 1.00, 0.0, limit=10)
    assert first is not None and first.at == 1.00
    assert round_for(rounds, "Narnia", "b", 1.00, 0.0, limit=10) is None
    assert round_for(rounds, "Narnia", "c", 1.001, 0.0, limit=10) is not None
