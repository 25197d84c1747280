"""Pacing rules: the TTL a site needs, how often we announce, when to re-advertise."""

from __future__ import annotations

import pytest

from mesh.discovery.announcer import JITTER
from mesh.discovery.pacing import (
    ANNOUNCE_FRACTION,
    HYSTERESIS,
    MAX_TTL,
    SITE_BUDGET,
    SMALL_SITE,
    TTL_STEP,
    advertised_ttl,
    announce_every,
    should_readvertise,
)
from mesh.discovery.table import REFRESH_POINTS

RECORD = 450
"""Bytes of one announcement, about what an agent's measures (PTR, SRV, TXT, A, NSEC)."""


def listener_bytes_per_second(peers: int, record_bytes: int, ttl: int) -> float:
    return peers * record_bytes / announce_every(ttl)


@pytest.mark.parametrize("floor", [3, 120])
@pytest.mark.parametrize("peers", [0, 1, 10, SMALL_SITE])
def test_a_small_site_keeps_the_configured_ttl(peers: int, floor: int) -> None:
    assert advertised_ttl(peers, RECORD, floor=floor) == floor


def test_the_default_ttl_holds_up_to_about_a_hundred_peers() -> None:
    assert advertised_ttl(100, RECORD, floor=120) == 120
    assert advertised_ttl(110, RECORD, floor=120) == 180


def test_a_short_test_ttl_is_raised_beyond_a_small_site() -> None:
    assert advertised_ttl(SMALL_SITE + 1, RECORD, floor=3) == TTL_STEP


@pytest.mark.parametrize("peers", [100, 250, 500, 1000, 2000, 3500])
def test_a_large_site_stays_under_budget(peers: int) -> None:
    ttl = advertised_ttl(peers, RECORD, floor=120)
    assert ttl % TTL_STEP == 0 and 120 <= ttl <= MAX_TTL
    assert listener_bytes_per_second(peers, RECORD, ttl) <= SITE_BUDGET
    # The smallest such TTL, up to one step: a crashed peer lingers no longer than needed.
    if ttl > 120:
        assert listener_bytes_per_second(peers, RECORD, ttl - TTL_STEP) > SITE_BUDGET


def test_a_thousand_peers_cost_a_listener_under_2_kb_per_second() -> None:
    ttl = advertised_ttl(1000, RECORD, floor=120)
    assert ttl == 1140  # 19 minutes
    fastest = announce_every(ttl) * (1 - JITTER)  # every peer at its shortest interval
    assert 1000 * RECORD / fastest < 2000


def test_the_ttl_is_capped() -> None:
    assert advertised_ttl(100_000, RECORD, floor=120) == MAX_TTL
    assert advertised_ttl(0, RECORD, floor=MAX_TTL) == MAX_TTL


def test_announcements_come_twice_before_the_rescue_query() -> None:
    assert announce_every(100) == pytest.approx(ANNOUNCE_FRACTION * 100)
    latest_second = 2 * ANNOUNCE_FRACTION * (1 + JITTER)
    assert latest_second < min(REFRESH_POINTS) < 1


def test_hysteresis() -> None:
    assert not should_readvertise(120, 120)
    assert should_readvertise(120, 180)  # a rise would overrun the budget: at once
    assert should_readvertise(1140, 1200)
    assert not should_readvertise(1140, 1080)  # a small fall: keep the TTL
    assert not should_readvertise(1140, int(1140 / HYSTERESIS) + 1)
    assert should_readvertise(1140, int(1140 / HYSTERESIS))
    assert should_readvertise(1140, 120)  # the site emptied


def test_peers_joining_and_leaving_one_by_one_do_not_flap_the_ttl() -> None:
    current, changes = 120, 0
    for peers in [*range(0, 1001), *range(1000, 899, -1), *range(900, 1001)]:
        target = advertised_ttl(peers, RECORD, floor=120)
        if should_readvertise(current, target):
            current, changes = target, changes + 1
    assert current == 1140
    rises = (1140 - 120) // TTL_STEP
    assert changes == rises  # 10 % fewer peers and back: no re-advertisement
