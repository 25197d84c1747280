"""Certificates between real `mesh run` agents: a buyer that buys only from calibrated
sensors, and a provider that sells only to certified cells. What is revealed is only
what the requirement names; a refusal names its reason on both sides, and nothing is
paid to (or by) a peer that did not prove what was required."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.cli import main
from mesh.certs import issue, type_id
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity, save_identity
from tests.discovery.agents import FEED, WANT, RunningAgent
from tests.web.agents import free_port

CALIBRATION = type_id("m2mesh.calibration")
CELL = type_id("m2mesh.certified-cell")


def certificate(data: Path, certifier: Identity, subject: Identity, type_: str,
                values: dict[str, str]) -> None:  # fmt: skip
    """Issue a certificate to `subject` and put it where its profile looks (cert.json)."""
    data.mkdir(parents=True, exist_ok=True)
    issued = issue(certifier.key, subject.key.public_key(), type_, values)
    (data / "cert.json").write_text(json.dumps(issued.to_json()))


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


def proofs(agent: RunningAgent) -> dict[str, Any]:
    status = agent.status()
    assert status is not None
    return dict(status["certificates"])


def test_a_buyer_buys_only_from_a_sensor_that_proves_its_calibration(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    site = f"certs-{os.getpid()}-{free_port()}"
    lab = Identity.generate()
    good, stale = Identity.generate(), Identity.generate()
    values = {"owner": "ACME", "serial": "SN-1", "accuracy": "0.5"}
    certificate(tmp_path / "good", lab, good, CALIBRATION, {**values, "calibrated_until": day(90)})
    certificate(
        tmp_path / "stale", lab, stale, CALIBRATION, {**values, "calibrated_until": day(-1)}
    )
    held = '\n[[certificates]]\nfile = "cert.json"\ndisclose = ["calibrated_until", "accuracy"]\n'
    ports = [free_port(), free_port()]

    def sensor(name: str, identity: Identity, port: int, price: int) -> RunningAgent:
        feed = FEED.replace("price = 1", f"price = {price}") + held
        return RunningAgent(tmp_path, ledger, name, "127.0.0.1", f"tcp://127.0.0.1:{port}",
                            feed, site=site, identity=identity)  # fmt: skip

    want = WANT.replace("max_price = 2", "max_price = 3") + 'require = "calibrated"\n'
    rule = (
        '\n[requirements.calibrated]\ntype = "m2mesh.calibration"\n'
        f'certifiers = ["{lab.peer_id}"]\nreveal = ["calibrated_until"]\n'
        'conditions = ["calibrated_until >= today"]\n'
    )
    statics = [
        f"{who.peer_id}@tcp://127.0.0.1:{p}" for who, p in ((good, ports[0]), (stale, ports[1]))
    ]
    # The stale sensor first (and cheaper): the buyer asks it and refuses it; then the
    # good one comes.
    stale_sensor = sensor("stale", stale, ports[1], 1)
    sensors = [stale_sensor]
    buyer = RunningAgent(tmp_path, ledger, "lab", "127.0.0.1", "tcp://127.0.0.1:0", want + rule,
                         funds=2_000_000, site=site, static_peers=statics)  # fmt: skip
    try:
        buyer.wait(lambda s: stale.peer_id in s["certificates"]["failed"], 30, "the stale refused")
        assert buyer.status()["wants"][0]["delivered"] == 0  # type: ignore[index]
        good_sensor = sensor("good", good, ports[0], 2)
        sensors.append(good_sensor)
        buyer.wait(lambda s: s["wants"][0]["delivered"] >= 10, 40, "readings bought")
        shown = proofs(buyer)
        # Only the calibration date was revealed; owner, serial and accuracy stay hidden.
        [proved] = shown["proved"][good.peer_id]
        assert proved["fields"] == {"calibrated_until": day(90)}
        assert proved["certifier"] == lab.key.public_key().hex()
        [failed] = shown["failed"][stale.peer_id]
        assert failed["code"] == "expired" and "calibrated_until" in failed["reason"]
        # The stale sensor hears why, and was never paid nor offered a channel.
        stale_sensor.wait(
            lambda s: buyer.peer_id in s["certificates"]["refused_ours"],
            10,
            "the buyer's verdict",
        )
        assert proofs(stale_sensor)["refused_ours"][buyer.peer_id]["code"] == "expired"
        stale_status = stale_sensor.status()
        assert stale_status is not None
        assert stale_status["channels"] == [] and stale_status["channel_stats"]["sat_earned"] == 0
        good_status = good_sensor.status()
        assert good_status is not None and good_status["channel_stats"]["sat_earned"] > 0
        assert buyer.log_lines("did not prove calibrated: expired")
        assert stale_sensor.log_lines("refused our certificate: expired")
    finally:
        buyer.stop()
        for running in sensors:
            running.stop()


def test_a_provider_sells_only_to_a_cell_its_plant_certified(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    site = f"cells-{os.getpid()}-{free_port()}"
    plant, certified = Identity.generate(), Identity.generate()
    certificate(tmp_path / "cell", plant, certified, CELL, {"cell_id": "cell-2", "line": "L1"})
    port = free_port()
    service = FEED + 'require = "certified_cell"\n'
    rule = (
        f'\n[requirements.certified_cell]\ntype = "m2mesh.certified-cell"\n'
        f'certifiers = ["{plant.peer_id}"]\nreveal = ["cell_id"]\n'
    )
    mill = RunningAgent(tmp_path, ledger, "mill", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                        service + rule, site=site)  # fmt: skip
    static = [f"{mill.peer_id}@tcp://127.0.0.1:{port}"]
    held = '\n[[certificates]]\nfile = "cert.json"\ndisclose = ["cell_id"]\n'
    cell = RunningAgent(tmp_path, ledger, "cell", "127.0.0.1", "tcp://127.0.0.1:0",
                        WANT + held, funds=2_000_000, site=site, static_peers=static,
                        identity=certified)  # fmt: skip
    stranger = RunningAgent(tmp_path, ledger, "stranger", "127.0.0.1", "tcp://127.0.0.1:0", WANT,
                            funds=2_000_000, site=site, static_peers=static)  # fmt: skip
    try:
        cell.wait(lambda s: s["wants"][0]["delivered"] >= 5, 40, "the certified cell buying")
        stranger.wait(
            lambda s: "unproven" in (s["wants"][0].get("last_failure") or ""),
            40,
            "the stranger refused with its reason",
        )
        status = stranger.status()
        assert status is not None
        assert status["wants"][0]["paid"] == 0 and status["channels"] == []
        assert "no certificate of that type" in status["wants"][0]["last_failure"]
        shown = proofs(mill)
        assert shown["proved"][certified.peer_id][0]["fields"] == {"cell_id": "cell-2"}
        assert shown["failed"][stranger.peer_id][0]["code"] == "missing"
        assert stranger.log_lines("asked for a certificate; none given: missing")
    finally:
        for agent in (stranger, cell, mill):
            agent.stop()


def test_an_agent_holding_someone_elses_certificate_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    data = tmp_path / "sensor"
    save_identity(Identity.generate(), data / "identity.key")
    other = Identity.generate()
    certificate(data, Identity.generate(), other, CALIBRATION, {"calibrated_until": day(9)})
    profile = data / "profile.toml"
    profile.write_text(
        '[agent]\nname = "sensor"\n' + FEED
        + '\n[[certificates]]\nfile = "cert.json"\ndisclose = ["calibrated_until"]\n'
    )  # fmt: skip
    code = main(["run", str(profile), "--data-dir", str(data), "--ledger", str(ledger)])
    err = capsys.readouterr().err
    assert code == 1 and "certificates[0].file" in err and "not to this agent's key" in err
