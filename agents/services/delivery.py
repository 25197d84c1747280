"""What a buyer counts as delivered: verified, new, and no faster than the clock. No I/O.

"Delivered" must never be the seller's word (docs/ARCHITECTURE.md §10, money rules). A buyer pays
for a unit only when `DeliveryCheck.accept` counted it:

* every delivery is exactly one unit, and never more than the order asked for;
* **data feed**: a reading is a well-formed record signed by the seller's identity key,
  on the ordered service's readings stream (``readings/<service>``), with a seq above
  every seq this buyer accepted on that stream before -- across orders, so a genuine
  reading sold twice counts once (`SeqMemory`);
* **call**: one answer (a non-empty payload) per request;
* **tool time**: at most one unit per `tick` of time since the order was sent, plus a
  `slack` of units for latency and rounding (an honest seller's units arrive later than
  the clock, never earlier).

Anything else raises `DeliveryViolation`: the buyer pays nothing for that frame and
ends the order. Time (`now`, seconds) is injected.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.profile import KINDS
from mesh.anchoring.errors import RecordError
from mesh.anchoring.record import SignedRecord, open_record
from mesh.errors import MeshError
from mesh.wire import ServiceDelivery

SLACK_UNITS = 1
"""Tool-time units allowed beyond ``elapsed / tick`` (the first unit's latency)."""


class DeliveryViolation(MeshError):
    """A delivery the buyer must not pay for; the message says why."""


class SeqMemory:
    """The highest reading seq a buyer accepted per (seller, stream), kept across
    orders (bounded: one int per seller and stream it ever bought from)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def last(self, seller: str, stream: str) -> int:
        """The highest seq accepted on that stream, -1 when none."""
        return self._last.get((seller, stream), -1)

    def accept(self, seller: str, stream: str, seq: int) -> None:
        """Remember `seq` as accepted (the caller checked it is new)."""
        self._last[(seller, stream)] = seq


@dataclass(frozen=True)
class Expected:
    """What the buyer ordered, as it understands it (never as the seller says)."""

    kind: str
    service: str
    seller: str
    units: int
    tick: float

    @property
    def stream(self) -> str:
        """The stream a data feed's readings must be on."""
        return f"readings/{self.service}"


class DeliveryCheck:
    """Counts the units of one order that may be paid for."""

    def __init__(self, expected: Expected, started: float, seqs: SeqMemory) -> None:
        if expected.kind not in KINDS:
            raise ValueError(f"unknown service kind {expected.kind!r}")
        self.expected = expected
        self.started = started
        self.counted = 0
        self._seqs = seqs

    def accept(self, frame: ServiceDelivery, now: float) -> SignedRecord | None:
        """Count one delivery; its signed reading for a data feed (else None). Raises
        `DeliveryViolation` for anything the buyer must not pay for."""
        e = self.expected
        if frame.units != 1:
            raise DeliveryViolation(f"a delivery claims {frame.units} units; one is one unit")
        if self.counted >= e.units:
            raise DeliveryViolation(f"more than the {e.units} unit(s) ordered")
        reading: SignedRecord | None = None
        if e.kind == "tool-time":
            allowed = int((now - self.started) / e.tick) + SLACK_UNITS
            if self.counted + 1 > allowed:
                raise DeliveryViolation(
                    f"unit {self.counted + 1} after {now - self.started:.2f} s: faster than "
                    f"one per {e.tick} s"
                )
        elif e.kind == "call":
            if not frame.payload:
                raise DeliveryViolation("a call's delivery without an answer")
        else:
            reading = self._reading(frame)
        self.counted += 1
        return reading

    def _reading(self, frame: ServiceDelivery) -> SignedRecord:
        e = self.expected
        if not frame.payload or not frame.signature:
            raise DeliveryViolation("a reading without its record or signature")
        try:
            signed = open_record(frame.payload, frame.signature)
        except RecordError as exc:
            raise DeliveryViolation(f"not a signed reading: {exc}") from None
        record = signed.record
        if record.agent.hex() != e.seller:
            raise DeliveryViolation("a reading signed by another agent than the seller")
        if record.stream != e.stream:
            raise DeliveryViolation(f"a record of stream {record.stream!r}, not {e.stream!r}")
        last = self._seqs.last(e.seller, e.stream)
        if record.seq <= last:
            raise DeliveryViolation(f"reading seq {record.seq} again (had up to {last})")
        self._seqs.accept(e.seller, e.stream, record.seq)
        return signed


__all__ = ["KINDS", "DeliveryCheck", "DeliveryViolation", "Expected", "SeqMemory"]
