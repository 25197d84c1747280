"""One work order's escrow between buyer, machine and inspector, their three sides
joined in memory over a real LocalLedger: a PASS pays the machine, a FAIL returns the
buyer's coins, a missing inspector leaves the buyer its refund at the refund height;
every frame that breaks a rule is refused by name with no state change."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from bsv.keys import PrivateKey

from mesh.anchoring.record import Record, SignedRecord, sign_record
from mesh.chain.base import OutputState
from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.channel.txs import p2pkh_for_key
from mesh.errors import LocalProtocolError
from mesh.identity import Identity
from mesh.workflow.escrow import EscrowError
from mesh.workflow.frames import EscrowFunded, EscrowOffer, Verdict
from mesh.workflow.orders import BuyerOrder, InspectorOrder, MachineOrder, OrderState, step
from mesh.workflow.verdict import STREAM, VerdictBody, VerdictError, open_verdict

AMOUNT, FEE = 5_000, 20


def payout() -> bytes:
    return p2pkh_for_key(PrivateKey().public_key().serialize())


@dataclass
class Order:
    ledger: LocalLedger
    buyer: BuyerOrder
    machine: MachineOrder
    inspector: InspectorOrder
    ids: dict[str, PrivateKey]
    announce: EscrowFunded

    def verdict(self, passed: bool) -> tuple[Verdict, VerdictBody]:
        body = self.inspector.body(passed, (("deviation_um", "12" if passed else "41"),))
        return self.inspector.judge(passed, body.encode(), b""), body


def funded_order(ledger: LocalLedger, refund_blocks: int = 10) -> Order:
    """Steps 1-3: offered, accepted (refund signed), funded; the inspector told."""
    ids = {p: PrivateKey() for p in ("buyer", "machine", "inspector")}
    peer = {p: str(k.public_key().hex()) for p, k in ids.items()}
    order_id = secrets.token_bytes(16)
    offer = EscrowOffer(order_id, "P-123", peer["inspector"], AMOUNT, FEE,
                        ledger.height() + refund_blocks, payout(), "00" * 32)  # fmt: skip
    buyer = BuyerOrder(ids["buyer"], offer, peer["machine"])
    funding = ledger.faucet(buyer.script(), AMOUNT)  # (the buyer's funding, built)
    buyer.offer = replace(offer, funding_txid=funding.txid)
    machine, accepted = MachineOrder.accept(
        ids["machine"], peer["buyer"], buyer.offer, payout(), ledger.height(),
        frozenset({peer["inspector"]}), ledger.policy,
    )  # fmt: skip
    terms = buyer.accepted(accepted)
    assert buyer.state is OrderState.ACCEPTED and terms.script == machine.terms.script
    announce = buyer.funded(b"")
    out = ledger.output(funding.txid, 0)
    machine.funded(announce, out.script or b"", out.satoshis or 0)
    inspector = InspectorOrder.funded(ids["inspector"], peer["buyer"], announce, funding.txid)
    return Order(ledger, buyer, machine, inspector, ids, announce)


def test_a_pass_releases_the_payment_to_the_machine(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
        verdict, body = order.verdict(True)
        assert order.buyer.judged(verdict, body) is None  # the machine collects
        release = order.machine.judged(verdict, body)
        assert release is not None
        txid = ledger.submit(release)
        assert ledger.output(txid, 0).script == order.machine.terms.machine_payout
        assert ledger.output(txid, 0).satoshis == AMOUNT - FEE
        assert (order.buyer.state, order.machine.state) == (OrderState.PASSED,) * 2
        # The refund the buyer holds is now a double spend.
        ledger.mine(10)
        with pytest.raises(TxRejected):
            ledger.submit(order.buyer.refund())


def test_on_a_pass_the_buyer_can_release_for_a_machine_that_is_down(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
        verdict, body = order.verdict(True)
        assert order.buyer.judged(verdict, body) is None
        txid = ledger.submit(order.buyer.release())  # buyer + inspector
        assert ledger.output(txid, 0).script == order.machine.terms.machine_payout
        assert ledger.output(txid, 0).satoshis == AMOUNT - FEE
        # (and the machine's own release, built later, is a double spend)
        release = order.machine.judged(verdict, body)
        assert release is not None
        with pytest.raises(TxRejected):
            ledger.submit(release)


def test_a_fail_returns_the_payment_to_the_buyer(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
        verdict, body = order.verdict(False)
        assert order.machine.judged(verdict, body) is None
        returned = order.buyer.judged(verdict, body)
        assert returned is not None
        txid = ledger.submit(returned)
        assert ledger.output(txid, 0).script == order.buyer.offer.buyer_payout
        assert order.buyer.state is OrderState.FAILED


def test_without_a_verdict_the_buyer_refunds_at_the_refund_height(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger, refund_blocks=8)
        refund = order.buyer.refund()
        with pytest.raises(TxRejected, match="final"):
            ledger.submit(refund)
        ledger.mine(8)
        txid = ledger.submit(refund)
        assert ledger.output(txid, 0).satoshis == AMOUNT - FEE
        funding = order.buyer.offer.funding_txid
        assert ledger.output(funding, 0).state is OutputState.SPENT


def test_a_machine_refuses_an_offer_it_cannot_be_paid_from(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
        offer = order.buyer.offer
        machine = order.ids["machine"]
        buyer = str(order.ids["buyer"].public_key().hex())
        trusted = frozenset({offer.inspector})
        policy, height = ledger.policy, ledger.height()
        with pytest.raises(EscrowError, match="inspector"):
            MachineOrder.accept(machine, buyer, offer, payout(), height, frozenset(), policy)
        with pytest.raises(EscrowError, match="too soon"):
            MachineOrder.accept(
                machine, buyer, offer, payout(), offer.refund_height, trusted, policy
            )
        # A fee the network's policy would not mine the release, return or refund at.
        dear = Policy(fee_rate=1_000)  # 234 sat for the largest spend
        with pytest.raises(EscrowError, match=f"escrow fee of {FEE} sat is below .* 234 sat"):
            MachineOrder.accept(machine, buyer, offer, payout(), height, trusted, dear)
        # The buyer says it funded, but the output the machine reads pays another script.
        taken = MachineOrder.accept(machine, buyer, offer, payout(), height, trusted, policy)[0]
        with pytest.raises(EscrowError, match="funding"):
            taken.funded(order.announce, payout(), AMOUNT)
        assert taken.state is OrderState.ACCEPTED


def test_signatures_and_verdicts_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
        verdict, body = order.verdict(True)
        # A PASS carrying the inspector's signature on the return (or the reverse).
        lying = replace(verdict, passed=False)
        with pytest.raises(EscrowError, match="signature"):
            order.buyer.judged(lying, body)
        assert order.buyer.state is OrderState.FUNDED  # unchanged
        # A verdict about another escrow or order.
        elsewhere = replace(body, escrow="ab" * 32 + ".0")
        with pytest.raises(EscrowError, match="another escrow"):
            order.buyer.judged(verdict, elsewhere)
        with pytest.raises(EscrowError, match="other terms"):
            order.buyer.judged(verdict, replace(body, terms=bytes(32)))
        with pytest.raises(EscrowError, match="another order"):
            order.machine.judged(verdict, replace(body, order_id=secrets.token_bytes(16)))
        # One verdict per order: asked again, the inspector gives the same one.
        again, _ = order.verdict(False)
        assert again == verdict
        # The verdict is taken once; a repeat finds no funded escrow waiting for one.
        assert order.buyer.judged(verdict, body) is None
        with pytest.raises(EscrowError, match="state"):
            order.buyer.judged(verdict, body)
        with pytest.raises(LocalProtocolError):
            step(OrderState.PASSED, "fail")


def test_an_inspector_not_named_by_the_order_takes_no_part(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
        buyer = str(order.ids["buyer"].public_key().hex())
        txid = order.buyer.offer.funding_txid
        with pytest.raises(EscrowError, match="not this order's inspector"):
            InspectorOrder.funded(PrivateKey(), buyer, order.announce, txid)


def test_a_verdict_is_opened_only_from_the_inspectors_own_verdict_record(
    tmp_path: Path,
) -> None:
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        order = funded_order(ledger)
    inspector = Identity(order.ids["inspector"])
    body = order.inspector.body(True, (("deviation_um", "12"),)).encode()

    def signed(identity: Identity, stream: str, payload: bytes) -> SignedRecord:
        record = Record(identity.public_key, stream, 0, 1_700_000_000_000, payload, bytes(32))
        return sign_record(identity, record)

    good = signed(inspector, STREAM, body)
    assert open_verdict(good.body, good.signature, inspector.peer_id).passed
    for record, who, why in (
        (good, Identity.generate().peer_id, "not a record of the inspector"),
        (signed(inspector, "meters", body), inspector.peer_id, "not a record of the inspector"),
        (signed(Identity.generate(), STREAM, body), inspector.peer_id, "not a record"),
    ):
        with pytest.raises(VerdictError, match=why):
            open_verdict(record.body, record.signature, who)
    with pytest.raises(VerdictError, match="signature"):
        open_verdict(good.body, good.signature[:-1] + b"\x00", inspector.peer_id)
