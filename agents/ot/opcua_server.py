"""The agent as an OPC UA server: what SCADA and UaExpert browse, read-only.

Profile::

    [opcua_server]
    endpoint = "opc.tcp://127.0.0.1:4841/m2mesh"   # the default: loopback only
    security = "none"                              # or "Basic256Sha256" (sign and encrypt)
    certificate = "server-cert.der"                # with Basic256Sha256: the server's...
    private_key = "server-key.pem"                 # ...certificate and key

An endpoint off loopback needs ``security = "Basic256Sha256"`` (the profile is refused
otherwise). Every variable is read-only (no Write access level); nothing can be changed,
called or paid through it.

The address space, in namespace ``urn:m2mesh:agent`` (string node ids, shown here with
their browse path under ``Objects/M2Mesh``):

- ``Identity``: ``PeerId``, ``Name``, ``Vendor``, ``Site``, ``Network`` (strings);
  ``Height`` (Int64, the chain height the agent sees);
- ``Services/<id>``: ``Kind``, ``Unit`` (what one unit is), ``Price`` (Int64 sat per
  unit), ``Source`` (``opcua``/``sparkplug`` or the handler);
- ``Feeds/<service>@<seller 16 hex>``: the latest verified reading of every feed the agent
  buys: ``Value`` (its typed value; the variable's DataValue carries the reading's source
  time and its quality as StatusCode Good/Uncertain/Bad), ``Name``, ``EngineeringUnit``,
  ``Quality``, ``SourceTime`` (DateTime), ``Seller``, ``Seq`` (Int64, in the seller's
  signed log), ``Anchored`` (Boolean: that reading's record is proven on chain) and
  ``AnchoredSeq`` (Int64, the highest seq of the stream proven; -1 none yet);
- ``Channels/<channel id 16 hex>``: ``State``, ``Role`` (payer/payee), ``Peer``,
  ``Paid`` and ``Capacity`` (Int64 sat), ``ExpiryHeight`` (Int64).

`OpcUaSurface.run` starts the server (asyncua, behind `agents.ot.portal`) and refreshes it
from the agent's `status()` every `REFRESH` seconds, and at once (at most every 0.1 s)
when a bought reading arrives: at most a second behind. (docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import trio

from agents.ot import certificate_paths, check_keys
from agents.ot.portal import AsyncioPortal
from mesh.readings import Kind, Quality, Reading

log = logging.getLogger("agents.ot.opcua")
NAMESPACE = "urn:m2mesh:agent"
DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4841/m2mesh"
REFRESH = 1.0
QUICK = 0.1
_STATUS = {Quality.GOOD: 0, Quality.UNCERTAIN: 0x40000000, Quality.BAD: 0x80000000}


@dataclass(frozen=True)
class OpcUaServerConfig:
    """Where the agent's address space is served (see the module docstring)."""

    endpoint: str = DEFAULT_ENDPOINT
    security: str = "none"
    certificate: Path | None = None
    private_key: Path | None = None

    @classmethod
    def from_table(cls, table: dict[str, object], where: str, base: Path) -> OpcUaServerConfig:
        """The config of a profile's ``[opcua_server]``; ValueError("KEY: PROBLEM")."""
        check_keys(table, sorted(cls.__dataclass_fields__), where)
        endpoint = table.get("endpoint", DEFAULT_ENDPOINT)
        if not isinstance(endpoint, str) or not endpoint.startswith("opc.tcp://"):
            raise ValueError(f"{where}.endpoint: {endpoint!r} is not an opc.tcp:// URL")
        url = urlparse(endpoint)
        if not url.hostname or url.port is None:
            raise ValueError(f"{where}.endpoint: {endpoint!r} needs a host and a port")
        security = table.get("security", "none")
        if security not in ("none", "Basic256Sha256"):
            raise ValueError(f"{where}.security: {security!r} is not none or Basic256Sha256")
        certificate, private_key = certificate_paths(table, where, base, str(security))
        if security == "none" and not _loopback(url.hostname):
            raise ValueError(
                f"{where}.endpoint: {url.hostname} is not loopback: serving the plant's "
                'network needs security = "Basic256Sha256" with a certificate'
            )
        return cls(endpoint, str(security), certificate, private_key)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class FeedView:
    """The latest verified reading of one bought feed."""

    service: str
    seller: str
    seq: int
    reading: Reading
    anchored_seq: int | None = None

    @property
    def key(self) -> str:
        """Its folder's name: ``<service>@<seller 16 hex>``."""
        return f"{self.service}@{self.seller[:16]}"


