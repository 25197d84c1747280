"""The Sparkplug shells against a real mosquitto, watched by an independent paho client.

The `Recorder` (plain paho in its own thread) and the generated protobuf decode what the
broker delivered; nothing here trusts the module's own decoder to check its encoder.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import trio

from agents.ot import sparkplug_b_pb2 as pb
from agents.ot.sparkplug_bridge import (
    SparkplugPublisher,
    SparkplugPublisherConfig,
    SparkplugSource,
    SparkplugSourceConfig,
)
from mesh.readings import Kind, Quality, Reading
from tests.ot.mosquitto import Mosquitto, Recorder

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000


def group() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


def publisher(broker: Mosquitto, group_id: str, **kw: object) -> SparkplugPublisher:
    table = {"broker": broker.url, "group": group_id, "node": "mill"}
    return SparkplugPublisher(SparkplugPublisherConfig.from_table(table, "t"), **kw)  # type: ignore[arg-type]


def decode(data: bytes) -> pb.Payload:
    payload = pb.Payload()
    payload.ParseFromString(data)
    return payload


def verb(topic: str) -> str:
    return topic.split("/")[2]


def count(name: str, n: int = 1) -> Callable[[list[tuple[str, bytes]]], bool]:
    return lambda messages: sum(verb(t) == name for t, _ in messages) >= n


def bd_seq(data: bytes) -> int:
    (value,) = [m.long_value for m in decode(data).metrics if m.name == "bdSeq"]
    return int(value)


async def test_births_data_values_and_aliases(mosquitto: Mosquitto) -> None:
    g = group()
    recorder = Recorder(mosquitto.url, f"spBv1.0/{g}/#")
    pub = publisher(mosquitto, g)
    readings = [
        Reading.of("load", 0.5, "%", source_ms=T0),
        Reading.of("count", -7, source_ms=T0 + 1, quality=Quality.UNCERTAIN),
        Reading.of("run", True, source_ms=T0 + 2),
        Reading.of("tool", "T12", source_ms=T0 + 3, quality=Quality.BAD),
        Reading.of("bits", [True, False, True, True, False, False, False, False, True]),
        Reading.of("axes", [1, -2, 3]),
        Reading.of("temps", [20.5, 21.25], "Cel"),
    ]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            for reading in readings:
                pub.publish("spindle", reading)
            pub.publish("spindle", Reading.of("load", 0.75, "%", source_ms=T0 + 9))
            got = await recorder.wait_for(count("DDATA"))
            pub.close()
    finally:
        recorder.close()
    assert [verb(t) for t, _ in got] == ["NBIRTH"] + ["DBIRTH"] * 7 + ["DDATA"]
    assert [decode(p).seq for _, p in got] == list(range(9))
    assert got[1][0] == f"spBv1.0/{g}/DBIRTH/mill/spindle"
    birth = decode(got[7][1])  # the last DBIRTH lists every metric
    metrics = {m.name: m for m in birth.metrics}
    assert list(metrics) == [r.name for r in readings]
    assert len({m.alias for m in birth.metrics}) == 7
    assert (metrics["load"].datatype, metrics["load"].double_value) == (10, 0.5)
    assert (metrics["count"].datatype, metrics["count"].long_value) == (4, (1 << 64) - 7)
    assert (metrics["run"].datatype, metrics["run"].boolean_value) == (11, True)
    assert (metrics["tool"].datatype, metrics["tool"].string_value) == (12, "T12")
    assert metrics["bits"].datatype == 32
    assert metrics["bits"].bytes_value == struct.pack("<I", 9) + bytes([0b10110000, 0x80])
    assert metrics["axes"].datatype == 25
    assert metrics["axes"].bytes_value == struct.pack("<3q", 1, -2, 3)
    assert metrics["temps"].datatype == 31
    assert [m.timestamp for m in birth.metrics][:4] == [T0, T0 + 1, T0 + 2, T0 + 3]

    def props(metric: pb.Payload.Metric) -> dict[str, tuple[int, object]]:
        pairs = zip(metric.properties.keys, metric.properties.values, strict=True)
        return {k: (v.type, getattr(v, v.WhichOneof("value"))) for k, v in pairs}

    assert props(metrics["load"]) == {"engUnit": (12, "%")}
    assert props(metrics["temps"]) == {"engUnit": (12, "Cel")}
    assert props(metrics["count"]) == {"Quality": (3, 500)}
    assert props(metrics["tool"]) == {"Quality": (3, 0)}
    (data,) = decode(got[8][1]).metrics
    assert not data.name and data.alias == metrics["load"].alias
    assert (data.double_value, data.timestamp) == (0.75, T0 + 9)


async def test_seq_wraps_at_256_and_rebirth_on_ncmd(mosquitto: Mosquitto) -> None:
    g = group()
    recorder = Recorder(mosquitto.url, f"spBv1.0/{g}/#")
    pub = publisher(mosquitto, g)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            for i in range(300):
                pub.publish("d", Reading.of("n", i))
            got = await recorder.wait_for(count("DDATA", 299))
            seqs = [decode(p).seq for _, p in got]
            assert seqs == [i % 256 for i in range(301)]
            assert [decode(p).metrics[0].long_value for _, p in got[2:]] == list(range(1, 300))
            request = pb.Payload(timestamp=T0)
            request.metrics.add(name="Node Control/Rebirth", boolean_value=True)
            recorder.publish(f"spBv1.0/{g}/NCMD/mill", request.SerializeToString())
            got = await recorder.wait_for(count("NBIRTH", 2))
            again = await recorder.wait_for(count("DBIRTH", 2))
            pub.close()
    finally:
        recorder.close()
    births = [(verb(t), decode(p)) for t, p in again if verb(t) in ("NBIRTH", "DBIRTH")]
    assert [(v, p.seq) for v, p in births] == [("NBIRTH", 0), ("DBIRTH", 1)] * 2
    assert bd_seq(again[0][1]) == bd_seq(again[-2][1]) == 0  # same session, same bdSeq
    assert births[-1][1].metrics[0].long_value == 299  # the latest value


async def test_close_sends_ndeath_and_cancel_lets_the_broker_send_it(
    mosquitto: Mosquitto,
) -> None:
    g = group()
    recorder = Recorder(mosquitto.url, f"spBv1.0/{g}/+/mill")
    try:
        pub = publisher(mosquitto, g)
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            pub.close()
        assert pub.status() == "closed"
        pub = publisher(mosquitto, g)
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            nursery.cancel_scope.cancel()
        got = await recorder.wait_for(count("NDEATH", 2))
        await trio.sleep(0.2)  # no second NDEATH for the clean close
        assert [verb(t) for t, _ in recorder.snapshot()] == ["NBIRTH", "NDEATH"] * 2
        assert [bd_seq(p) for _, p in got] == [0, 0, 0, 0]
    finally:
        recorder.close()


CHILD = """
import sys, trio
from agents.ot.sparkplug_bridge import SparkplugPublisher, SparkplugPublisherConfig
from mesh.readings import Reading

