"""A machine's OPC UA value, sold through the mesh and shown in the buyer's OPC UA space.

Real processes: `mesh controller` (a simulated mill on a real asyncua server), a seller
`mesh run` whose feed's source is the controller's ``Machine.Vibration`` node, a buyer
`mesh run` serving ``[opcua_server]``, and `mesh buy`. An independent asyncua client
reads the buyer's address space. When the controller dies, the feed delivers nothing
and nothing is paid; when it is back, readings flow again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.ot import sparkplug_b_pb2 as pb
from agents.ot.sparkplug import rebirth_request
from agents.ot.sparkplug_metrics import metric_properties
from mesh.chain.ledger import LocalLedger
from tests.discovery.agents import RunningAgent, sessions
from tests.ot.mosquitto import Mosquitto, Recorder
from tests.ot.opcua_fixtures import pytestmark
from tests.reliability.procs import free_port

__all__ = ["pytestmark"]
ROOT = Path(__file__).resolve().parents[2]


class Controller:
    """`mesh controller` in its own process."""

    def __init__(self, port: int, log: Path) -> None:
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/m2mesh/controller"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents.cli", "controller", "--endpoint", self.endpoint,
                 "--rate", "50"],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while "simulated controller at" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the controller did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.write_text("")  # the next start's line is looked for afresh


def seller_profile(endpoint: str) -> str:
    return f"""
[[services]]
id = "spindle-vibration"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.02
credit = 2