class OpcUaSurface:
    """Serves the agent's address space and keeps it current (module docstring)."""

    def __init__(
        self,
        config: OpcUaServerConfig,
        portal: AsyncioPortal,
        status: Callable[[], dict[str, Any]],
        feeds: Callable[[], list[FeedView]],
    ) -> None:
        self.config = config
        self._portal = portal
        self._status = status
        self._feeds = feeds
        self._space = _AddressSpace(config)
        self._wake = trio.Event()
        self.refreshes = 0

    def changed(self) -> None:
        """A bought reading arrived: refresh soon (from Trio)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (the server stops with the task)."""
        await self._portal.run(self._space.start)
        log.info("opc.ua server at %s (%s)", self.config.endpoint, self.config.security)
        try:
            while True:
                await self._portal.run(self._space.update, self._status(), self._feeds())
                if self.refreshes == 0:
                    task_status.started()  # the address space is there, filled once
                self.refreshes += 1
                with trio.move_on_after(REFRESH):
                    await self._wake.wait()
                    await trio.sleep(QUICK)  # readings come in bursts: one refresh each
                self._wake = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await self._portal.run(self._space.stop)


class _AddressSpace:
    """The asyncua server and its variables (asyncio thread only)."""

    def __init__(self, config: OpcUaServerConfig) -> None:
        self.config = config
        self.server: Any = None
        self.index = 0
        self.folders: dict[str, Any] = {}
        self.variables: dict[str, Any] = {}
        self.written: dict[str, object] = {}

    async def start(self) -> None:
        from asyncua import ua
        from asyncua.server.server import Server

        server = Server()
        await server.init()
        server.set_endpoint(self.config.endpoint)
        server.set_server_name("m2mesh agent")
        if self.config.security == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.config.certificate))
            await server.load_private_key(str(self.config.private_key))
        self.index = await server.register_namespace(NAMESPACE)
        root = await server.nodes.objects.add_object(self._id("M2Mesh"), self._name("M2Mesh"))
        self.folders[""] = root
        for name in ("Identity", "Services", "Feeds", "Channels"):
            self.folders[name] = await root.add_folder(self._id(name), self._name(name))
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    def _id(self, path: str) -> Any:
        from asyncua import ua

        return ua.NodeId(ua.String(path), ua.Int16(self.index))

    def _name(self, name: str) -> str:
        """A browse name in our namespace."""
        return f"{self.index}:{name}"

    async def _folder(self, parent: str, name: str) -> Any:
        path = f"{parent}.{name}"
        if path not in self.folders:
            self.folders[path] = await self.folders[parent].add_object(
                self._id(path), self._name(name)
            )
        return self.folders[path]

    async def _put(self, folder: str, name: str, value: object, kind: str) -> None:
        """Create or write one read-only variable (only when its value changed)."""
        from asyncua import ua

        path = f"{folder}.{name}"
        if self.written.get(path, _UNSET) == value:
            return
        variant = ua.Variant(value, getattr(ua.VariantType, kind))
        variable = self.variables.get(path)
        if variable is None:
            parent = self.folders[folder]
            variable = await parent.add_variable(self._id(path), self._name(name), variant)
            self.variables[path] = variable
        else:
            await variable.write_value(variant)
        self.written[path] = value

    async def update(self, status: dict[str, Any], feeds: list[FeedView]) -> None:
        for name, key in (("PeerId", "peer_id"), ("Name", "agent"), ("Site", "site")):
            await self._put("Identity", name, str(status.get(key) or ""), "String")
        await self._put("Identity", "Vendor", str(status.get("vendor") or ""), "String")
        await self._put("Identity", "Network", str(status.get("network") or ""), "String")
        await self._put("Identity", "Height", int(status.get("height") or -1), "Int64")
        for service in status.get("services", []):
            folder = await self._folder("Services", str(service["id"]))
            del folder
            where = f"Services.{service['id']}"
            await self._put(where, "Kind", str(service["kind"]), "String")
            await self._put(where, "Unit", str(service["unit"]), "String")
            await self._put(where, "Price", int(service["price"]), "Int64")
            await self._put(where, "Source", str(service.get("source", "")), "String")
        for feed in feeds:
            await self._feed(feed)
        for channel in status.get("channels", []):
            cid = str(channel.get("channel_id", ""))[:16]
            await self._folder("Channels", cid)
            where = f"Channels.{cid}"
            await self._put(where, "State", str(channel.get("state", "")), "String")
            await self._put(where, "Role", str(channel.get("role", "")), "String")
            await self._put(where, "Peer", str(channel.get("peer", "")), "String")
            await self._put(where, "Paid", int(channel.get("paid") or 0), "Int64")
            await self._put(where, "Capacity", int(channel.get("capacity") or 0), "Int64")
            expiry = channel.get("expiry_height")
            await self._put(where, "ExpiryHeight", -1 if expiry is None else int(expiry), "Int64")

    async def _feed(self, feed: FeedView) -> None:
        from asyncua import ua

        await self._folder("Feeds", feed.key)
        where = f"Feeds.{feed.key}"
        r = feed.reading
        source = datetime.fromtimestamp(r.source_ms / 1000, UTC)
        value_path = f"{where}.Value"
        written = (r.value, r.kind, r.quality, r.source_ms)
        if self.written.get(value_path, _UNSET) != written:
            variant = ua.Variant(_ua_value(r), _variant_type(r.kind))
            data = ua.DataValue(
                variant,
                StatusCode=ua.StatusCode(ua.UInt32(_STATUS[r.quality])),
                SourceTimestamp=cast(Any, source),
                ServerTimestamp=cast(Any, datetime.now(UTC)),
            )
            variable = self.variables.get(value_path)
            if variable is None or self.written.get(f"{value_path}.kind") != r.kind:
                if variable is not None:  # the seller changed the value's type
                    await self.server.delete_nodes([variable])
                variable = await self.folders[where].add_variable(
                    self._id(value_path), self._name("Value"), variant
                )
                self.variables[value_path] = variable
                self.written[f"{value_path}.kind"] = r.kind
            await variable.write_value(data)
            self.written[value_path] = written
        await self._put(where, "Name", r.name, "String")
        await self._put(where, "EngineeringUnit", r.unit, "String")
        await self._put(where, "Quality", r.quality.label, "String")
        await self._put(where, "SourceTime", source, "DateTime")
        await self._put(where, "Seller", feed.seller, "String")
        await self._put(where, "Seq", feed.seq, "Int64")
        anchored = feed.anchored_seq is not None and feed.anchored_seq >= feed.seq
        await self._put(where, "Anchored", anchored, "Boolean")
        seq = -1 if feed.anchored_seq is None else feed.anchored_seq
        await self._put(where, "AnchoredSeq", seq, "Int64")


_UNSET = object()


def _variant_type(kind: Kind) -> Any:
    from asyncua import ua

    return {
        Kind.BOOL: ua.VariantType.Boolean,
        Kind.INT: ua.VariantType.Int64,
        Kind.FLOAT: ua.VariantType.Double,
        Kind.STRING: ua.VariantType.String,
    }[kind.element]


def _ua_value(reading: Reading) -> object:
    return list(reading.value) if reading.kind.is_array else reading.value  # type: ignore[arg-type]


__all__ = ["DEFAULT_ENDPOINT", "NAMESPACE", "FeedView", "OpcUaServerConfig", "OpcUaSurface"]
