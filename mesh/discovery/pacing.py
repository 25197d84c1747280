"""How often an agent re-announces itself, and with what TTL, so that a site of any
size costs each listener a bounded number of mDNS bytes a second (no I/O).

Every agent refreshes its own records: it multicasts them, unasked, every
`ANNOUNCE_FRACTION` of their TTL (two chances before a listener would drop it), so
listeners never have to query to keep a peer (RFC 6762 §5.2's cache-maintenance
queries cost N listeners x N peers; an owner's announcement refreshes every listener
at once). With N peers each announcing `record_bytes` every ``0.4 ttl`` seconds, a
listener receives ``N * record_bytes / (0.4 ttl)`` bytes a second, so the TTL grows
with the site: `advertised_ttl` is the smallest TTL, at least the configured one,
that keeps this under `SITE_BUDGET`. A small site keeps the configured TTL (and a
crashed machine leaves the tables within it): up to ~100 peers at the default
120 s, and up to `SMALL_SITE` peers whatever the TTL, so that tests with TTLs of a
few seconds expire peers as configured. At a thousand peers the TTL is ~19 minutes:
the price of a quiet network is that a machine that lost its power stays listed
that long (sessions notice in seconds: heartbeats).

Every agent sees about the same table, so every agent picks about the same TTL;
`should_readvertise` keeps one from re-registering for every peer that comes or
goes (a change of TTL re-announces three times). (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

import math

ANNOUNCE_FRACTION = 0.4
"""An agent re-announces its records every this fraction of their TTL."""
SITE_BUDGET = 1000
"""Bytes a second of all peers' announcements that one listener may receive."""
TTL_STEP = 60
"""Advertised TTLs above the configured one are whole minutes."""
MAX_TTL = 4500
"""The longest TTL advertised (RFC 6762's for non-host records)."""
SMALL_SITE = 32
"""A site of at most this many peers keeps the configured TTL whatever it costs."""
HYSTERESIS = 1.25
"""A TTL is re-advertised only when the target moved by this factor."""


def advertised_ttl(peers: int, record_bytes: int, floor: int, budget: int = SITE_BUDGET) -> int:
    """The TTL to advertise among `peers` others whose announcements are each
    `record_bytes` long: the configured `floor`, or more if the site needs it."""
    needed = peers * record_bytes / (ANNOUNCE_FRACTION * budget)
    if needed <= floor or peers <= SMALL_SITE:
        return floor
    return min(MAX_TTL, max(floor, math.ceil(needed / TTL_STEP) * TTL_STEP))


def announce_every(ttl: float) -> float:
    """Seconds between two of our own announcements at `ttl`."""
    return ANNOUNCE_FRACTION * ttl


def should_readvertise(current: int, target: int) -> bool:
    """Whether to re-register with `target` instead of `current` (both TTLs): on a
    rise that would overrun the budget, or a fall by `HYSTERESIS`."""
    return target > current or target * HYSTERESIS <= current


__all__ = [
    "ANNOUNCE_FRACTION",
    "HYSTERESIS",
    "MAX_TTL",
    "SITE_BUDGET",
    "SMALL_SITE",
    "TTL_STEP",
    "advertised_ttl",
    "announce_every",
    "should_readvertise",
]
