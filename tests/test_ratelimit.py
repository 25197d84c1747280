"""Token buckets per peer (`mesh.net.ratelimit`), with time passed in."""

from __future__ import annotations

import pytest

from mesh.net.ratelimit import PeerBudgets, TokenBucket


def test_a_bucket_starts_full_empties_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20)
    assert bucket.take(15, now=0.0)
    assert not bucket.take(10, now=0.0)  # 5 left: refused whole, nothing taken
    assert bucket.take(5, now=0.0)
    assert not bucket.take(1, now=0.05)  # half a token back
    assert bucket.take(1, now=0.1)
    assert bucket.take(20, now=100.0)  # refills to the burst, not beyond
    assert not bucket.take(1, now=100.0)


def test_more_than_the_burst_is_never_granted_and_time_going_back_gives_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=20)
    assert not bucket.take(21, now=0.0)
    assert bucket.take(20, now=5.0)
    assert not bucket.take(1, now=1.0)  # a clock that went back refills nothing
    assert bucket.take(10, now=6.0)


def test_a_bucket_needs_a_positive_rate_and_burst() -> None:
    for rate, burst in ((0, 1), (1, 0), (-1, 5), (float("nan"), 5)):
        with pytest.raises(ValueError, match="positive"):
            TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        PeerBudgets(0, 5)


def test_each_peer_has_its_own_budget() -> None:
    budgets = PeerBudgets(rate=1, burst=3)
    assert budgets.take("a", 3, now=0.0)
    assert not budgets.take("a", 1, now=0.0)
    assert budgets.take("b", 3, now=0.0)  # a's spending costs b nothing
    assert budgets.take("a", 1, now=1.0)


def test_past_the_cap_refilled_buckets_are_forgotten_first() -> None:
    budgets = PeerBudgets(rate=1, burst=10, max_peers=3)
    budgets.take("spent", 10, now=0.0)
    budgets.take("idle-1", 1, now=0.0)
    budgets.take("idle-2", 1, now=0.0)
    budgets.take("new", 1, now=2.0)  # idle-1 and idle-2 have refilled: forgotten
    assert len(budgets) == 2
    assert not budgets.take("spent", 5, now=2.0)  # still remembered, still spent
    for peer in ("c", "d", "e"):  # none refilled: the oldest goes each time
        budgets.take(peer, 10, now=2.0)
    assert len(budgets) == 3
