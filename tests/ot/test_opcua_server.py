"""The agent's read-only OPC UA address space, browsed by an independent asyncua client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.ot.controller import free_port
from agents.ot.opcua_server import FeedView, OpcUaServerConfig, OpcUaSurface
from agents.ot.portal import AsyncioPortal
from mesh.readings import Kind, Quality, Reading
from tests.ot.opcua_fixtures import pytestmark

__all__ = ["pytestmark"]
SELLER = "02" + "ab" * 32
STATUS: dict[str, Any] = {
    "agent": "Robot Cell 3",
    "vendor": "ACME",
    "site": "plant-7",
    "network": "local-0011",
    "height": 812,
    "peer_id": "03" + "cd" * 32,
    "services": [{"id": "vision", "kind": "call", "unit": "call", "price": 40, "source": ""}],
    "channels": [
        {
            "channel_id": "ee" * 16,
            "state": "open",
            "role": "payer",
            "peer": SELLER,
            "paid": 1200,
            "capacity": 50_000,
            "expiry_height": 956,
        }
    ],
}
MEASURED = datetime(2026, 12, 6, 12, 0, 1, 250000, tzinfo=UTC)
READING = Reading("rms_velocity", 2.75, "mm/s", Quality.UNCERTAIN, 1_796_558_401_250, 1, Kind.FLOAT)


@asynccontextmanager
async def serving(
    config: OpcUaServerConfig, feeds: list[FeedView]
) -> AsyncIterator[tuple[OpcUaSurface, AsyncioPortal]]:
    async with AsyncioPortal.open() as portal, trio.open_nursery() as nursery:
        surface = OpcUaSurface(config, portal, lambda: STATUS, lambda: list(feeds))
        await nursery.start(surface.run)
        yield surface, portal
        nursery.cancel_scope.cancel()


def _config(**kw: Any) -> OpcUaServerConfig:
    return OpcUaServerConfig(endpoint=f"opc.tcp://127.0.0.1:{free_port('127.0.0.1')}/m2mesh", **kw)


async def _secured(tmp_path: Path) -> OpcUaServerConfig:
    """A Basic256Sha256 server config; self-signed server and client certificates and
    keys in `tmp_path` (``server-cert.der``, ``client-key.pem``, ...)."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    for who, use in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        await setup_self_signed_certificate(
            tmp_path / f"{who}-key.pem", tmp_path / f"{who}-cert.der", f"urn:m2mesh:{who}",
            "127.0.0.1", [use], {"commonName": f"m2mesh {who}"},
        )  # fmt: skip
    return _config(
        security="Basic256Sha256",
        certificate=tmp_path / "server-cert.der",
        private_key=tmp_path / "server-key.pem",
    )


async def _browse(endpoint: str, security: str = "") -> dict[str, Any]:
    """What an independent client sees: every variable under Objects/M2Mesh by path,
    and the DataValue of the first feed's Value; then a write it must be refused."""
    from asyncua import ua
    from asyncua.client.client import Client

    client = Client(endpoint)
    if security:
        await client.set_security_string(security)
    async with client:
        root = await client.nodes.objects.get_child(["2:M2Mesh"])
        seen: dict[str, Any] = {}

        async def walk(node: Any, path: str) -> None:
            for child in await node.get_children():
                name = (await child.read_browse_name()).Name
                if await child.read_node_class() == ua.NodeClass.Variable:
                    data = await child.read_data_value(raise_on_bad_status=False)
                    seen[f"{path}{name}"] = data.Value.Value
                    if name == "Value":
                        seen[f"{path}{name}:data"] = data
                        try:
                            await child.write_value(1.0)
                            seen["write"] = "accepted"
                        except ua.UaStatusCodeError as exc:
                            seen["write"] = type(exc).__name__
                else:
                    await walk(child, f"{path}{name}/")

        await walk(root, "")
        return seen


