"""The plant `mesh demo` runs beside its agents: the OPC UA -> mesh -> OPC UA/Sparkplug path.

With the ``ot`` extra installed, the demo adds to its factory:

- a simulated mill controller on a real OPC UA server (`mesh controller`, its own
  process, on a free loopback port);
- to the vibration sensor's copy of its profile, a second feed, ``spindle-vibration``,
  whose readings are the controller's ``Machine.Vibration`` node (`OpcUaSource`);
- to the robot cell's copy, a want of that feed, its own read-only OPC UA server
  (``[opcua_server]``) and, when the ``mosquitto`` broker is installed, Sparkplug B
  publishing to a broker the demo starts (``[sparkplug]``);
- an observer in the demo's own process: an independent OPC UA client reading the robot
  cell's address space, and an MQTT subscriber counting the Sparkplug messages;
- at the end, with the agents stopped: a proof that one OPC UA-sourced reading was
  signed and anchored, verified by `mesh verify` as a stranger would.

The shipped profiles are never changed: the demo writes its copies in a directory of its
own. Without the extra, the demo runs without this path and says how to get it.
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agents.ot import OT_EXTRA, missing
from agents.ot.controller import free_port
from agents.site_view import Roster

SERVICE = "spindle-vibration"
SENSOR, BUYER = "vibration-sensor", "robot-cell"
BROKERS = ("mosquitto", "/usr/sbin/mosquitto")

SENSOR_OVERLAY = """
# Added by `mesh demo` (agents/demo_plant.py): the mill's vibration, read from its
# controller over OPC UA, sold as a feed.
[[services]]
id = "spindle-vibration"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.05
credit = 2
description = "the mill spindle's vibration (mm/s), read from its controller over OPC UA"

[services.opcua]
endpoint = "{controller}"
node = "ns=2;s=Machine.Vibration"
interval = 0.05
"""
BUYER_OVERLAY = """
# Added by `mesh demo` (agents/demo_plant.py): the controller's readings, bought, shown
# on the cell's own OPC UA server (and published over Sparkplug B).
[[wants]]
service = "spindle-vibration"
kind = "data-feed"
tick = 0.05
max_price = 2
units = 100
budget = 200
prepay = 2

