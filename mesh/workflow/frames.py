"""The work-order escrow's frames (tags 60-69): a buyer offers an escrowed completion
payment for a part, the machine accepts it by signing the refund, the buyer announces
the funding to machine and inspector, and the inspector's verdict carries its signature
on the way out it allows (`mesh.workflow.escrow` owns the transactions). Registered in
the codec's one table (`mesh.wire`). (docs/ARCHITECTURE.md §3, §4)"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Frame, frame


@frame(60)
@dataclass(frozen=True, slots=True)
class EscrowOffer(Frame):
    """Buyer -> machine: make `part` for this order; `amount` (less `fee`) is locked for
    it in the 2-of-3 funded by `funding_txid:0` (built, not broadcast), released by
    `inspector`'s PASS, else back to the buyer (at `refund_height` at the latest)."""

    order_id: bytes
    part: str
    inspector: str
    amount: int
    fee: int
    refund_height: int
    buyer_payout: bytes
    funding_txid: str


@frame(61)
@dataclass(frozen=True, slots=True)
class EscrowAccepted(Frame):
    """Machine -> buyer: the order is taken; the machine's signature on the refund."""

    order_id: bytes
    machine_payout: bytes
    refund_signature: bytes


@frame(62)
@dataclass(frozen=True, slots=True)
class EscrowFunded(Frame):
    """Buyer -> machine and inspector: the escrow is on chain (its whole terms, so the
    inspector, who saw no offer, can check them)."""

    order_id: bytes
    part: str
    machine: str
    inspector: str
    amount: int
    fee: int
    refund_height: int
    buyer_payout: bytes
    machine_payout: bytes
    funding_tx: bytes


@frame(63)
@dataclass(frozen=True, slots=True)
class Verdict(Frame):
    """Inspector -> machine and buyer: the verdict record (the body of its
    `mesh.anchoring` record, stream ``verdicts``, and the inspector's signature over
    it) and the inspector's signature on the release (PASS) or the return (FAIL)."""

    order_id: bytes
    passed: bool
    record: bytes
    record_signature: bytes
    signature: bytes


@frame(65)
@dataclass(frozen=True, slots=True)
class InspectPart(Frame):
    """Buyer -> inspector: the part of this order is made; inspect it."""

    order_id: bytes


@frame(64)
@dataclass(frozen=True, slots=True)
class EscrowRefused(Frame):
    """Any party: no, and why (`code` names the rule)."""

    order_id: bytes
    code: str
    reason: str


@frame(66)
@dataclass(frozen=True, slots=True)
class WorkRecord(Frame):
    """Machine -> buyer: a signed record of the machine that belongs to this order's
    part passport (the meter statement of the tool time the part took): the body of
    its `mesh.anchoring` record and the machine's signature over it."""

    order_id: bytes
    record: bytes
    record_signature: bytes


__all__ = [
    "EscrowAccepted",
    "EscrowFunded",
    "EscrowOffer",
    "EscrowRefused",
    "InspectPart",
    "Verdict",
    "WorkRecord",
]
