"""The agent as users run it: `mesh demo`, `mesh run`, `mesh status`, SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pynng

from agents.demo_plant import broker_binary
from agents.demo_workorders import PARTS
from agents.logbudget import BURST, RATE
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity, save_identity
from mesh.session import HS1

ROOT = Path(__file__).resolve().parents[2]


def mesh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def test_demo_runs_and_reconciles_to_the_satoshi(tmp_path: Path) -> None:
    # It ends as soon as every want is done (~12 s); the bound only catches a hang.
    result = mesh("demo", "--seconds", "40", "--json", "--data-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]  # MISMATCH/UNMET lines say why
    summary = json.loads(result.stdout)
    assert summary["mismatches"] == []
    assert summary["site"].startswith("demo-") and not summary["unmet"]
    assert {(w["agent"], w["service"], w["state"]) for w in summary["wants"]} == {
        ("robot-cell", "spindle-time", "done"),
        ("robot-cell", "vibration", "done"),
        ("robot-cell", "inspection", "done"),
        ("robot-cell", "spindle-vibration", "done"),  # the plant path (the ot extra)
        ("quality-lab", "vibration", "done"),  # only from a sensor proving its calibration
    }
    ids = {a["peer_id"] for a in summary["agents"]}
    assert len(ids) == 4
    for agent in summary["agents"]:  # everyone met everyone
        assert set(agent["met"]) == ids - {agent["peer_id"]}, agent
    services = {c["service"] for c in summary["channels"]}
    assert services == {"spindle-time", "vibration", "inspection", "spindle-vibration"}
    for channel in summary["channels"]:
        assert channel["payer_agent"] in ("robot-cell", "quality-lab"), channel
        assert channel["state"] == "closed" and channel["close_mined"], channel
        assert channel["total"] > 0
        assert channel["payee_on_ledger"] == channel["total"] == channel["delivered_value"]
    for meter in summary["meters"]:
        assert meter["paid"] == meter["delivered_units"] * meter["price"]
    assert summary["ledger_balanced"] and summary["reconciled"]
    # Four brackets, each paid from an escrow the quality lab's verdict settled: the
    # one that failed came back to the robot cell. One passport exported and verified.
    parts = {o["part"]: o for o in summary["work_orders"]}
    assert set(parts) == set(PARTS)
    assert {p for p, o in parts.items() if o["verdict"] == "FAIL"} == {"BRK-008"}
    assert all(o["ledger_ok"] and o["proven"] and o["units"] == 4 for o in parts.values())
    passport = Path(summary["data_dir"]) / "passport-BRK-006.json"
    checked = mesh("verify", str(passport), "--ledger", summary["ledger"])
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith("VALID passport of part BRK-006"), checked.stdout
    assert "process reading(s) signed by" in checked.stdout
    assert "  inspector " in checked.stdout and " certified by " in checked.stdout  # accredited
    # The sensor proved its calibration date to the quality lab, and only that: its
    # owner and serial are nowhere in the quality lab's data dir.
    assert any("vibration-sensor proved to quality-lab: calibrated_until" in line
               for line in summary["report"]), summary["report"]  # fmt: skip
    lab_dir = Path(summary["data_dir"]) / "quality-lab"
    for path in lab_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"VS7-2291-0042" not in data and b"SenseCo Leasing" not in data, path
    # Every agent's readings and meter statements are anchored, mined and provable.
    assert summary["all_records_anchored"]
    own = {(r["holder"], r["stream"]) for r in summary["records"] if r["origin"] == "own"}
    assert ("vibration-sensor", "readings/vibration") in own
    assert {holder for holder, stream in own if stream == "meters"} == {
        "cnc-mill",
        "vibration-sensor",
        "quality-lab",
        "robot-cell",
    }
    sensor = Path(summary["data_dir"]) / "vibration-sensor"
    proof = tmp_path / "reading.json"
    exported = mesh(
        "proof",
        "--data-dir",
        str(sensor),
        "--stream",
        "readings/vibration",
        "--seq",
        "0",
        "--out",
        str(proof),
    )
    assert exported.returncode == 0, exported.stderr
    verified = mesh("verify", str(proof), "--ledger", summary["ledger"])
    assert verified.returncode == 0 and verified.stdout.startswith("VALID"), verified.stdout
    # The robot cell proves the readings it bought from its own data dir: the sensor's
    # receipts gave it the Merkle paths, its archive the signed readings.
    (kept,) = [
        r
        for r in summary["records"]
        if r["origin"] == "kept"
        and r["stream"] == "readings/vibration"
        and r["holder"] == "robot-cell"
    ]
    assert kept["holder"] == "robot-cell" and kept["stream"] == "readings/vibration"
    # (Readings sold in the last seconds may be anchored after the buyer left: those
    # receipts arrive at its next run. The first batch is always in; the feed's first
    # seqs may have gone to the quality lab, which buys from the same stream.)
    assert kept["anchored"], kept
    last = kept["anchored"][-1][1]
    sensor_id = next(a["peer_id"] for a in summary["agents"] if a["name"] == "vibration-sensor")
    assert kept["agent"] == sensor_id
    bought = tmp_path / "bought.json"
    exported = mesh(
        "proof",
        "--data-dir",
        str(Path(summary["data_dir"]) / "robot-cell"),
        *("--agent", sensor_id, "--stream", "readings/vibration"),
        *("--seq", str(last), "--out", str(bought)),
    )
    assert exported.returncode == 0, exported.stderr
    verified = mesh("verify", str(bought), "--ledger", summary["ledger"])
    assert verified.returncode == 0 and verified.stdout.startswith("VALID"), verified.stdout
    # The plant path: the controller's values, bought, shown on the robot cell's OPC UA
    # server to an independent client, published over Sparkplug, one of them proven.
    report = "\n".join(summary["report"])
    assert re.search(r"Feeds/spindle-vibration@\w{16} = [\d.]+ mm/s, seq \d+", report), report
    if broker_binary() is not None:
        assert re.search(r"seen: NBIRTH \d+, DBIRTH \d+, DDATA \d+", report), report
    assert re.search(r"readings/spindle-vibration #0 \(\S+ store\): VALID block", report), report
    assert re.search(r" Vibration = [\d.]+ mm/s \(good, measured ", report), report


def test_status_reflects_a_running_agent_and_sigterm_stops_it(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    data = tmp_path / "mill"
    identity = Identity.generate()
    save_identity(identity, data / "identity.key")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.cli",
            "run",
            str(ROOT / "profiles" / "cnc-mill.toml"),
            "--data-dir",
            str(data),
            "--ledger",
            str(ledger),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        status = wait_for_status(data, proc)
        assert status["peer_id"] == identity.peer_id and status["pid"] == proc.pid
        assert status["services"][0]["id"] == "spindle-time"
        assert status["wallet"] == {"available": 0, "reserved": 0}
        human = mesh("status", "--data-dir", str(data))
        assert "CNC Mill 3" in human.stdout
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert not (data / "control.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    gone = mesh("status", "--data-dir", str(data))  # a stopped agent: its stored state
    assert gone.returncode == 0 and gone.stdout.startswith(f"the agent of {data} is not running")


def test_run_with_a_bad_profile_is_one_clear_line(tmp_path: Path) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_text('[agent]\nname = "x"\nprice = -1\n')
    result = mesh("run", str(profile), "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{profile}: agent.price: unknown key" in result.stderr


def test_a_flood_of_garbage_handshakes_writes_a_bounded_log(tmp_path: Path) -> None:
    """3 000 bad handshakes in a few seconds: the agent logs each kind of line at most
    `BURST` times at once (then about one a second), and says how many it left out --
    a neighbour cannot fill the disk with our warnings (SECURITY risk 4)."""
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    data = tmp_path / "mill"
    save_identity(Identity.generate(), data / "identity.key")
    command = [sys.executable, "-m", "agents.cli", "--log-level", "warning", "run"]
    proc = subprocess.Popen(
        [*command, str(ROOT / "profiles" / "cnc-mill.toml"), "--data-dir", str(data),
         "--ledger", str(ledger)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        status = wait_for_status(data, proc)
        flood = 3_000
        with pynng.Pair1(send_timeout=5_000) as push:
            push.dial(status["mailbox"], block=True)
            for i in range(flood):  # an HS1 kind byte, then bytes that are no handshake
                push.send(bytes([HS1]) + i.to_bytes(4, "big") + bytes(100))

        # From one address: past its budget (200 at once, 100 a second) the HS1s are
        # dropped unread (counted, logged as one line per timer pass); the rest fail.
        def handled(status: dict[str, Any]) -> int:
            return int(status["node"]["handshakes_failed"] + status["node"]["handshakes_limited"])

        deadline = time.monotonic() + 30
        while handled(status) < flood and time.monotonic() < deadline:
            time.sleep(0.2)
            status = wait_for_status(data, proc)
        assert handled(status) == flood
        failed = status["node"]["handshakes_failed"]
        assert failed > BURST and status["node"]["handshakes_limited"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    refused = [line for line in stderr.splitlines() if "handshake with HS1 failed" in line]
    seconds = 40  # far more than the flood took
    assert BURST <= len(refused) <= BURST + seconds * RATE, stderr[-2000:]
    # How many were left out is said, by a later line of the kind or at exit.
    left_out = sum(int(n) for n in re.findall(r"\[(\d+) more like this not logged\]", stderr))
    left_out += sum(
        int(n) for n in re.findall(r"(\d+) more like 'handshake with %s failed: %s'", stderr)
    )
    assert left_out + len(refused) == failed, stderr[-2000:]


def wait_for_status(data: Path, proc: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = mesh("status", "--data-dir", str(data), "--json", timeout=30)
        if result.returncode == 0:
            status: dict[str, Any] = json.loads(result.stdout)
            return status
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    raise AssertionError("the agent never answered `mesh status`")