async def test_scada_browses_identity_services_feeds_and_channels_read_only() -> None:
    feeds = [FeedView("vibration", SELLER, 41, READING, anchored_seq=40)]
    async with serving(_config(), feeds) as (surface, _):
        seen = await trio.to_thread.run_sync(
            lambda: asyncio.run(
                _browse(surface.config.endpoint)
            )  # a client of its own, on an asyncio loop
        )
    feed = f"Feeds/vibration@{SELLER[:16]}/"
    assert seen["Identity/PeerId"] == STATUS["peer_id"] and seen["Identity/Height"] == 812
    assert (seen["Identity/Name"], seen["Identity/Site"]) == ("Robot Cell 3", "plant-7")
    assert seen["Services/vision/Price"] == 40 and seen["Services/vision/Kind"] == "call"
    assert seen[f"{feed}Value"] == 2.75 and seen[f"{feed}EngineeringUnit"] == "mm/s"
    data = seen[f"{feed}Value:data"]
    assert data.StatusCode.value == 0x40000000  # Uncertain, the reading's quality
    assert data.SourceTimestamp.replace(tzinfo=UTC) == MEASURED
    assert (seen[f"{feed}Seq"], seen[f"{feed}AnchoredSeq"], seen[f"{feed}Anchored"]) == (
        41, 40, False
    )  # fmt: skip
    assert seen[f"{feed}Seller"] == SELLER and seen[f"{feed}Quality"] == "uncertain"
    channel = f"Channels/{'ee' * 8}/"
    assert (seen[f"{channel}Paid"], seen[f"{channel}Capacity"]) == (1200, 50_000)
    assert seen[f"{channel}ExpiryHeight"] == 956 and seen[f"{channel}State"] == "open"
    assert seen["write"] in {"BadUserAccessDenied", "BadNotWritable"}


async def test_a_new_reading_shows_within_a_second() -> None:
    feeds = [FeedView("vibration", SELLER, 1, READING)]
    async with serving(_config(), feeds) as (surface, _):
        before = surface.refreshes
        feeds[0] = FeedView("vibration", SELLER, 2, Reading.of("rms_velocity", True))
        surface.changed()
        with trio.fail_after(1.0):
            while surface.refreshes == before:
                await trio.sleep(0.01)
        seen = await trio.to_thread.run_sync(lambda: asyncio.run(_browse(surface.config.endpoint)))
    assert seen[f"Feeds/vibration@{SELLER[:16]}/Value"] is True  # the type changed too


async def test_basic256sha256_serves_a_client_with_a_certificate(tmp_path: Path) -> None:
    config = await _secured(tmp_path)
    security = (
        f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'client-cert.der'},"
        f"{tmp_path / 'client-key.pem'}"
    )
    async with serving(config, []) as (surface, _):
        seen = await trio.to_thread.run_sync(
            lambda: asyncio.run(_browse(surface.config.endpoint, security))
        )
        assert seen["Identity/PeerId"] == STATUS["peer_id"]
        with pytest.raises(Exception, match=r"(?i)security|policy|endpoint|Bad"):
            await trio.to_thread.run_sync(lambda: asyncio.run(_browse(surface.config.endpoint)))


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"endpoint": "opc.tcp://0.0.0.0:4841/m2mesh"}, "is not loopback"),
        ({"endpoint": "opc.tcp://10.1.2.3:4841"}, "needs security"),
        ({"endpoint": "opc.tcp://127.0.0.1/x"}, "needs a host and a port"),
        ({"security": "Basic256Sha256"}, "needs certificate and private_key"),
        ({"port": 1}, "opcua_server.port: unknown key"),
    ],
)
def test_a_bad_server_table_is_refused(table: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=r"^opcua_server") as caught:
        OpcUaServerConfig.from_table(table, "opcua_server", Path("/p"))
    assert problem in str(caught.value)


async def test_a_source_reads_a_node_over_basic256sha256(tmp_path: Path) -> None:
    # The agent's own server under Basic256Sha256 is a secured OPC UA server like a
    # controller's: an OpcUaSource with a client certificate polls one of its nodes.
    from agents.ot.opcua_source import OpcUaSource, OpcUaSourceConfig

    server = await _secured(tmp_path)
    table = {
        "endpoint": server.endpoint,
        "node": "ns=2;s=Identity.Height",
        "mode": "poll",
        "interval": 0.05,
        "unit": "1",
        "security": "Basic256Sha256",
        "certificate": "client-cert.der",
        "private_key": "client-key.pem",
    }
    config = OpcUaSourceConfig.from_table(table, "services[0].opcua", tmp_path)
    async with serving(server, []) as (_, portal):
        source = OpcUaSource(config, portal)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            with trio.fail_after(20):
                while source.feed.latest() is None:
                    await trio.sleep(0.05)
            reading = source.feed.latest()
            assert reading is not None and (reading.name, reading.value) == ("Height", 812)
            assert source.status().startswith("connected")
            nursery.cancel_scope.cancel()
