"""The services' frames (tags 30-39): a buyer's order, the provider's deliveries, stop
and done (`agents.services`). The application's own: the library only carries
them. Registered in the codec's one table (`mesh.wire`). (docs/ARCHITECTURE.md §3, §6)"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Frame, frame

# --------------------------------------------------------------------------- services
# Orders for a provider's service (agents/services), paid through the channel
# named in the order. `order_id` is 16 random bytes chosen by the buyer.


@frame(30)
@dataclass(frozen=True, slots=True)
class ServiceOrder(Frame):
    """Buyer -> provider: deliver up to `units` of `service`, paid on `channel_id`."""

    order_id: bytes
    service: str
    channel_id: bytes
    units: int
    price: int
    request: bytes


@frame(31)
@dataclass(frozen=True, slots=True)
class ServiceDelivery(Frame):
    """Provider -> buyer: `units` more delivered (a tick, a reading, a call result).

    For a data feed, `payload` is the signed reading and `signature` the device
    key's signature over it; for tool time both may be empty.
    """

    order_id: bytes
    seq: int
    units: int
    payload: bytes
    signature: bytes


@frame(32)
@dataclass(frozen=True, slots=True)
class ServiceStop(Frame):
    """Buyer -> provider: stop after what is already paid for."""

    order_id: bytes
    reason: str


@frame(33)
@dataclass(frozen=True, slots=True)
class ServiceDone(Frame):
    """Provider -> buyer: the order is over; `delivered` units in all."""

    order_id: bytes
    delivered: int
    reason: str
