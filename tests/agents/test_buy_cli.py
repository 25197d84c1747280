"""`mesh buy` sends the request and shows what was delivered.

Real `mesh run` agents on a real LocalLedger -- a seller of a vibration feed, a fast
feed and inspections (a call whose answer names the part in its request), and a buyer
with no wants of its own, the seller its static peer -- and the real `mesh buy` in its
own process. Before: `mesh buy` printed a summary of the order only, and a call could
not be given its request. The delivery sink's bounds and a large answer over the
control socket are tested without agents.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.buy_command import DeliverySink, delivery_lines, summary_line
from agents.control import ControlError, request, serve_control
from mesh.anchoring.record import Record
from mesh.chain.ledger import LocalLedger
from mesh.errors import MeshError
from mesh.identity import Identity
from mesh.readings import Quality, Reading
from tests.discovery.agents import FEED, RunningAgent, sessions
from tests.reliability.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
SELLS = (
    FEED
    + """
[[services]]
id = "fast"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.002
credit = 20
handler = "builtin:vibration"

[[services]]
id = "inspection"
kind = "call"
unit = "inspection"
price = 5
tick = 0.05
credit = 0
handler = "builtin:inspection"
"""
)


def mesh(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed `mesh` command run with --log-level error: one line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("mesh buy: error: "), line
    return line


class Pair:
    """The running seller and buyer, and `mesh buy` run against the buyer."""

    def __init__(self, seller: RunningAgent, buyer: RunningAgent) -> None:
        self.seller, self.buyer = seller, buyer

    def buy(self, service: str, kind: str, units: int, *extra: str | Path) -> Any:
        return mesh(
            "--log-level", "error", "buy", service, "--kind", kind, "--units", str(units),
            "--peer", self.seller.peer_id, "--data-dir", self.buyer.data, *extra,
        )  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("buy")
    ledger = root / "ledger.db"
    LocalLedger.create(ledger).close()
    port = free_port()
    site = f"buy-{os.getpid()}"  # away from any other test's agents
    seller = RunningAgent(root, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                          SELLS, site=site)  # fmt: skip
    buyer = RunningAgent(root, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", "",
                         funds=1_000_000, capacity=20_000, site=site,
                         static_peers=[f"{seller.peer_id}@tcp://127.0.0.1:{port}"])  # fmt: skip
    try:
        buyer.wait(lambda s: seller.peer_id in sessions(s), 30, "a session with the seller")
        yield Pair(seller, buyer)
    finally:
        buyer.stop()
        seller.stop()


def vibration(n: int) -> float:
    """The value of the n-th reading of `builtin:vibration` (agents/services/builtin.py)."""
    return round(2.0 + 0.5 * math.sin(n / 5) + 0.1 * math.sin(n * 1.7), 4)


def test_a_feed_bought_with_json_shows_each_signed_reading(pair: Pair) -> None:
    result = pair.buy("vibration", "data-feed", 5, "--tick", "0.05", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["state"], doc["delivered"], doc["paid"], doc["why"]) == ("done", 5, 5, "")
    deliveries = doc["deliveries"]
    assert [d["unit"] for d in deliveries] == [1, 2, 3, 4, 5]
    assert {d["kind"] for d in deliveries} == {"data-feed"}
    seqs = [d["seq"] for d in deliveries]
    assert seqs == sorted(set(seqs)), seqs
    for d in deliveries:  # the typed reading in the record at that seq of the seller's log
        reading = d["reading"]
        assert reading["value"] == vibration(d["seq"] + 1), d
        assert (reading["name"], reading["unit"], reading["kind"]) == (
            "rms_velocity", "mm/s", "float"
        )  # fmt: skip
        assert reading["quality"] == "good" and reading["source_ms"] <= reading["agent_ms"]
        assert reading["source_time"].endswith("Z")


def test_a_call_carries_the_request_and_shows_its_answers(pair: Pair) -> None:
    result = pair.buy("inspection", "call", 2, "--request", "hello", "--tick", "0.05")
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    # sum(b"hello") % 7 == 0: the inspection says REWORK (it read the request).
    assert [json.loads(a) for a in answers] == [{"part": "hello", "verdict": "REWORK"}] * 2
    [summary] = result.stderr.splitlines()
    assert summary == "2/2 unit(s) of inspection delivered, 10 sat paid (done)"


def test_a_request_file_of_any_bytes_and_out_file(pair: Pair, tmp_path: Path) -> None:
    raw = b"\xffpart \x00 7"  # not UTF-8: sent as the exact bytes
    (tmp_path / "req.bin").write_bytes(raw)
    out = tmp_path / "answers.json"
    out.write_text("an older file's text\n" * 100)  # emptied when the answers are written
    req = f"@{tmp_path / 'req.bin'}"
    result = pair.buy("inspection", "call", 3, "--request", req, "--json", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    [summary] = result.stderr.splitlines()
    assert summary.endswith(f"(done); deliveries in {out}"), summary
    doc = json.loads(out.read_text())
    assert doc["delivered"] == 3 and len(doc["deliveries"]) == 3
    verdict = "PASS" if sum(raw) % 7 else "REWORK"
    for d in doc["deliveries"]:
        assert json.loads(d["payload"]) == {
            "part": raw.decode(errors="replace"),
            "verdict": verdict,
        }


def test_a_thousand_readings_come_back_in_one_answer(pair: Pair) -> None:
    result = pair.buy("fast", "data-feed", 1000, "--tick", "0.002")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1000
    seq, text = lines[-1].split("  ", 1)
    assert seq.startswith("#") and re.fullmatch(
        r"rms_velocity = \d+\.\d+ mm/s \(good, measured \d{4}-\d\d-\d\dT[\d:.]+Z\)", text
    ), text
    [summary] = result.stderr.splitlines()
    assert summary == "1000/1000 unit(s) of fast delivered, 1000 sat paid (done)"


def test_a_missing_request_file_is_one_line(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    line = one_line_error(pair.buy("nobody-asked", "call", 1, "--request", f"@{missing}"))
    assert line == (
        f"mesh buy: error: --request @{missing}: cannot read {missing}: No such file or directory"
    )
    status = pair.buyer.status()  # nothing was asked of the agent
    assert status is not None and "nobody-asked" not in [w["service"] for w in status["wants"]]


def test_no_offer_is_one_line_and_exit_1(pair: Pair) -> None:
    line = one_line_error(pair.buy("nobody-sells-this", "call", 1, "--timeout", "1"))
    assert line == (
        "mesh buy: error: 0/1 unit(s) of nobody-sells-this delivered, 0 sat paid (stopped):"
        f" no peer {pair.seller.peer_id[:16]} offered nobody-sells-this within 1 s"
    )


def test_an_interrupted_buy_leaves_the_agent_running(pair: Pair) -> None:
    """The asker gone before the answer (Ctrl-C on `mesh buy`): the agent lives on."""
    service = "nobody-sells-that"
    argv = ["buy", service, "--kind", "call", "--units", "1", "--timeout", "1"]
    buying = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", *argv, "--data-dir", str(pair.buyer.data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        pair.buyer.wait(lambda s: any(w["service"] == service for w in s["wants"]), 20, "the buy")
    finally:
        buying.send_signal(signal.SIGINT)
        buying.wait(timeout=10)
    time.sleep(2.0)  # the buy's second is up: the agent answers no one
    status = pair.buyer.status()  # raises if the agent exited
    assert status is not None and status["peer_id"] == pair.buyer.peer_id


def test_an_interrupted_buy_stops_buying_and_settles(pair: Pair) -> None:
    """Ctrl-C on a `mesh buy` of a long feed: the agent stops that want as when its time
    is up (it used to buy on until --timeout for no one), and pays for what arrived."""
    argv = ["buy", "vibration", "--kind", "data-feed", "--units", "100000", "--tick", "0.05",
            "--timeout", "120", "--peer", pair.seller.peer_id]  # fmt: skip
    buying = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", *argv, "--data-dir", str(pair.buyer.data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip

    def ours(status: dict[str, Any]) -> dict[str, Any] | None:
        return next((w for w in status["wants"] if w["units"] == 100_000), None)

    try:
        pair.buyer.wait(lambda s: (w := ours(s)) is not None and w["delivered"] >= 5, 30, "units")
    finally:
        buying.send_signal(signal.SIGINT)
        buying.wait(timeout=10)
    pair.buyer.wait(lambda s: ours(s)["state"] not in ("buying", "looking"), 15, "stopped")
    time.sleep(1.0)
    want = ours(pair.buyer.status() or {})
    assert want is not None and want["delivered"] < 1000, want
    assert want["paid"] == want["delivered"], want  # a reading costs 1: paid for what came


# -------------------------------------------------------------- without agents


def reading(identity: Identity, seq: int, payload: bytes) -> bytes:
    prev = bytes(32) if seq == 0 else b"\x01" * 32
    return Record(identity.public_key, "readings/x", seq, 0, payload, prev).encode()


def test_the_sink_keeps_at_most_the_units_asked_and_its_bytes() -> None:
    key = Identity.generate()
    at = {"source_ms": 1_765_000_000_123, "agent_ms": 1_765_000_000_200}
    first = Reading.of("rms_velocity", 2.5, "mm/s", **at)
    second = Reading.of("state", "run\nning", quality=Quality.UNCERTAIN, **at)
    big = Reading.of("spectrum", [0.5] * 100, "mm/s", **at)
    room = len(first.encode()) + len(second.encode()) + 10
    clock = iter(range(1_765_000_000_300, 1_765_000_000_400, 10))
    sink = DeliverySink("data-feed", units=3, keep_bytes=room, clock=lambda: next(clock))
    for seq, one in enumerate([first, second, big, first, first]):
        sink.add(reading(key, seq, one.encode()))
    assert (sink.count, sink.not_kept) == (3, 1)  # the 3rd is over the room; 4, 5 not asked
    assert sink.to_json() == [
        {"unit": 1, "kind": "data-feed", "received_ms": 1_765_000_000_300, "seq": 0,
         "reading": first.to_json()},
        {"unit": 2, "kind": "data-feed", "received_ms": 1_765_000_000_310, "seq": 1,
         "reading": second.to_json()},
    ]  # fmt: skip
    reply = {"service": "x", "units": 3, "delivered": 3, "paid": 3, "state": "done",
             "why": "", "deliveries": sink.to_json(), "not_kept": 1}  # fmt: skip
    assert list(delivery_lines(json.loads(json.dumps(reply)))) == [
        "#0  rms_velocity = 2.5 mm/s (good, measured 2025-12-06T05:46:40.123Z)",
        "#1  state = 'run\\nning' (uncertain, measured 2025-12-06T05:46:40.123Z)",
    ]
    assert summary_line(reply).endswith("; 1 not kept (over 16 MiB)")


def test_a_seller_s_text_never_drives_the_terminal() -> None:
    calls = DeliverySink("call", units=2)
    calls.add(b"two\nlines")
    calls.add(b"\x1b[2Jclear \xe2\x80\xae")  # an escape sequence and a bidi override
    reply = {"deliveries": calls.to_json()}
    assert list(delivery_lines(reply)) == ['"two\\nlines"', '"\\u001b[2Jclear \\u202e"']
    ticks = DeliverySink("tool-time", units=2)
    ticks.add(b"")
    ticks.add(b"")
    assert list(delivery_lines({"deliveries": ticks.to_json()})) == ["tick 1", "tick 2"]


async def test_a_large_answer_crosses_the_control_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    deliveries = [{"unit": i, "kind": "data-feed", "seq": i, "payload": "r" * 500}
                  for i in range(1, 5001)]  # fmt: skip

    async def handler(command: dict[str, Any], gone: trio.Event) -> dict[str, Any]:
        return {"deliveries": deliveries, "asked": len(command["request"])}

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, handler)
        big = "q" * 120_000  # a 60 KiB request as hex, and more
        reply = await trio.to_thread.run_sync(
            lambda: request(path, {"cmd": "buy", "request": big}, timeout=20)
        )
        nursery.cancel_scope.cancel()
    assert reply == {"deliveries": deliveries, "asked": 120_000}


async def test_a_command_that_fails_is_answered_with_its_one_line(tmp_path: Path) -> None:
    """The failure of a command (`MeshError`) reaches the asker as its error line, also
    while the control socket watches whether the asker hangs up."""
    path = tmp_path / "control.sock"

    async def handler(command: dict[str, Any], gone: trio.Event) -> dict[str, Any]:
        await trio.sleep(0.05)
        raise MeshError(f"no channel {command['channel_id']}")

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, handler)
        with pytest.raises(ControlError, match="no channel 00000000"):
            await trio.to_thread.run_sync(
                lambda: request(path, {"cmd": "close", "channel_id": "00000000"}, timeout=10)
            )
        nursery.cancel_scope.cancel()
