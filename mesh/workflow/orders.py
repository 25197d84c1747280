"""One escrowed work order, as each of its three parties holds it (no I/O).

`BuyerOrder`, `MachineOrder` and `InspectorOrder` take frames, chain heights and
signatures in and return frames and transactions out; their states are transition
tables like a channel's. The conversation:

1. the buyer builds (not broadcasts) the escrow's funding to the 2-of-3 of the three
   parties' escrow keys (`mesh.workflow.keys`) and offers it (`EscrowOffer`);
2. the machine checks the offer (the script it will be paid from, the inspector, the
   amounts, a refund height far enough ahead) and signs the refund
   (`EscrowAccepted`): from here the buyer can always get its coins back;
3. the buyer checks that signature, keeps it, broadcasts the funding and tells both
   (`EscrowFunded`);
4. the inspector inspects the part and logs a verdict record (`mesh.workflow.verdict`),
   sending it with its signature on the release (PASS) or the return (FAIL);
5. on PASS the machine adds its signature and broadcasts the release; on FAIL the
   buyer adds its own and broadcasts the return; with no verdict by the refund height
   the buyer broadcasts the refund the machine signed in step 2.

Every rule a peer's frame can break is an `EscrowError` naming it, with no state
change. (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from bsv.keys import PrivateKey

from mesh.chain.rules import Policy
from mesh.errors import LocalProtocolError
from mesh.workflow.escrow import (
    SPEND_TX_MAX_SIZE,
    EscrowError,
    EscrowTerms,
    Way,
    check,
    sign,
    signed,
)
from mesh.workflow.frames import EscrowAccepted, EscrowFunded, EscrowOffer, Verdict
from mesh.workflow.keys import escrow_private_key, escrow_public_key
from mesh.workflow.verdict import VerdictBody

MIN_REFUND_BLOCKS = 6
"""A machine accepts no order whose refund is due sooner: the inspection and the
release must fit before it."""


class OrderState(enum.Enum):
    """Where one party's order stands."""

    OFFERED = "offered"  # buyer: sent the offer; machine: (not used)
    ACCEPTED = "accepted"  # buyer: holds the refund signature; machine: signed it
    FUNDED = "funded"  # the escrow output is on chain
    PASSED = "passed"  # the inspector's PASS is in hand
    FAILED = "failed"  # the inspector's FAIL is in hand
    RELEASED = "released"  # paid to the machine
    RETURNED = "returned"  # back to the buyer on FAIL
    REFUNDED = "refunded"  # back to the buyer at the refund height
    ABANDONED = "abandoned"  # never funded


S = OrderState
TABLE: dict[tuple[OrderState, str], OrderState] = {
    (S.OFFERED, "accepted"): S.ACCEPTED,
    (S.OFFERED, "abandon"): S.ABANDONED,
    (S.ACCEPTED, "funded"): S.FUNDED,
    (S.ACCEPTED, "abandon"): S.ABANDONED,
    (S.FUNDED, "pass"): S.PASSED,
    (S.FUNDED, "fail"): S.FAILED,
    (S.FUNDED, "refunded"): S.REFUNDED,
    (S.PASSED, "released"): S.RELEASED,
    (S.PASSED, "refunded"): S.REFUNDED,
    (S.FAILED, "returned"): S.RETURNED,
    (S.FAILED, "refunded"): S.REFUNDED,
}
FINAL = frozenset({S.RELEASED, S.RETURNED, S.REFUNDED, S.ABANDONED})


def step(state: OrderState, event: str) -> OrderState:
    """The state after `event`; `LocalProtocolError` for an event not in the table."""
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise LocalProtocolError(f"order: no {event!r} in state {state.value}") from None


def service_order_prefix(order_id: bytes) -> bytes:
    """The first 8 bytes of every service order a buyer places for a work order's tool
    time (the rest random): the machine's meter statements of those orders name the
    work order, so a passport can bind them to it."""
    return hashlib.sha256(b"m2mesh work order " + order_id).digest()[:8]


def terms_of(
    order_id: bytes,
    buyer: str,
    machine: str,
    inspector: str,
    amount: int,
    fee: int,
    refund_height: int,
    buyer_payout: bytes,
    machine_payout: bytes,
    funding_txid: str,
) -> EscrowTerms:
    """The escrow terms three parties agree on, keys derived from their identities."""
    return EscrowTerms(
        order_id,
        escrow_public_key(bytes.fromhex(buyer), order_id),
        escrow_public_key(bytes.fromhex(machine), order_id),
        escrow_public_key(bytes.fromhex(inspector), order_id),
        amount,
        fee,
        refund_height,
        buyer_payout,
        machine_payout,
        funding_txid,
        0,
    )


