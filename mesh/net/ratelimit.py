"""Token buckets per peer: how much work a peer may ask of us per second (no I/O).

A bucket holds up to `burst` tokens and refills at `rate` per second; a request for
`cost` tokens is granted when that many are there. Time is passed in (`now`, any
monotonic clock in seconds), so the rules are tested without waiting.
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` at once; starts full."""

    rate: float
    burst: float
    level: float = field(init=False)
    at: float | None = field(default=None, init=False)  # when `level` was last brought up

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst > 0):
            raise ValueError("a token bucket needs a positive rate and burst")
        self.level = self.burst

    def take(self, cost: float, now: float) -> bool:
        """Take `cost` tokens if they are there (True); otherwise take none (False)."""
        if self.at is not None and now > self.at:
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now if self.at is None else max(self.at, now)
        if cost > self.level:
            return False
        self.level -= cost
        return True

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely by `now` (it may be forgotten)."""
        elapsed = 0.0 if self.at is None else max(0.0, now - self.at)
        return self.level + elapsed * self.rate >= self.burst


class PeerBudgets:
    """One `TokenBucket` per peer, at most `max_peers` remembered: past that, buckets
    that have refilled are forgotten (a forgotten peer starts full again, which is
    what a full bucket would have given it anyway); if none has, the oldest goes."""

    def __init__(self, rate: float, burst: float, *, max_peers: int = 1024) -> None:
        """Every peer gets `rate` per second, `burst` at once."""
        TokenBucket(rate, burst)  # checks the numbers once, up front
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, peer: str, cost: float, now: float) -> bool:
        """Take `cost` from `peer`'s bucket if it has that much (True), else nothing."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self.max_peers:
                self._forget(now)
            bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst)
        return bucket.take(cost, now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget(self, now: float) -> None:
        refilled = [peer for peer, bucket in self._buckets.items() if bucket.full(now)]
        for peer in refilled or [next(iter(self._buckets))]:
            del self._buckets[peer]


__all__ = ["PeerBudgets", "TokenBucket"]