async def main():
    table = {"broker": sys.argv[1], "group": sys.argv[2], "node": "child"}
    pub = SparkplugPublisher(SparkplugPublisherConfig.from_table(table, "child"))
    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        await pub.wait_online()
        pub.publish("dev", Reading.of("x", 1.5))
        pub.publish("dev", Reading.of("x", 2.5))
        print("online", pub.node.bd_seq, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_ndeath_after_sigkill(mosquitto: Mosquitto) -> None:
    g = group()
    recorder = Recorder(mosquitto.url, f"spBv1.0/{g}/#")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mosquitto.url, g], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        with trio.fail_after(20):
            line = await trio.to_thread.run_sync(child.stdout.readline)
        assert line.split() == [b"online", b"0"]
        await recorder.wait_for(count("DDATA"))
        os.kill(child.pid, signal.SIGKILL)
        got = await recorder.wait_for(count("NDEATH"))
    finally:
        child.kill()
        child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
        recorder.close()
    assert [verb(t) for t, _ in got] == ["NBIRTH", "DBIRTH", "DDATA", "NDEATH"]
    assert got[3][0] == f"spBv1.0/{g}/NDEATH/child"
    assert bd_seq(got[3][1]) == bd_seq(got[0][1]) == 0
    assert not decode(got[3][1]).HasField("seq")


