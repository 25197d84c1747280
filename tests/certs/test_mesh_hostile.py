"""Hostile provers between real `mesh run` agents: one buyer that buys only from
calibrated sensors meets five sensors whose proofs are bad on purpose -- forged,
a field swapped in from another certificate, a keyring made for another verifier,
an untrusted certifier, a revoked certificate. Each speaks valid frames over a real
session (`tests.certs.hostile_prover`, or a real agent for the revoked one); the
buyer refuses each with its reason, the sensor is told why, and no channel is opened
nor a satoshi paid. And a service's ``buyers`` allow-list and its ``require`` must
both pass."""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from mesh.certs import issue
from mesh.certs.revocation import (
    brc52_outpoint,
    revocation_key,
    revocation_script,
    revocation_spend,
)
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import p2pkh_script
from mesh.identity import Identity
from tests.certs.test_mesh_proofs import CALIBRATION, CELL, certificate, day, proofs
from tests.discovery.agents import FEED, WANT, RunningAgent
from tests.web.agents import free_port

HELD = '\n[[certificates]]\nfile = "cert.json"\ndisclose = ["calibrated_until"]\n'
EXPECTED = {
    "swapped": "signature",
    "forged": "signature",
    "foreign": "keyring",
    "rogue": "certifier",
    "revoked": "revoked",
}
"""Each hostile sensor and the code the buyer must refuse it with; listed in the order
the buyer asks them (cheapest first: the first sells at 1 sat a reading, the next at
2, ...), so that a check that let one through is seen on that one."""


def revoked_certificate(data: Path, ledger: Path, lab: Identity, subject: Identity) -> None:
    """A revocable calibration certificate for `subject`, its output already spent."""
    serial = base64.b64encode(secrets.token_bytes(32)).decode()
    script = revocation_script(lab.key, serial)
    with LocalLedger.open(ledger) as chain:
        outpoint = chain.faucet(script, 1000)
        issued = issue(lab.key, subject.key.public_key(), CALIBRATION,
                       {"calibrated_until": day(90)}, serial_number=serial,
                       revocation_outpoint=brc52_outpoint(outpoint))  # fmt: skip
        pay_to = p2pkh_script(Identity.generate().key.address())
        key = revocation_key(lab.key, serial)
        chain.submit(revocation_spend(key, outpoint, Prevout(1000, script), pay_to, Policy()))
    data.mkdir(parents=True, exist_ok=True)
    (data / "cert.json").write_text(json.dumps(issued.to_json()))