@dataclass
class BuyerOrder:
    """The buyer's side of one order (a draft funding is built before the offer)."""

    identity: PrivateKey
    offer: EscrowOffer
    machine: str
    state: OrderState = S.OFFERED
    terms: EscrowTerms | None = None
    refund_signature: bytes = b""
    verdict: Verdict | None = None

    @classmethod
    def restore(
        cls,
        identity: PrivateKey,
        offer: EscrowOffer,
        machine: str,
        state: OrderState,
        machine_payout: bytes = b"",
        refund_signature: bytes = b"",
        verdict: Verdict | None = None,
    ) -> BuyerOrder:
        """The order as it was saved (terms from the machine's payout, once accepted)."""
        order = cls(identity, offer, machine, state, None, refund_signature, verdict)
        if refund_signature:
            order.terms = order._terms(machine_payout, offer.funding_txid)
        return order

    @property
    def buyer(self) -> str:
        """Our peer id."""
        return str(self.identity.public_key().hex())

    def script(self) -> bytes:
        """The escrow script the funding must pay (payouts and txid do not enter it)."""
        probe = self._terms(self.offer.buyer_payout, "00" * 32)
        return probe.script

    def accepted(self, frame: EscrowAccepted) -> EscrowTerms:
        """The machine's acceptance: its refund signature is checked and kept."""
        terms = self._terms(frame.machine_payout, self.offer.funding_txid)
        check(terms, Way.REFUND, "machine", frame.refund_signature)
        self.state = step(self.state, "accepted")
        self.terms, self.refund_signature = terms, frame.refund_signature
        return terms

    def funded(self, funding_tx: bytes) -> EscrowFunded:
        """The funding is broadcast: what to tell the machine and the inspector."""
        assert self.terms is not None
        self.state = step(self.state, "funded")
        o = self.offer
        return EscrowFunded(o.order_id, o.part, self.machine, o.inspector, o.amount, o.fee,
                            o.refund_height, o.buyer_payout, self.terms.machine_payout,
                            funding_tx)  # fmt: skip

    def judged(self, frame: Verdict, body: VerdictBody) -> bytes | None:
        """The inspector's verdict (its record checked by the caller, `body` decoded
        from it): on FAIL the return, signed by both, to broadcast; on PASS nothing
        (the machine releases)."""
        terms = self._funded_terms(body)
        way = Way.RELEASE if frame.passed else Way.RETURN
        check(terms, way, "inspector", frame.signature)
        self.state = step(self.state, "pass" if frame.passed else "fail")
        self.verdict = frame
        if frame.passed:
            return None
        mine = sign(terms, Way.RETURN, "buyer", escrow_private_key(self.identity, terms.order_id))
        return signed(terms, Way.RETURN, {"buyer": mine, "inspector": frame.signature})

    def release(self) -> bytes:
        """On PASS, the release signed by us and the inspector: it pays the machine, so
        a machine that is down when the verdict comes still gets its payment."""
        assert self.terms is not None and self.verdict is not None and self.verdict.passed
        key = escrow_private_key(self.identity, self.terms.order_id)
        mine = sign(self.terms, Way.RELEASE, "buyer", key)
        return signed(self.terms, Way.RELEASE, {"buyer": mine, "inspector": self.verdict.signature})

    def refund(self) -> bytes:
        """The refund, signed by both (final from the refund height on)."""
        assert self.terms is not None and self.refund_signature
        mine = sign(
            self.terms, Way.REFUND, "buyer", escrow_private_key(self.identity, self.terms.order_id)
        )
        return signed(self.terms, Way.REFUND, {"buyer": mine, "machine": self.refund_signature})

    def _funded_terms(self, body: VerdictBody) -> EscrowTerms:
        terms = self.terms
        if terms is None or self.state is not S.FUNDED:
            raise EscrowError("state", "no funded escrow for this order")
        if (body.order_id, body.buyer, body.machine) != (terms.order_id, self.buyer, self.machine):
            raise EscrowError("verdict", "the verdict is about another order")
        if body.escrow != f"{terms.funding_txid}.{terms.funding_vout}":
            raise EscrowError("verdict", "the verdict names another escrow")
        if body.terms != terms.digest():
            raise EscrowError("verdict", "the verdict binds other terms")
        return terms

    def _terms(self, machine_payout: bytes, funding_txid: str) -> EscrowTerms:
        o = self.offer
        return terms_of(o.order_id, self.buyer, self.machine, o.inspector, o.amount, o.fee,
                        o.refund_height, o.buyer_payout, machine_payout, funding_txid)  # fmt: skip


