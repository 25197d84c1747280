"""`agents.proofs` between two agents' Proofs joined in memory, over a real ledger:
the revocation outpoint looked up on the chain, answers that never come, outcomes
remembered and told to the prover, and a provider's admission of a buyer."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from agents.proofs import Proofs
from mesh.certs import CertificateError, issue, type_id
from mesh.certs.policy import Held, Requirement
from mesh.certs.revocation import (
    brc52_outpoint,
    revocation_key,
    revocation_script,
    revocation_spend,
)
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import p2pkh_script
from mesh.identity import Identity
from mesh.wire import Frame

CALIBRATION = type_id("m2mesh.calibration")
Send = Callable[[str, Frame], Awaitable[None]]


def link(peers: dict[str, Proofs], nursery: trio.Nursery, sender: str) -> Send:
    """What `sender` sends arrives at the other's `handle`, in a task of its own."""

    async def send(peer_id: str, frame: Frame) -> None:
        nursery.start_soon(peers[peer_id].handle, sender, frame)

    return send


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.ledger_path = tmp_path / "ledger.db"
        LocalLedger.create(self.ledger_path).close()
        self.lab, self.sensor, self.buyer = (Identity.generate() for _ in range(3))
        self.serial = base64.b64encode(secrets.token_bytes(32)).decode()
        script = revocation_script(self.lab.key, self.serial)
        with LocalLedger.open(self.ledger_path) as ledger:
            self.outpoint = ledger.faucet(script, 1000)
        issued = issue(
            self.lab.key,
            self.sensor.key.public_key(),
            CALIBRATION,
            {"calibrated_until": "2099-01-01", "serial": "SN-1"},
            revocation_outpoint=brc52_outpoint(self.outpoint),
            serial_number=self.serial,
        )
        self.held = Held(issued.certificate, issued.master_keyring, ("calibrated_until",))
        self.requirement = Requirement(
            "calibrated",
            CALIBRATION,
            "m2mesh.calibration",
            (self.lab.peer_id,),
            ("calibrated_until",),
        )

    def revoke(self) -> None:
        key = revocation_key(self.lab.key, self.serial)
        prevout = Prevout(1000, revocation_script(self.lab.key, self.serial))
        pay_to = p2pkh_script(Identity.generate().key.address())
        raw = revocation_spend(key, self.outpoint, prevout, pay_to, Policy())
        with LocalLedger.open(self.ledger_path) as ledger:
            ledger.submit(raw)


async def test_a_revoked_certificate_is_refused_and_the_prover_told(tmp_path: Path) -> None:
    world = World(tmp_path)
    chain = LocalChain.open(world.ledger_path)
    peers: dict[str, Proofs] = {}
    async with trio.open_nursery() as nursery:
        buyer_id, sensor_id = world.buyer.peer_id, world.sensor.peer_id
        peers[buyer_id] = Proofs(
            world.buyer, [], {"calibrated": world.requirement}, link(peers, nursery, buyer_id),
            chain, ttl=0.0, failure_ttl=0.0,
        )  # fmt: skip
        peers[sensor_id] = Proofs(
            world.sensor, [world.held], {}, link(peers, nursery, sensor_id), chain
        )
        proven = await peers[buyer_id].require(sensor_id, "calibrated")
        assert proven.values == {"calibrated_until": "2099-01-01"} and proven.revocable
        world.revoke()
        with pytest.raises(CertificateError, match="revoked"):
            await peers[buyer_id].require(sensor_id, "calibrated")
        await trio.testing.wait_all_tasks_blocked()
        told = peers[sensor_id].snapshot()["refused_ours"][buyer_id]
        assert told["code"] == "revoked"
        nursery.cancel_scope.cancel()
    chain.close()


async def test_a_peer_that_never_answers_times_out(tmp_path: Path) -> None:
    world = World(tmp_path)
    chain = LocalChain.open(world.ledger_path)

    async def nowhere(peer_id: str, frame: Frame) -> None:
        pass

    proofs = Proofs(world.buyer, [], {"calibrated": world.requirement}, nowhere, chain, timeout=0.2)
    with pytest.raises(CertificateError, match="timeout"):
        await proofs.require(world.sensor.peer_id, "calibrated")
    # Remembered for failure_ttl: refused at once, with the same reason.
    with trio.fail_after(0.1), pytest.raises(CertificateError, match="timeout"):
        await proofs.require(world.sensor.peer_id, "calibrated")
    chain.close()


async def test_a_provider_admits_a_buyer_once_it_proved(tmp_path: Path) -> None:
    world = World(tmp_path)
    chain = LocalChain.open(world.ledger_path)
    peers: dict[str, Proofs] = {}
    async with trio.open_nursery() as nursery:
        mill, cell = world.buyer.peer_id, world.sensor.peer_id  # the sensor plays the cell
        peers[mill] = Proofs(
            world.buyer, [], {"calibrated": world.requirement}, link(peers, nursery, mill), chain
        )
        peers[cell] = Proofs(world.sensor, [world.held], {}, link(peers, nursery, cell), chain)
        await nursery.start(peers[mill].run)
        code, reason = peers[mill].admit(cell, "calibrated") or ("", "")
        assert code == "proof-required" and "calibrated_until" in reason
        with trio.fail_after(5):
            while peers[mill].admit(cell, "calibrated") is not None:
                await trio.sleep(0.01)
        assert peers[mill].snapshot()["proved"][cell][0]["fields"] == {
            "calibrated_until": "2099-01-01"
        }
        nursery.cancel_scope.cancel()
    chain.close()


async def test_a_peer_asking_too_often_is_refused_busy(tmp_path: Path) -> None:
    world = World(tmp_path)
    chain = LocalChain.open(world.ledger_path)
    answers: list[Frame] = []

    async def collect(peer_id: str, frame: Frame) -> None:
        answers.append(frame)

    sensor = Proofs(world.sensor, [world.held], {}, collect, chain)
    asker = world.buyer.peer_id
    for _ in range(20):  # at once: the burst is answered, the rest refused at no cost
        await sensor.handle(asker, world.requirement.request(secrets.token_bytes(16)))
    kinds = [type(a).__name__ for a in answers]
    assert kinds.count("ProofOffer") == 8 and kinds.count("ProofRefused") == 12
    assert sensor.snapshot()["counts"]["throttled"] == 12
    chain.close()
