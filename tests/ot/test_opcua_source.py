"""An OPC UA node as a feed's source, against a real asyncua server on loopback."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from agents.ot.controller import ControllerServer, node_id
from agents.ot.opcua_source import OpcUaSource, OpcUaSourceConfig, plain_value, quality_of
from agents.ot.portal import AsyncioPortal
from mesh.readings import Kind, Quality, Reading
from tests.ot.opcua_fixtures import controller, pytestmark

__all__ = ["pytestmark"]
BAD = 0x80000000  # Bad
UNCERTAIN = 0x40000000


async def _until(condition: object, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.02)


def _drain(source: OpcUaSource, order: bytes = b"order") -> list[Reading]:
    got = []
    while (reading := source.feed.take(order)) is not None:
        got.append(reading)
    return got


async def test_subscribed_values_arrive_typed_with_unit_quality_and_source_time() -> None:
    async with controller() as (server, portal):
        assert isinstance(server, ControllerServer) and isinstance(portal, AsyncioPortal)
        config = OpcUaSourceConfig(server.endpoint, node_id("Vibration"), interval=0.01)
        source = OpcUaSource(config, portal)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            await _until(lambda: source.feed.published >= 1)  # the value it had
            assert source.status().startswith("connected")
            source.feed.take(b"order")  # this order starts here
            measured = datetime(2026, 12, 6, 12, 0, 0, 123000, tzinfo=UTC)
            await server.set("Vibration", 4.25, source_time=measured)
            await server.set("Vibration", 4.5, status=UNCERTAIN)
            await server.set("Vibration", None, status=BAD)  # a bad value without data
            await _until(lambda: source.feed.published >= 4)
            first, second, third = _drain(source)
            assert first == Reading(
                "Vibration", 4.25, "mm/s", Quality.GOOD, 1_796_558_400_123, 0, Kind.FLOAT
            )
            assert (second.value, second.quality) == (4.5, Quality.UNCERTAIN)
            assert (third.value, third.quality) == (4.5, Quality.BAD)  # the last value, bad
            nursery.cancel_scope.cancel()


async def test_the_profile_names_the_reading_and_poll_mode_reads_ints_and_bools() -> None:
    async with controller() as (server, portal):
        assert isinstance(server, ControllerServer) and isinstance(portal, AsyncioPortal)
        await server.set("PartCount", 41)
        config = OpcUaSourceConfig(
            server.endpoint, node_id("PartCount"), mode="poll", interval=0.05,
            name="parts", unit="1",
        )  # fmt: skip
        source = OpcUaSource(config, portal)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            await _until(lambda: source.feed.published >= 2)
            reading = source.feed.latest()
            assert reading is not None
            assert (reading.name, reading.value, reading.kind, reading.unit) == (
                "parts", 41, Kind.INT, "1"
            )  # fmt: skip
            nursery.cancel_scope.cancel()


async def test_a_lost_server_delivers_nothing_and_the_source_reconnects() -> None:
    async with controller() as (server, portal):
        assert isinstance(server, ControllerServer) and isinstance(portal, AsyncioPortal)
        config = OpcUaSourceConfig(server.endpoint, node_id("Vibration"), interval=0.01)
        source = OpcUaSource(config, portal)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            await _until(lambda: source.feed.published >= 1)
            await server.stop()
            await _until(lambda: source.status().startswith("disconnected"), 15)
            published = source.feed.published
            await trio.sleep(1.0)
            assert source.feed.published == published  # nothing while it is gone
            await server.start()  # the same port
            await _until(lambda: source.connects == 2, 30)
            await server.set("Vibration", 9.5)
            await _until(lambda: (r := source.feed.latest()) is not None and r.value == 9.5)
            nursery.cancel_scope.cancel()


async def test_cancelling_the_source_ends_its_session_cleanly() -> None:
    async with controller() as (server, portal):
        assert isinstance(server, ControllerServer) and isinstance(portal, AsyncioPortal)
        source = OpcUaSource(OpcUaSourceConfig(server.endpoint, node_id("Running")), portal)
        with trio.move_on_after(2):
            await source.run()
        assert source.status() == "disconnected"


def test_status_severity_and_values_map_to_readings() -> None:
    assert [quality_of(s) for s in (0, 0x00A80000, UNCERTAIN, BAD, 0xC0000000)] == [
        Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD
    ]  # fmt: skip
    assert plain_value([1, 2]) == (1, 2) and plain_value([1, 2.5]) == (1.0, 2.5)
    assert plain_value(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"
    assert math.isnan(float(plain_value(math.nan)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"node": "ns=2;s=X"}, "s.opcua.endpoint: a non-empty string is required"),
        ({"endpoint": "http://x", "node": "n"}, "is not an opc.tcp:// URL"),
        ({"endpoint": "opc.tcp://h:1", "node": "n", "mode": "push"}, "s.opcua.mode: 'push'"),
        ({"endpoint": "opc.tcp://h:1", "node": "n", "interval": 0}, "s.opcua.interval"),
        ({"endpoint": "opc.tcp://h:1", "node": "n", "nod": 1}, "s.opcua.nod: unknown key"),
        (
            {"endpoint": "opc.tcp://h:1", "node": "n", "security": "Basic256Sha256"},
            "needs certificate and private_key",
        ),
    ],
)
def test_a_bad_table_is_one_line_naming_the_key(table: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=r"^s\.opcua") as caught:
        OpcUaSourceConfig.from_table(table, "s.opcua", Path("/p"))
    assert problem in str(caught.value) and "\n" not in str(caught.value)
