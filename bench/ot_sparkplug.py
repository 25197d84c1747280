"""The `ot` scenario's Sparkplug leg: DDATA publishes/s, beside bare paho.

A mosquitto of its own on loopback (`tests.ot.mosquitto`, as the OT tests start it;
without the binary the leg is skipped and says why). Then, `reps` times each, in turns:

- `agents.ot.sparkplug_bridge.SparkplugPublisher` online (births out), then `messages`
  readings of one device published with ``publish`` -- a DDATA each, QoS 0 -- in
  batches of `BATCH` (below the client's send queue), each batch waited for until
  written to the socket; publishes/s from the first to the last written;
- bare paho-mqtt (2.x, no network thread: each ``publish`` writes to the socket at once)
  publishing the same DDATA topics and payloads, encoded beforehand by an
  `agents.ot.sparkplug.EdgeNode`, until the last one is written.

So the ratio is what the Sparkplug layer (encoding each payload, the edge node's
state, the Trio shell around paho) costs over paho alone. This module measures and
returns numbers; it judges nothing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.ot import OT_EXTRA, missing
from bench.report import Row
from mesh.readings import Reading

GROUP, DEVICE = "bench", "spindle"
BATCH = 5_000
"""Publishes queued before waiting for them to be written (the client queues 10 000)."""


@dataclass(frozen=True)
class SparkplugRates:
    """Medians of the publishes/s measured, and what went with them."""

    publisher: float
    bare: float
    messages: int
    reps: int
    dropped: int
    """Publishes the publisher dropped (its queue full): should be 0."""


def measure(messages: int, reps: int) -> SparkplugRates | str:
    """Both rates (see the module docstring), or why they cannot be measured here."""
    absent = missing("paho.mqtt", "google.protobuf")
    if absent:
        return f"needs {', '.join(absent)}: {OT_EXTRA}"
    from tests.ot.mosquitto import HOST, Mosquitto, mosquitto_binary

    binary = mosquitto_binary()
    if binary is None:
        return "no mosquitto broker on this host (apt-get install mosquitto)"
    readings = [
        Reading.of("Vibration", 2.0 + (i % 1000) / 1000, "mm/s", source_ms=1_765_000_000_000 + i)
        for i in range(messages + 1)
    ]
    published: list[float] = []
    bare: list[float] = []
    dropped = 0
    with tempfile.TemporaryDirectory(prefix="bench-ot-mqtt-") as tmp:
        broker = Mosquitto(Path(tmp), binary)
        broker.start()
        try:
            for _ in range(reps):
                rate, lost = publisher_rate(broker.url, readings)
                published.append(rate)
                dropped += lost
                bare.append(bare_paho_rate((HOST, broker.port), readings))
        finally:
            broker.stop()
    return SparkplugRates(
        statistics.median(published), statistics.median(bare), messages, reps, dropped
    )


def publisher_rate(url: str, readings: Sequence[Reading]) -> tuple[float, int]:
    """`SparkplugPublisher`: DDATA publishes/s of `readings[1:]` (the first births
    the device), and how many it dropped."""
    import trio

    return trio.run(_publisher_rate, url, readings)


async def _publisher_rate(url: str, readings: Sequence[Reading]) -> tuple[float, int]:
    import trio

    from agents.ot.mqtt import BrokerUrl
    from agents.ot.sparkplug_bridge import SparkplugPublisher, SparkplugPublisherConfig

    publisher = SparkplugPublisher(
        SparkplugPublisherConfig(BrokerUrl.parse(url), GROUP, "ot-publisher")
    )

    async def written() -> None:
        while publisher.client.statistics().unsent:
            await trio.sleep(0.0005)

    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        with trio.fail_after(10):
            await publisher.wait_online()
            publisher.publish(DEVICE, readings[0])  # the device's birth: not timed
            await written()
        started = time.perf_counter()
        for first in range(1, len(readings), BATCH):
            for reading in readings[first : first + BATCH]:
                publisher.publish(DEVICE, reading)
            await written()
        seconds = time.perf_counter() - started
        dropped = publisher.unsent_dropped
        publisher.close()
    return (len(readings) - 1) / seconds, dropped


def bare_paho_rate(broker: tuple[str, int], readings: Sequence[Reading]) -> float:
    """Bare paho: publishes/s of the DDATA messages an edge node makes of
    `readings[1:]`, encoded before the clock starts."""
    from paho.mqtt.client import Client, MQTTv311
    from paho.mqtt.enums import CallbackAPIVersion

    from agents.ot.sparkplug import EdgeNode

    node = EdgeNode(GROUP, "ot-bare")
    node.connect(0)
    node.connected(0)
    node.update(DEVICE, readings[0], 0)  # DBIRTH
    messages = [out for r in readings[1:] for out in node.update(DEVICE, r, r.source_ms)]
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTv311)
    client.connect(*broker)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        client.loop(0.05)
        if time.monotonic() > deadline:
            raise RuntimeError("bare paho: no CONNACK")
    started = time.perf_counter()
    info = None
    for out in messages:
        info = client.publish(out.topic, out.payload, 0)
    while info is not None and not info.is_published():
        client.loop(0.01)
    seconds = time.perf_counter() - started
    client.disconnect()
    return len(messages) / seconds


def rows(scenario: str, rates: SparkplugRates) -> list[Row]:
    """The Sparkplug row."""
    return [
        Row(
            scenario,
            "Sparkplug DDATA publishes/s (SparkplugPublisher, QoS 0, loopback mosquitto)",
            rates.publisher,
            "/s",
            rates.bare,
            "bare paho",
            params={"messages": rates.messages, "reps": rates.reps, "dropped": rates.dropped},
        )
    ]


__all__ = ["BATCH", "SparkplugRates", "bare_paho_rate", "measure", "publisher_rate", "rows"]
