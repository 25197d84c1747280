"""Orders and deliveries per service since the agent started, for `mesh status`, the
dashboard and `/metrics`: a counter bumped where the order starts and where a unit is
delivered (seller) or accepted (buyer); nothing else reads or writes it.
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Tally:
    """One service's counts."""

    orders: int = 0
    deliveries: int = 0
    """Units delivered (a reading of a data feed, a unit of a metered service)."""


class Tallies:
    """Per service id: orders begun and units delivered."""

    def __init__(self) -> None:
        """Nothing counted yet."""
        self._by: dict[str, Tally] = {}

    def __getitem__(self, service: str) -> Tally:
        """The service's tally, made on first use."""
        tally = self._by.get(service)
        if tally is None:
            tally = self._by[service] = Tally()
        return tally

    def to_json(self) -> dict[str, dict[str, int]]:
        """{service: {"orders": n, "deliveries": n}}."""
        return {service: asdict(tally) for service, tally in self._by.items()}
