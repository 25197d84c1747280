"""What a buyer counts as delivered: verified, new, and no faster than the clock. No I/O.

"Delivered" must never be the seller's word (docs/ARCHITECTURE.md §10, money rules). A buyer pays
for a unit only when `DeliveryCheck.accept` counted it:

* every delivery is exactly one unit, and never more than the order asked for;
* **data feed**: a reading is a well-formed record signed by the seller's identity key,
  whose payload is a typed reading (`mesh.readings`),
  on the ordered service's readings stream (``readings/<service>``), with a seq this
  buyer never accepted on that stream before, across orders, and not far below the
  highest it did -- so a genuine reading sold twice counts once and a stale one not at
  all, while two orders of one feed at once may count their interleaved seqs in either
  order (`SeqMemory`);
* **call**: one answer (a non-empty payload) per request;
* **tool time**: at most one unit per `tick` of time since the order was sent, plus a
  `SLACK_UNITS` of units for latency and rounding (an honest seller's units arrive later than
  the clock, never earlier).

Anything else raises `DeliveryViolation`: the buyer pays nothing for that frame and
ends the order. Time (`now`, seconds) is injected.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.profile import KINDS
from agents.services.frames import ServiceDelivery
from mesh.anchoring.errors import RecordError
from mesh.anchoring.record import SignedRecord, open_record
from mesh.errors import MeshError
from mesh.readings import ReadingError, decode_reading, readings_stream

SLACK_UNITS = 1
"""Tool-time units allowed beyond ``elapsed / tick`` (the first unit's latency)."""


class DeliveryViolation(MeshError):
    """A delivery the buyer must not pay for; the message says why."""


class SeqMemory:
    """The reading seqs a buyer accepted per (seller, stream), across orders: the
    highest, and which of the `REORDER` seqs below it (bounded: at most `REORDER` ints
    per seller and stream it ever bought from).

    A seq is new if it is above the highest, or within `REORDER` below it and not
    accepted yet: two orders of one feed at once get interleaved seqs of the seller's
    one stream, and either order may count its reading first. Anything else is a
    reading sold again, or a stale one."""

    REORDER = 256

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self._below: dict[tuple[str, str], set[int]] = {}

    def last(self, seller: str, stream: str) -> int:
        """The highest seq accepted on that stream, -1 when none."""
        return self._last.get((seller, stream), -1)

    def refusal(self, seller: str, stream: str, seq: int) -> str | None:
        """Why `seq` is not a new reading of that stream (None: it is new)."""
        last = self.last(seller, stream)
        if seq > last:
            return None
        if seq in self._below.get((seller, stream), ()):
            return f"reading seq {seq} again"
        if seq <= last - self.REORDER:
            return f"reading seq {seq} is stale (had up to {last})"
        return None

    def accept(self, seller: str, stream: str, seq: int) -> None:
        """Remember `seq` as accepted (the caller checked it is new)."""
        key = (seller, stream)
        last = self.last(seller, stream)
        below = self._below.setdefault(key, set())
        below.add(seq)
        if seq > last:
            self._last[key] = seq
            floor = seq - self.REORDER
            if len(below) > self.REORDER or min(below) <= floor:
                self._below[key] = {s for s in below if s > floor}


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
        return readings_stream(self.service)


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
        refused = self._seqs.refusal(e.seller, e.stream, record.seq)
        if refused is not None:
            raise DeliveryViolation(refused)
        try:
            decode_reading(record.payload)
        except ReadingError as exc:
            raise DeliveryViolation(f"not a typed reading: {exc}") from None
        self._seqs.accept(e.seller, e.stream, record.seq)
        return signed


__all__ = ["KINDS", "DeliveryCheck", "DeliveryViolation", "Expected", "SeqMemory"]