def test_a_buyer_refuses_every_hostile_prover_with_its_reason(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    site = f"hostile-{os.getpid()}-{free_port()}"
    lab, untrusted = Identity.generate(), Identity.generate()
    who = {name: Identity.generate() for name in EXPECTED}
    good = {"calibrated_until": day(90), "serial": "SN-1"}
    for name in ("forged", "rogue"):  # genuine certificates, from a lab the buyer ignores
        certificate(tmp_path / name, untrusted, who[name], CALIBRATION, good)
    certificate(tmp_path / "foreign", lab, who["foreign"], CALIBRATION, good)
    # The swapper holds a lapsed calibration, and a current one it swaps the date from.
    lapsed = {"calibrated_until": day(-30), "serial": "SN-1"}
    certificate(tmp_path / "swapped", lab, who["swapped"], CALIBRATION, lapsed)
    other = issue(lab.key, who["swapped"].key.public_key(), CALIBRATION, good)
    (tmp_path / "swapped" / "other.json").write_text(json.dumps(other.to_json()))
    revoked_certificate(tmp_path / "revoked", ledger, lab, who["revoked"])

    ports = {name: free_port() for name in EXPECTED}
    sensors: dict[str, RunningAgent] = {}
    buyer: RunningAgent | None = None
    rule = (
        '\n[requirements.calibrated]\ntype = "m2mesh.calibration"\n'
        f'certifiers = ["{lab.peer_id}"]\nreveal = ["calibrated_until"]\n'
        'conditions = ["calibrated_until >= today"]\n'
    )
    want = WANT.replace("max_price = 2", f"max_price = {len(EXPECTED)}")
    want += 'require = "calibrated"\n'
    statics = [f"{who[n].peer_id}@tcp://127.0.0.1:{p}" for n, p in ports.items()]
    try:
        for price, (name, port) in enumerate(ports.items(), 1):
            feed = FEED.replace("price = 1", f"price = {price}") + HELD
            program: tuple[str, ...] = ("agents.cli",)  # the revoked one is honest
            if name != "revoked":
                program = ("tests.certs.hostile_prover", name, "--")
            sensors[name] = RunningAgent(tmp_path, ledger, name, "127.0.0.1",
                                         f"tcp://127.0.0.1:{port}", feed, site=site,
                                         identity=who[name], program=program)  # fmt: skip
        buyer = RunningAgent(tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0",
                             want + rule, funds=2_000_000,
                             site=site, static_peers=statics)  # fmt: skip
        ids = {who[name].peer_id for name in EXPECTED}

        def judged(s: dict[str, Any]) -> bool:  # all refused, or one let through
            return bool(s["certificates"]["proved"]) or ids <= set(s["certificates"]["failed"])

        buyer.wait(judged, 40, "every sensor judged")
        shown = proofs(buyer)
        proved = [name for name in EXPECTED if who[name].peer_id in shown["proved"]]
        assert not proved, f"proofs accepted from {proved}: {shown['proved']}"
        codes = {n: [v["code"] for v in shown["failed"][who[n].peer_id]] for n in EXPECTED}
        assert codes == {name: [code] for name, code in EXPECTED.items()}
        for name, code in EXPECTED.items():
            assert buyer.log_lines(
                f"peer {who[name].peer_id[:16]} did not prove calibrated: {code}"
            )
        for name, code in EXPECTED.items():  # each prover hears why, and earned nothing
            sensor = sensors[name]
            sensor.wait(lambda s: buyer.peer_id in s["certificates"]["refused_ours"], 10,
                        f"{name}: the buyer's verdict")  # fmt: skip
            status = sensor.status()
            assert status is not None
            assert status["certificates"]["refused_ours"][buyer.peer_id]["code"] == code, name
            assert status["channels"] == [] and status["channel_stats"]["sat_earned"] == 0, name
            assert sensor.log_lines(f"refused our certificate: {code}"), name
        status = buyer.status()
        assert status is not None
        assert status["channels"] == [] and status["wants"][0]["paid"] == 0
        assert status["wants"][0]["delivered"] == 0
    finally:
        if buyer is not None:
            buyer.stop()
        for running in sensors.values():
            running.stop()


def test_a_service_sells_only_to_a_buyer_both_listed_and_proven(tmp_path: Path) -> None:
    """A service with both `buyers` and `require`: a listed buyer without the proof and a
    certified buyer not on the list are both refused before any channel or coin."""
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    site = f"listed-{os.getpid()}-{free_port()}"
    plant, listed, proven = Identity.generate(), Identity.generate(), Identity.generate()
    certificate(tmp_path / "proven", plant, proven, CELL, {"cell_id": "cell-9"})
    port = free_port()
    service = FEED + f'buyers = ["{listed.peer_id}"]\nrequire = "certified_cell"\n'
    rule = (
        '\n[requirements.certified_cell]\ntype = "m2mesh.certified-cell"\n'
        f'certifiers = ["{plant.peer_id}"]\nreveal = ["cell_id"]\n'
    )
    mill = RunningAgent(tmp_path, ledger, "mill", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                        service + rule, site=site)  # fmt: skip
    static = [f"{mill.peer_id}@tcp://127.0.0.1:{port}"]
    held = '\n[[certificates]]\nfile = "cert.json"\ndisclose = ["cell_id"]\n'
    buyers = [
        RunningAgent(tmp_path, ledger, name, "127.0.0.1", "tcp://127.0.0.1:0", body,
                     funds=2_000_000, site=site, static_peers=static, identity=identity)
        for name, identity, body in (("listed", listed, WANT), ("proven", proven, WANT + held))
    ]  # fmt: skip
    try:
        on_list, not_listed = buyers
        # Listed, but no certificate: refused before any channel, with its reason.
        on_list.wait(lambda s: "unproven" in (s["wants"][0]["last_failure"] or ""), 40,
                     "the listed buyer refused for want of proof")  # fmt: skip
        # Certified, but not listed: refused at the channel's open, before the mill even
        # asks it for its certificate (the allow-list is checked first).
        not_listed.wait(lambda s: "may not buy vibration" in (s["wants"][0]["last_failure"] or ""),
                        20, "the channel refused")  # fmt: skip
        status = on_list.status()
        assert status is not None and status["channels"] == []
        assert status["wants"][0]["paid"] == 0 and status["wants"][0]["delivered"] == 0
        assert proofs(mill)["failed"][listed.peer_id][0]["code"] == "missing"
        status = not_listed.status()
        # Refused at the channel's open (`agents.runtime._admit`), before any coin moved:
        # no channel, no prepay (it used to be refused only at its first order).
        assert status is not None and status["wants"][0]["delivered"] == 0
        assert status["channels"] == [] and status["wants"][0]["paid"] == 0
        status = mill.status()
        assert status is not None and status["channel_stats"]["sat_earned"] == 0
    finally:
        for agent in (*buyers, mill):
            agent.stop()
