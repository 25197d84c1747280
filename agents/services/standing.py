"""Which sellers a buyer orders from: a seller that cheated or fell silent is set aside.

A buyer that caught a seller must not order from it again at once (each order risks a
prepay window). `SellerStanding` keeps, per seller, until when it is set aside and the
back-off that got it there: a cheat (a delivery that did not verify), or a payee that
refused a funding we put on chain (its coins locked until the expiry), for 10 minutes,
then doubling up to a day; silence (no unit within the want's wait limit) for 30 s, doubling up
to an hour; a refused order for 5 s, doubling up to 5 minutes. A complete order forgives
silence and refusals, never a cheat. A seller merely lost (its session ended) is not set
aside: it may be back in a second. No I/O; `now` is injected. (docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF = {
    "cheat": (600.0, 86_400.0),
    "funding": (600.0, 86_400.0),
    "silent": (30.0, 3_600.0),
    "refused": (5.0, 300.0),
}
"""fault -> (first back-off, longest back-off), seconds."""


@dataclass
class _Standing:
    aside_until: float = 0.0
    backoff: dict[str, float] | None = None
    cheats: int = 0


class SellerStanding:
    """Per seller: set aside until when, and why."""

    def __init__(self) -> None:
        self._sellers: dict[str, _Standing] = {}

    def judge(self, seller: str, fault: str, now: float) -> float | None:
        """An order from `seller` ended with `fault` ("" when it completed): until when
        it is set aside now (None: it is not)."""
        standing = self._sellers.setdefault(seller, _Standing())
        if fault not in BACKOFF:
            if not fault and standing.backoff is not None and not standing.cheats:
                standing.backoff = None  # a complete order forgives silence and refusals
            return None
        first, longest = BACKOFF[fault]
        backoffs = standing.backoff = standing.backoff or {}
        wait = backoffs[fault] = min(longest, backoffs[fault] * 2) if fault in backoffs else first
        standing.cheats += fault == "cheat"
        standing.aside_until = max(standing.aside_until, now + wait)
        return standing.aside_until

    def usable(self, seller: str, now: float) -> bool:
        """Whether an order may go to `seller` now."""
        standing = self._sellers.get(seller)
        return standing is None or standing.aside_until <= now

    def aside(self, now: float) -> dict[str, float]:
        """Sellers set aside now, and until when (for `mesh status`)."""
        return {s: st.aside_until for s, st in self._sellers.items() if st.aside_until > now}


__all__ = ["BACKOFF", "SellerStanding"]