[services.opcua]
endpoint = "{endpoint}"
node = "ns=2;s=Machine.Vibration"
interval = 0.02
"""


def mesh(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "--log-level", "error", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


async def _read_feed(endpoint: str, folder: str) -> dict[str, Any]:
    from asyncua.client.client import Client

    async with Client(endpoint) as client:
        feed = await client.nodes.objects.get_child(["2:M2Mesh", "2:Feeds", f"2:{folder}"])
        out: dict[str, Any] = {}
        for child in await feed.get_children():
            name = (await child.read_browse_name()).Name
            out[name] = (await child.read_data_value(raise_on_bad_status=False)).Value.Value
        return out


@pytest.fixture(scope="module")
def plant(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto
) -> Iterator[tuple[Controller, Any, Any, int]]:
    root = tmp_path_factory.mktemp("plant")
    ledger = root / "ledger.db"
    LocalLedger.create(ledger).close()
    controller = Controller(free_port(), root / "controller.log")
    controller.start()
    site = f"plant-{os.getpid()}"
    port, ua_port = free_port(), free_port()
    seller = RunningAgent(root, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                          seller_profile(controller.endpoint), site=site)  # fmt: skip
    server = (
        f'\n[opcua_server]\nendpoint = "opc.tcp://127.0.0.1:{ua_port}/m2mesh"\n'
        f'\n[sparkplug]\nbroker = "{mosquitto.url}"\ngroup = "{site}"\nnode = "robot-cell"\n'
    )
    buyer = RunningAgent(root, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", server,
                         funds=1_000_000, capacity=20_000, site=site,
                         static_peers=[f"{seller.peer_id}@tcp://127.0.0.1:{port}"])  # fmt: skip
    try:
        buyer.wait(lambda s: seller.peer_id in sessions(s), 30, "a session with the seller")
        yield controller, seller, buyer, ua_port
    finally:
        buyer.stop()
        seller.stop()
        controller.kill()


def buy(seller: Any, buyer: Any, units: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return mesh("buy", "spindle-vibration", "--kind", "data-feed", "--units", str(units),
                "--peer", seller.peer_id, "--data-dir", buyer.data, "--json", *extra)  # fmt: skip


def test_opc_ua_values_are_sold_signed_and_shown_in_opc_ua_and_sparkplug(
    plant: tuple[Controller, Any, Any, int], mosquitto: Mosquitto
) -> None:
    _, seller, buyer, ua_port = plant
    group = buyer.status()["site"]
    recorder = Recorder(mosquitto.url, f"spBv1.0/{group}/#")
    try:
        result = buy(seller, buyer, 20)
        device = f"spindle-vibration@{seller.peer_id[:16]}"
        topic = f"spBv1.0/{group}/%s/robot-cell/{device}"
        ours = (topic % "DBIRTH", topic % "DDATA")
        seen = trio.run(recorder.wait_for, lambda m: sum(t in ours for t, _ in m) >= 20, 10.0)
    finally:
        recorder.close()
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["delivered"], doc["paid"]) == (20, 20)
    readings = [d["reading"] for d in doc["deliveries"]]
    assert {(r["name"], r["unit"], r["kind"], r["quality"]) for r in readings} == {
        ("Vibration", "mm/s", "float", "good")
    }
    assert all(1.3 <= r["value"] <= 2.7 for r in readings)  # the simulated mill's range
    sources = [r["source_ms"] for r in readings]
    assert sources == sorted(sources) and len(set(sources)) == 20  # 20 changes, in order
    assert all(r["agent_ms"] >= r["source_ms"] for r in readings)
    status = seller.status()
    assert status["bridges"]["sources"]["spindle-vibration"].startswith("connected")
    shown = mesh("status", "--data-dir", seller.data).stdout
    assert f"source of spindle-vibration: connected to {plant[0].endpoint}" in shown
    said = mesh("status", "--data-dir", buyer.data).stdout
    assert f"OPC UA server: opc.tcp://127.0.0.1:{ua_port}/m2mesh (read-only)" in said
    assert "Sparkplug B: online at mqtt://" in said
    folder = f"spindle-vibration@{seller.peer_id[:16]}"
    endpoint = f"opc.tcp://127.0.0.1:{ua_port}/m2mesh"
    shown = asyncio.run(_read_feed(endpoint, folder))
    last = doc["deliveries"][-1]
    assert (shown["Seq"], shown["Value"]) == (last["seq"], readings[-1]["value"])
    assert (shown["EngineeringUnit"], shown["Seller"]) == ("mm/s", seller.peer_id)
    # Sparkplug: the feed's device birth, then its data.
    verbs = [t.split("/")[2] for t, _ in seen if t in ours]
    assert verbs[0] == "DBIRTH" and set(verbs[1:]) == {"DDATA"}
    births = [
        pb.Payload.FromString(p) for t, p in seen if t.endswith(f"DBIRTH/robot-cell/{device}")
    ]
    metric = births[-1].metrics[0]
    assert metric.name == "Vibration" and metric.datatype == 10  # Double
    assert metric_properties(metric)["engUnit"] == "mm/s"
    # the first reading rides in the device's birth, the others in its data messages
    values = [pb.Payload.FromString(p).metrics[0].double_value for t, p in seen if t in ours]
    assert values == [r["value"] for r in readings]


def test_a_dead_controller_sells_nothing_and_bills_nothing_until_it_is_back(
    plant: tuple[Controller, Any, Any, int],
) -> None:
    controller, seller, buyer, _ = plant
    controller.kill()
    seller.wait(
        lambda s: s["bridges"]["sources"]["spindle-vibration"].startswith("disconnected"),
        20, "the source to see the controller gone",
    )  # fmt: skip
    before = buy(seller, buyer, 5, "--timeout", "8")
    doc = json.loads(before.stdout)
    assert before.returncode == 1 and doc["paid"] <= 2  # at most the credit window, prepaid
    assert doc["delivered"] == 0
    controller.start()
    seller.wait(
        lambda s: s["bridges"]["sources"]["spindle-vibration"].startswith("connected"),
        40, "the source to reconnect",
    )  # fmt: skip
    after = buy(seller, buyer, 5)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["delivered"] == 5


def test_a_host_that_asks_for_a_rebirth_gets_the_node_and_every_device_born_again(
    plant: tuple[Controller, Any, Any, int], mosquitto: Mosquitto
) -> None:
    _, seller, buyer, _ = plant
    group = buyer.status()["site"]
    assert buy(seller, buyer, 2).returncode == 0
    recorder = Recorder(mosquitto.url, f"spBv1.0/{group}/#")
    try:
        request = rebirth_request(group, "robot-cell", 1)
        recorder.publish(request.topic, request.payload)
        device = f"spindle-vibration@{seller.peer_id[:16]}"
        births = trio.run(
            recorder.wait_for,
            lambda m: any(t.endswith(f"DBIRTH/robot-cell/{device}") for t, _ in m),
        )
    finally:
        recorder.close()
    verbs = [t.split("/")[2] for t, _ in births if "BIRTH" in t]
    assert verbs[0] == "NBIRTH" and "DBIRTH" in verbs[1:]
    node = pb.Payload.FromString(next(p for t, p in births if "NBIRTH" in t))
    assert {m.name for m in node.metrics} >= {"bdSeq", "Node Control/Rebirth"}