async def test_reconnect_rebirths_with_the_next_bdseq_and_history(
    own_mosquitto: Mosquitto,
) -> None:
    broker = own_mosquitto
    g = group()
    pub = publisher(broker, g, pending_limit=2)
    recorder: Recorder | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            pub.publish("d", Reading.of("x", 0.0))
            broker.stop()
            with trio.fail_after(5):
                while pub.status().startswith("online"):
                    await trio.sleep(0.01)
            for i in range(1, 5):
                pub.publish("d", Reading.of("x", float(i), source_ms=T0 + i))
            await trio.sleep(0.8)  # one failed attempt at 0.5 s; the next at 1.5 s
            broker.start(port=broker.port)
            recorder = Recorder(broker.url, f"spBv1.0/{g}/#")
            await recorder.wait_for(count("DDATA"))
            nursery.cancel_scope.cancel()  # the broker sends the Will
        got = await recorder.wait_for(count("NDEATH"))
    finally:
        if recorder is not None:
            recorder.close()
    assert [verb(t) for t, _ in got] == ["NBIRTH", "DBIRTH", "DDATA", "NDEATH"]
    assert bd_seq(got[0][1]) == bd_seq(got[3][1]) == 1  # failed TCP attempts do not count
    assert decode(got[1][1]).metrics[0].double_value == 4.0  # the birth has the latest
    (history,) = decode(got[2][1]).metrics
    assert (history.double_value, history.is_historical, history.timestamp) == (3.0, True, T0 + 3)
    stats = pub.statistics().node
    assert (stats.dropped, stats.bd_seq) == (2, 1)


async def test_source_reads_a_metric_and_asks_for_a_rebirth(mosquitto: Mosquitto) -> None:
    g = group()
    recorder = Recorder(mosquitto.url, f"spBv1.0/{g}/#")
    pub = publisher(mosquitto, g)
    table = {"broker": mosquitto.url, "group": g, "node": "mill", "device": "spindle"}
    source = SparkplugSource(SparkplugSourceConfig.from_table({**table, "metric": "load"}, "t"))
    order = b"order-1"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            pub.publish("spindle", Reading.of("temp", 40.0, "Cel"))
            pub.publish("spindle", Reading.of("load", 0.25, "%", source_ms=T0))
            pub.publish("other", Reading.of("load", 9.0))
            await recorder.wait_for(count("DBIRTH", 3))  # the broker has passed them on
            await nursery.start(source.run)  # after the births: it must ask for them
            await source.wait_subscribed()
            assert source.feed.take(order) is None
            pub.publish("spindle", Reading.of("load", 0.5, "%", source_ms=T0 + 1))
            with trio.fail_after(5):
                first = await source.feed.next(order)
            asks = [m for m in await recorder.wait_for(count("NCMD")) if verb(m[0]) == "NCMD"]
            pub.publish("spindle", Reading.of("load", 0.75, "%", source_ms=T0 + 2))
            pub.publish("spindle", Reading.of("temp", 41.0, "Cel"))
            pub.publish("spindle", Reading.of("load", 1.0, "%", quality=Quality.UNCERTAIN))
            with trio.fail_after(5):
                later = [await source.feed.next(order) for _ in range(2)]
            pub.device_death("spindle")
            with trio.fail_after(5):
                dead = await source.feed.next(order)
            nursery.cancel_scope.cancel()
    finally:
        recorder.close()
    assert [verb(t) for t, _ in asks] == ["NCMD"]
    (ask,) = decode(asks[0][1]).metrics
    assert (ask.name, ask.boolean_value) == ("Node Control/Rebirth", True)
    assert source.watch.rebirths_requested == 1
    assert (first.name, first.value, first.unit, first.source_ms) == ("load", 0.5, "%", T0 + 1)
    assert first.kind is Kind.FLOAT and first.quality is Quality.GOOD and first.agent_ms > 0
    assert [(r.value, r.quality) for r in later] == [
        (0.75, Quality.GOOD),
        (1.0, Quality.UNCERTAIN),
    ]
    assert (dead.value, dead.quality) == (1.0, Quality.BAD)
    assert "subscribed" in source.status() or "disconnected" in source.status()


async def test_source_marks_bad_when_the_node_dies(mosquitto: Mosquitto) -> None:
    g = group()
    pub = publisher(mosquitto, g)
    table: dict[str, object] = {
        "broker": mosquitto.url,
        "group": g,
        "node": "mill",
        "device": "d",
        "metric": "x",
    }
    source = SparkplugSource(SparkplugSourceConfig.from_table(table, "t"))
    async with trio.open_nursery() as outer:
        await outer.start(source.run)
        await source.wait_subscribed()
        async with trio.open_nursery() as nursery:
            await nursery.start(pub.run)
            await pub.wait_online()
            pub.publish("d", Reading.of("x", 3))
            with trio.fail_after(5):
                alive = await source.feed.next(b"o")
            nursery.cancel_scope.cancel()  # the broker sends the Will
        with trio.fail_after(5):
            dead = await source.feed.next(b"o")
        outer.cancel_scope.cancel()
    assert (alive.value, alive.quality, dead.value, dead.quality) == (
        3,
        Quality.GOOD,
        3,
        Quality.BAD,
    )