@dataclass
class MachineOrder:
    """The machine's side of one order."""

    identity: PrivateKey
    buyer: str
    terms: EscrowTerms
    part: str
    inspector: str
    state: OrderState = S.ACCEPTED
    verdict: Verdict | None = None

    @classmethod
    def accept(
        cls,
        identity: PrivateKey,
        buyer: str,
        offer: EscrowOffer,
        machine_payout: bytes,
        height: int,
        trusted_inspectors: frozenset[str],
        policy: Policy,
    ) -> tuple[MachineOrder, EscrowAccepted]:
        """Take an offer (checked against the chain's `height` and fee `policy`, and the
        inspectors this machine accepts) and sign its refund."""
        if offer.inspector not in trusted_inspectors:
            raise EscrowError("inspector", "not an inspector this machine works with")
        need = policy.required_fee(SPEND_TX_MAX_SIZE)
        if offer.fee < need:
            raise EscrowError(
                "fee",
                f"the escrow fee of {offer.fee} sat is below the network's policy: {need} sat"
                f" for {SPEND_TX_MAX_SIZE} bytes at {policy.fee_rate} sat/kB",
            )
        if offer.refund_height < height + MIN_REFUND_BLOCKS:
            raise EscrowError("refund", f"the refund is due too soon (height {height})")
        machine = str(identity.public_key().hex())
        terms = terms_of(offer.order_id, buyer, machine, offer.inspector, offer.amount,
                         offer.fee, offer.refund_height, offer.buyer_payout, machine_payout,
                         offer.funding_txid)  # fmt: skip
        key = escrow_private_key(identity, offer.order_id)
        signature = sign(terms, Way.REFUND, "machine", key)
        order = cls(identity, buyer, terms, offer.part, offer.inspector)
        return order, EscrowAccepted(offer.order_id, machine_payout, signature)

    def funded(self, frame: EscrowFunded, funding_script: bytes, funding_value: int) -> None:
        """The buyer says the escrow is funded; the caller read the output from its
        chain view (`funding_script`, `funding_value` of ``funding_txid:0``)."""
        if (funding_script, funding_value) != (self.terms.script, self.terms.amount):
            raise EscrowError("funding", "the funding does not pay the agreed 2-of-3")
        self.state = step(self.state, "funded")

    def judged(self, frame: Verdict, body: VerdictBody) -> bytes | None:
        """The verdict: on PASS the release, signed by both, to broadcast at once."""
        if body.order_id != self.terms.order_id or body.machine != self.identity.public_key().hex():
            raise EscrowError("verdict", "the verdict is about another order")
        if body.terms != self.terms.digest():
            raise EscrowError("verdict", "the verdict binds other terms")
        way = Way.RELEASE if frame.passed else Way.RETURN
        check(self.terms, way, "inspector", frame.signature)
        self.state = step(self.state, "pass" if frame.passed else "fail")
        self.verdict = frame
        if not frame.passed:
            return None
        mine = sign(
            self.terms,
            Way.RELEASE,
            "machine",
            escrow_private_key(self.identity, self.terms.order_id),
        )
        return signed(self.terms, Way.RELEASE, {"machine": mine, "inspector": frame.signature})


@dataclass
class InspectorOrder:
    """The inspector's side of one order: the terms, then one verdict."""

    identity: PrivateKey
    terms: EscrowTerms
    buyer: str
    machine: str
    part: str
    verdict: Verdict | None = None

    @classmethod
    def funded(
        cls, identity: PrivateKey, buyer: str, frame: EscrowFunded, txid: str
    ) -> InspectorOrder:
        """The escrow it will judge (`txid`: the funding's, output 0)."""
        if frame.inspector != identity.public_key().hex():
            raise EscrowError("inspector", "we are not this order's inspector")
        terms = terms_of(frame.order_id, buyer, frame.machine, frame.inspector, frame.amount,
                         frame.fee, frame.refund_height, frame.buyer_payout,
                         frame.machine_payout, txid)  # fmt: skip
        return cls(identity, terms, buyer, frame.machine, frame.part)

    def body(self, passed: bool, values: tuple[tuple[str, str], ...]) -> VerdictBody:
        """The verdict record's body for this order."""
        escrow = f"{self.terms.funding_txid}.{self.terms.funding_vout}"
        return VerdictBody(self.terms.order_id, self.part, self.buyer, self.machine, passed,
                           values, escrow, self.terms.digest())  # fmt: skip

    def judge(self, passed: bool, record: bytes, record_signature: bytes) -> Verdict:
        """The verdict frame: the logged record (its body and our signature over it)
        and our signature on its way out. One verdict per order: asked again, the same
        one."""
        if self.verdict is not None:
            return self.verdict
        way = Way.RELEASE if passed else Way.RETURN
        key = escrow_private_key(self.identity, self.terms.order_id)
        signature = sign(self.terms, way, "inspector", key)
        self.verdict = Verdict(self.terms.order_id, passed, record, record_signature, signature)
        return self.verdict


__all__ = [
    "FINAL",
    "MIN_REFUND_BLOCKS",
    "TABLE",
    "BuyerOrder",
    "InspectorOrder",
    "MachineOrder",
    "OrderState",
    "service_order_prefix",
    "step",
    "terms_of",
]
