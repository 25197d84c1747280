"""A buyer that speaks valid work-order frames with bad intent, against a real machine
agent: a flood of offers is accepted only up to `MAX_UNFUNDED` waiting at once (each
costs the machine a key and a row), a funding that is not the one the machine signed
for is refused, and a verdict the buyer forged itself releases nothing."""

from __future__ import annotations

import secrets
from pathlib import Path

import trio

from agents.workflows.machine import MAX_UNFUNDED
from mesh.anchoring.record import Record, sign_record
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.channel.txs import p2pkh_for_key
from mesh.identity import Identity
from mesh.net.node import open_node
from mesh.wire import Frame
from mesh.workflow.escrow import Way, sign
from mesh.workflow.frames import EscrowAccepted, EscrowFunded, EscrowOffer, EscrowRefused, Verdict
from mesh.workflow.keys import escrow_private_key
from mesh.workflow.orders import terms_of
from mesh.workflow.verdict import STREAM, VerdictBody
from tests.discovery.agents import RunningAgent
from tests.workflow.three import machine_body

SITE = "wo-hostile"


async def _answer(node: object, order_id: bytes) -> Frame:
    while True:
        _, frame = await node.receive()  # type: ignore[attr-defined]
        if getattr(frame, "order_id", None) == order_id:
            return frame


async def test_a_hostile_buyer_gets_nothing_it_should_not(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    inspector, buyer = Identity.generate(), Identity.generate()
    machine = RunningAgent(tmp_path, ledger, "machine", "127.0.0.1", "tcp://127.0.0.1:0",
                           machine_body(inspector.peer_id), site=SITE)  # fmt: skip
    try:
        await machine.wait_status(lambda s: s["mailbox"], 30, "the machine up")
        status = machine.status()
        assert status is not None
        chain = LocalChain.open(ledger)
        network, height = await chain.network_id(), await chain.height()
        chain.close()
        async with open_node(buyer, site=SITE, network=network) as node:
            await node.connect(status["mailbox"], expect_peer=machine.peer_id)
            answers: list[Frame] = []
            offers = []
            for _ in range(MAX_UNFUNDED + 3):
                offer = EscrowOffer(secrets.token_bytes(16), "P-1", inspector.peer_id, 1_000, 10,
                                    height + 20, p2pkh_for_key(buyer.public_key),
                                    secrets.token_hex(32))  # fmt: skip
                offers.append(offer)
                await node.session(machine.peer_id).send(offer)
                with trio.fail_after(10):
                    answers.append(await _answer(node, offer.order_id))
            accepted = [a for a in answers if isinstance(a, EscrowAccepted)]
            refused = [a for a in answers if isinstance(a, EscrowRefused)]
            assert len(accepted) == MAX_UNFUNDED, answers
            assert {r.code for r in refused} == {"busy"}, refused
            # A funding that is not the one signed for: refused by name.
            first, took = offers[0], accepted[0]
            funded = EscrowFunded(first.order_id, first.part, machine.peer_id, first.inspector,
                                  first.amount, first.fee, first.refund_height,
                                  first.buyer_payout, took.machine_payout,
                                  b"\x01" * 60)  # fmt: skip
            await node.session(machine.peer_id).send(funded)
            with trio.fail_after(10):
                answer = await _answer(node, first.order_id)
            assert isinstance(answer, EscrowRefused) and answer.code == "funding", answer
            # A verdict the buyer made itself (its own record and key): nothing moves.
            terms = terms_of(first.order_id, buyer.peer_id, machine.peer_id, inspector.peer_id,
                             first.amount, first.fee, first.refund_height, first.buyer_payout,
                             took.machine_payout, first.funding_txid)  # fmt: skip
            body = VerdictBody(first.order_id, "P-1", buyer.peer_id, machine.peer_id, True, (),
                               f"{first.funding_txid}.0", terms.digest())  # fmt: skip
            signed = sign_record(buyer, Record(buyer.public_key, STREAM, 0, 0, body.encode(),
                                               b"\x00" * 32))  # fmt: skip
            key = escrow_private_key(buyer.key, first.order_id)
            fake = sign(terms, Way.RELEASE, "buyer", key)
            await node.session(machine.peer_id).send(
                Verdict(first.order_id, True, signed.body, signed.signature, fake)
            )
            await trio.sleep(1.5)
        later = machine.status()
        assert later is not None
        states = {o["order_id"]: o["state"] for o in later["work_orders"]["orders"]}
        assert states[first.order_id.hex()] == "accepted"  # not passed, nothing released
        assert len(states) == MAX_UNFUNDED
        assert not machine.log_lines("Traceback")
    finally:
        machine.stop()
