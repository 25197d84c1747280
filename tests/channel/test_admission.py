"""The payee's admission rules for channel proposals, without I/O (`mesh.channel.admission`)."""

from __future__ import annotations

import pytest

from mesh.channel.admission import REFUSED_CODE, SET_ASIDE_CODE, Admission, AdmissionLimits


def cid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_per_peer_and_total_caps_refuse_before_anything_is_signed() -> None:
    admission = Admission(AdmissionLimits(per_peer=2, total=3))
    for n in range(2):
        assert admission.check("a", 0.0) is None
        admission.add("a", cid(n), 0.0)
    refusal = admission.check("a", 0.0)
    assert refusal is not None and refusal[0] == REFUSED_CODE and "per peer" in refusal[1]
    assert admission.check("b", 0.0) is None
    admission.add("b", cid(10), 0.0)
    refusal = admission.check("c", 0.0)
    assert refusal is not None and "too many" in refusal[1]
    admission.settled(cid(0))  # funded: no longer counted
    assert admission.check("a", 0.0) is None
    assert admission.statistics(0.0).refused == 2


def test_unfunded_proposals_expire_after_their_lifetime() -> None:
    admission = Admission(AdmissionLimits(lifetime=10.0))
    admission.add("a", cid(1), 0.0)
    admission.add("a", cid(2), 5.0)
    assert admission.next_deadline() == 10.0
    assert admission.expired(9.9) == []
    assert admission.expired(10.0) == [cid(1)]
    assert admission.is_pending(cid(2)) and not admission.is_pending(cid(1))
    assert admission.expired(20.0) == [cid(2)]
    assert admission.next_deadline() == float("inf")
    assert admission.statistics(20.0).expired == 2


def test_strikes_set_a_peer_aside_with_a_doubling_backoff() -> None:
    admission = Admission(AdmissionLimits(max_strikes=3, backoff=10.0, max_backoff=25.0))
    assert [admission.strike("a", 0.0) for _ in range(3)] == [False, False, True]
    assert admission.set_aside_until("a", 1.0) == 10.0
    refusal = admission.check("a", 1.0)
    assert refusal is not None and refusal[0] == SET_ASIDE_CODE
    assert admission.strike("a", 2.0)  # while aside: every refusal ends the session
    assert admission.set_aside_until("a", 10.0) is None
    assert [admission.strike("a", 11.0) for _ in range(3)] == [False, False, True]
    assert admission.set_aside_until("a", 11.0) == 31.0  # 20 s the second time
    assert [admission.strike("a", 40.0) for _ in range(3)] == [False, False, True]
    assert admission.set_aside_until("a", 40.0) == 65.0  # capped at 25 s


def test_the_strike_table_is_bounded() -> None:
    admission = Admission(AdmissionLimits(max_peers=8))
    for n in range(100):
        admission.strike(f"peer{n}", 0.0)
    assert len(admission._strikes) == 8


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        AdmissionLimits(per_peer=0)
    with pytest.raises(ValueError):
        AdmissionLimits(backoff=10.0, max_backoff=5.0)
