"""Meters: what was delivered, what was paid, and what each side may do next.

Pure bookkeeping, no I/O and no clock: one meter per (buyer, provider, service)
relationship, which is also one payment channel. Amounts are satoshis; a unit is
what the service sells (a tick of tool time, a reading, a call) at a fixed price
agreed when the relationship starts.

The two promises of the mesh (docs/ARCHITECTURE.md §6) are invariants of these classes:

* a provider never delivers beyond what is paid plus its credit window:
  ``delivered_value <= paid + credit`` at all times;
* a buyer never pays beyond what was delivered plus its prepay window, nor above
  its budget: ``paid <= min(delivered_value + prepay, budget)`` at all times.

A meter is *frozen* when the peer is declared dead (session lost, heartbeat
silent): a frozen provider delivers nothing more and a frozen buyer pays nothing
more, until it is explicitly thawed by a new session.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mesh.errors import LocalProtocolError


class MeteringError(LocalProtocolError):
    """A meter was asked to break one of its invariants."""


@dataclass(frozen=True)
class ProviderMeter:
    """The provider's view: it may deliver while delivery stays within paid + credit."""

    price: int
    credit: int
    delivered_units: int = 0
    paid: int = 0
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.price <= 0 or self.credit < 0:
            raise MeteringError("price must be positive and credit non-negative")

    @property
    def delivered_value(self) -> int:
        """Satoshis' worth of units delivered."""
        return self.delivered_units * self.price

    def deliverable_units(self) -> int:
        """How many more units may be delivered now."""
        if self.frozen:
            return 0
        headroom = self.paid + self.credit - self.delivered_value
        return max(0, headroom // self.price)

    def deliver(self, units: int = 1) -> ProviderMeter:
        """Record `units` delivered; refuses to exceed paid + credit."""
        if units <= 0 or units > self.deliverable_units():
            raise MeteringError(
                f"delivering {units} unit(s) would exceed paid {self.paid} + credit {self.credit}"
            )
        return replace(self, delivered_units=self.delivered_units + units)

    def paid_up_to(self, total: int) -> ProviderMeter:
        """The channel's durable total paid for this relationship (it only grows)."""
        if total < self.paid:
            raise MeteringError(f"paid total went backwards ({total} < {self.paid})")
        return replace(self, paid=total)

    def owed(self) -> int:
        """Satoshis delivered but not yet paid (at most the credit window)."""
        return max(0, self.delivered_value - self.paid)

    def freeze(self) -> ProviderMeter:
        """The buyer is gone: deliver nothing more."""
        return replace(self, frozen=True)

    def thaw(self) -> ProviderMeter:
        """The buyer is back."""
        return replace(self, frozen=False)


@dataclass(frozen=True)
class BuyerMeter:
    """The buyer's view: it pays for what arrived plus a prepay window, within budget."""

    price: int
    prepay: int
    budget: int
    min_payment: int = 1
    received_units: int = 0
    paid: int = 0
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.price <= 0 or self.prepay < 0 or self.budget < 0 or self.min_payment < 1:
            raise MeteringError("price positive; prepay, budget non-negative; min payment >= 1")

    @property
    def received_value(self) -> int:
        """Satoshis' worth of units received."""
        return self.received_units * self.price

    def receive(self, units: int = 1) -> BuyerMeter:
        """Record `units` that arrived."""
        if units <= 0:
            raise MeteringError("received units must be positive")
        return replace(self, received_units=self.received_units + units)

    def due(self) -> int:
        """What may be paid now: up to received + prepay, never above the budget.

        Amounts below `min_payment` accumulate until they are worth an update,
        except what is owed for units already received, which is always due.
        """
        if self.frozen:
            return 0
        ceiling = min(self.received_value + self.prepay, self.budget)
        amount = max(0, ceiling - self.paid)
        owed = max(0, min(self.received_value, self.budget) - self.paid)
        if amount < self.min_payment and owed == 0:
            return 0
        return amount

    def pay(self, amount: int) -> BuyerMeter:
        """Record a payment; refuses to exceed what is due."""
        if amount <= 0 or self.paid + amount > min(self.received_value + self.prepay, self.budget):
            raise MeteringError(
                f"paying {amount} would exceed received {self.received_value} + prepay "
                f"{self.prepay} or budget {self.budget}"
            )
        return replace(self, paid=self.paid + amount)

    def units_affordable(self) -> int:
        """How many more units the budget can pay for."""
        return max(0, (self.budget - self.received_value) // self.price)

    def freeze(self) -> BuyerMeter:
        """The provider is gone: pay nothing more."""
        return replace(self, frozen=True)

    def thaw(self) -> BuyerMeter:
        """The provider is back."""
        return replace(self, frozen=False)