[opcua_server]
endpoint = "{server}"
"""
SPARKPLUG_OVERLAY = """
[sparkplug]
broker = "{broker}"
group = "{site}"
node = "robot-cell"
"""


def broker_binary() -> str | None:
    """The mosquitto broker, if installed."""
    for name in BROKERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class DemoPlant:
    """The controller, broker and observer of one demo run (the module docstring)."""

    def __init__(self, profiles: Path, site: str) -> None:
        self.source = profiles
        self.site = site
        self.dir = Path(tempfile.mkdtemp(prefix="m2mesh-demo-plant-"))
        port = free_port("127.0.0.1")
        self.controller = f"opc.tcp://127.0.0.1:{port}/m2mesh/controller"
        self.server = f"opc.tcp://127.0.0.1:{free_port('127.0.0.1')}/m2mesh"
        self.broker_path = broker_binary()
        self.broker = f"mqtt://127.0.0.1:{free_port('127.0.0.1')}" if self.broker_path else ""
        self.procs: list[subprocess.Popen[bytes]] = []
        self.shown: dict[str, Any] = {}
        self.sparkplug: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def profile(self, name: str) -> Path:
        """The profile the demo runs for agent `name`: the plant's copy if it has one."""
        copy = self.dir / f"{name}.toml"
        return copy if copy.exists() else self.source / f"{name}.toml"

    def start(self) -> None:
        """Write the profile copies, start the controller (and broker) and the observers."""
        sensor = (self.source / f"{SENSOR}.toml").read_text()
        (self.dir / f"{SENSOR}.toml").write_text(
            sensor + SENSOR_OVERLAY.format(controller=self.controller)
        )
        buyer = (self.source / f"{BUYER}.toml").read_text() + BUYER_OVERLAY.format(
            server=self.server
        )
        if self.broker:
            buyer += SPARKPLUG_OVERLAY.format(broker=self.broker, site=self.site)
        (self.dir / f"{BUYER}.toml").write_text(buyer)
        self._spawn(
            "controller",
            [sys.executable, "-m", "agents.cli", "controller", "--endpoint", self.controller,
             "--rate", "20"],
            "simulated controller at",
        )  # fmt: skip
        if self.broker_path:
            port = self.broker.rsplit(":", 1)[1]
            conf = self.dir / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "log_dest stderr\nlog_type notice\n"
            )
            self._spawn("mosquitto", [self.broker_path, "-c", str(conf)], None, int(port))
            self._watch(self._count_sparkplug)
        self._watch(self._read_opcua)

    def _spawn(self, name: str, argv: list[str], ready: str | None, port: int = 0) -> None:
        """Start a process; return once it printed `ready`, or accepts on `port`."""
        log = self.dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not (
            ready in log.read_text(errors="replace") if ready is not None else _accepts(port)
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip()[-500:]
                raise RuntimeError(f"the demo's {name} did not start: {tail}")
            time.sleep(0.1)

    def _watch(self, loop: Any) -> None:
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_opcua(self) -> None:
        """Every second, what an independent OPC UA client reads in the cell's space."""
        while not self._stop.wait(1.0):
            try:
                self.shown = asyncio.run(_read_feed(self.server)) or self.shown
            except Exception:  # not up yet, or gone: try again
                continue

    def _count_sparkplug(self) -> None:
        from paho.mqtt.client import Client, MQTTMessage
        from paho.mqtt.enums import CallbackAPIVersion

        counts = self.sparkplug

        def on_message(client: Client, userdata: object, message: MQTTMessage) -> None:
            verb = message.topic.split("/")[2] if message.topic.count("/") >= 2 else "?"
            counts[verb] = counts.get(verb, 0) + 1

        client = Client(CallbackAPIVersion.VERSION2)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"spBv1.0/{self.site}/#", 0)
        client.on_message = on_message
        host, port = self.broker.removeprefix("mqtt://").rsplit(":", 1)
        client.connect(host, int(port))
        client.loop_start()
        self._stop.wait()
        client.disconnect()
        client.loop_stop()

    def report(self, roster: Roster) -> list[str]:
        """The path's lines for the demo's end (the agents stopped, their dirs there)."""
        lines = [
            "",
            "the plant path: OPC UA controller -> sensor -> signed, paid feed -> robot cell",
            f"  controller     {self.controller}",
            f"  cell's OPC UA  {self.server}",
        ]
        shown = self.shown
        if shown:
            lines.append(
                f"                 Feeds/{shown['folder']} = {shown['Value']}"
                f" {shown['EngineeringUnit']}, seq {shown['Seq']}"
            )
        else:
            lines.append("                 (no bought feed read there)")
        if self.broker:
            order = ("NBIRTH", "DBIRTH", "DDATA", "NDEATH")
            counts = sorted(
                self.sparkplug.items(),
                key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
            )
            seen = ", ".join(f"{k} {v}" for k, v in counts) or "nothing"
            lines.append(f"  Sparkplug B    {self.broker} group {self.site}")
            lines.append(f"                 seen: {seen}")
        else:
            lines.append(
                "  Sparkplug B    skipped: no mosquitto broker (apt-get install mosquitto)"
            )
        lines.extend(_prove(roster))
        return lines

    def close(self) -> None:
        """Stop the observers, the controller and the broker; remove the plant's files."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _accepts(port: int) -> bool:
    """Whether something listens on loopback `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _read_feed(endpoint: str) -> dict[str, Any]:
    """The first bought feed's variables in the cell's address space (empty: none)."""
    from asyncua.client.client import Client

    async with Client(endpoint, timeout=2) as client:
        feeds = await client.nodes.objects.get_child(["2:M2Mesh", "2:Feeds"])
        for folder in await feeds.get_children():
            name = (await folder.read_browse_name()).Name
            if not str(name).startswith(SERVICE):
                continue
            out: dict[str, Any] = {"folder": name}
            for child in await folder.get_children():
                key = (await child.read_browse_name()).Name
                data = await child.read_data_value(raise_on_bad_status=False)
                out[str(key)] = data.Value.Value if data.Value is not None else None
            return out
    return {}


def _prove(roster: Roster) -> list[str]:
    """Export and verify the proof of the first OPC UA-sourced reading: from the robot
    cell's own store when the sensor's receipt reached it, else from the sensor's."""
    stream = f"readings/{SERVICE}"
    sensor = roster.ids.get(SENSOR, "")
    proof = roster.root / "spindle-vibration-0.proof.json"
    attempts = [
        (BUYER, ["--agent", sensor]),
        (SENSOR, []),
    ]
    for holder, extra in attempts:
        made = _mesh(
            "proof", "--data-dir", str(roster.data_dir(holder)), "--stream", stream,
            "--seq", "0", "--out", str(proof), *extra,
        )  # fmt: skip
        if made.returncode != 0:
            continue
        verified = _mesh("verify", str(proof), "--ledger", str(roster.ledger))
        said = verified.stdout.strip().splitlines()
        reading = next((s.strip() for s in said if s.strip().startswith("reading")), "")
        head = said[0] if said else verified.stderr.strip()
        head = " ".join(head.split()[:3])  # VALID block N
        return [
            f"  proof          {stream} #0 ({holder}'s store): {head}",
            f"                 {reading.removeprefix('reading').strip()}",
        ]
    return [f"  proof          {stream} #0: not anchored yet (the run ended first)"]


def _mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", "--log-level", "error", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@contextmanager
def demo_plant(profiles: Path, site: str, *, enabled: bool = True) -> Iterator[DemoPlant | None]:
    """A started `DemoPlant`, or None (and why, on stderr) without the ``ot`` extra."""
    absent = missing("asyncua", "paho.mqtt", "google.protobuf")
    if not enabled:
        yield None
        return
    if absent:
        print(f"demo: without the OPC UA/Sparkplug path ({OT_EXTRA})", file=sys.stderr)
        yield None
        return
    plant = DemoPlant(profiles, site)
    try:
        plant.start()
        yield plant
    finally:
        plant.close()


__all__ = ["DemoPlant", "broker_binary", "demo_plant"]
