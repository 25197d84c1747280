"""Which channel proposals a payee takes: bounded, expiring, with back-off. No I/O.

Anything a stranger can make a payee keep must be bounded and must expire
(docs/ARCHITECTURE.md §10). A `ChannelOpen` costs the payee a refund signature and a
stored row before any coin is on chain, so:

* at most `per_peer` unfunded proposals per peer and `total` over all peers; more are
  refused before anything is signed;
* an unfunded proposal lives `lifetime` seconds, then the shell deletes it (its keys are
  bound to its terms, `mesh.channel.keys`, so forgetting it is safe);
* every refusal of a peer's channel frame is a strike; at `max_strikes` the peer is set
  aside for `backoff` seconds (doubling on each repeat, up to `max_backoff`): its
  session is ended and, while set aside, each new session ends at its first channel
  frame that is refused.

Time is injected (`now`, seconds); the shell asks `next_deadline()` when to call
`expired(now)`. The tables of strikes are bounded too (`max_peers`, oldest dropped).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

REFUSED_CODE = "too-many-proposals"
SET_ASIDE_CODE = "set-aside"


@dataclass(frozen=True)
class AdmissionLimits:
    """The bounds on unfunded proposals and on a misbehaving peer (see the module doc)."""

    per_peer: int = 4
    total: int = 64
    lifetime: float = 60.0
    max_strikes: int = 3
    backoff: float = 60.0
    max_backoff: float = 3600.0
    max_peers: int = 4096

    def __post_init__(self) -> None:
        if min(self.per_peer, self.total, self.max_strikes, self.max_peers) < 1:
            raise ValueError("admission limits must be at least 1")
        if self.lifetime <= 0 or self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("lifetime and back-off must be positive (max >= first back-off)")


@dataclass
class _Strikes:
    count: int = 0
    aside_until: float = 0.0
    backoff: float = 0.0


@dataclass(frozen=True)
class AdmissionStatistics:
    """A snapshot: proposals pending, refused, expired; peers set aside now."""

    pending: int
    refused: int
    expired: int
    set_aside: int


class Admission:
    """The payee's bookkeeping of unfunded proposals and of strikes per peer."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self._pending: dict[bytes, tuple[str, float]] = {}  # channel id -> (peer, deadline)
        self._per_peer: dict[str, int] = {}
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()
        self._refused = 0
        self._expired = 0

    # ------------------------------------------------------------------ proposals

    def check(self, peer_id: str, now: float) -> tuple[str, str] | None:
        """Why a new proposal from `peer_id` must be refused now, or None to take it."""
        limits = self.limits
        refusal: tuple[str, str] | None = None
        if self.set_aside_until(peer_id, now) is not None:
            refusal = (SET_ASIDE_CODE, "this peer is set aside for earlier violations")
        elif self._per_peer.get(peer_id, 0) >= limits.per_peer:
            refusal = (REFUSED_CODE, f"at most {limits.per_peer} unfunded channels per peer")
        elif len(self._pending) >= limits.total:
            refusal = (REFUSED_CODE, "too many unfunded channels; try again later")
        if refusal is not None:
            self._refused += 1
        return refusal

    def add(self, peer_id: str, channel_id: bytes, now: float) -> None:
        """A proposal from `peer_id` was taken (its refund signed) at `now`."""
        if channel_id in self._pending:
            return
        self._pending[channel_id] = (peer_id, now + self.limits.lifetime)
        self._per_peer[peer_id] = self._per_peer.get(peer_id, 0) + 1

    def settled(self, channel_id: bytes) -> None:
        """The proposal was funded, failed or forgotten: no longer counted."""
        entry = self._pending.pop(channel_id, None)
        if entry is None:
            return
        peer_id = entry[0]
        left = self._per_peer[peer_id] - 1
        if left:
            self._per_peer[peer_id] = left
        else:
            del self._per_peer[peer_id]

    def is_pending(self, channel_id: bytes) -> bool:
        """Whether `channel_id` is an unfunded proposal we still hold."""
        return channel_id in self._pending

    def expired(self, now: float) -> list[bytes]:
        """The proposals whose lifetime is over (no longer counted; the shell deletes
        them)."""
        gone = [cid for cid, (_, deadline) in self._pending.items() if deadline <= now]
        for cid in gone:
            self.settled(cid)
        self._expired += len(gone)
        return gone

    def next_deadline(self) -> float:
        """When `expired` has something to return next (inf: nothing pending)."""
        return min((deadline for _, deadline in self._pending.values()), default=float("inf"))

    # ------------------------------------------------------------------ strikes

    def strike(self, peer_id: str, now: float) -> bool:
        """Count a refused frame of `peer_id`; True when its session must end now."""
        strikes = self._strikes.pop(peer_id, None) or _Strikes()
        self._strikes[peer_id] = strikes  # most recent last
        while len(self._strikes) > self.limits.max_peers:
            self._strikes.popitem(last=False)
        if strikes.aside_until > now:
            return True
        strikes.count += 1
        if strikes.count < self.limits.max_strikes:
            return False
        strikes.count = 0
        strikes.backoff = min(
            self.limits.max_backoff, strikes.backoff * 2 if strikes.backoff else self.limits.backoff
        )
        strikes.aside_until = now + strikes.backoff
        return True

    def set_aside_until(self, peer_id: str, now: float) -> float | None:
        """Until when `peer_id` is set aside, or None when it is not."""
        strikes = self._strikes.get(peer_id)
        if strikes is None or strikes.aside_until <= now:
            return None
        return strikes.aside_until

    def statistics(self, now: float) -> AdmissionStatistics:
        """A frozen snapshot of the counters."""
        aside = sum(1 for s in self._strikes.values() if s.aside_until > now)
        return AdmissionStatistics(len(self._pending), self._refused, self._expired, aside)


__all__ = [
    "REFUSED_CODE",
    "SET_ASIDE_CODE",
    "Admission",
    "AdmissionLimits",
    "AdmissionStatistics",
]
