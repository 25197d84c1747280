"""A data feed whose readings come from one node of a machine's OPC UA server.

Profile (``[services.opcua]`` of a data-feed service; `OpcUaSourceConfig.from_table`)::

    [services.opcua]
    endpoint = "opc.tcp://10.0.0.5:4840"   # the controller's server
    node = "ns=2;s=Spindle.Vibration"      # the variable to read
    mode = "subscribe"                     # or "poll"
    interval = 0.1                         # s: sampling (subscribe) or poll period
    name = "rms_velocity"                  # default: the node's browse name
    unit = "mm/s"                          # default: the node's EngineeringUnits
    security = "none"                      # or "Basic256Sha256" (Sign and encrypt)
    certificate = "client-cert.der"        # with Basic256Sha256: ours...
    private_key = "client-key.pem"         # ...and its key
    username = "m2mesh"                    # optional; password too
    password = "..."

`OpcUaSource.run` connects (asyncua, behind `agents.ot.portal`), subscribes to the node's
value (or reads it every ``interval``), and publishes each value on its `ChangeFeed` as a
`Reading`: the value typed (Boolean -> bool, integers -> int, Float/Double -> float,
String -> str, arrays of those -> arrays; a DateTime or LocalizedText as text), the
server's StatusCode severity as quality (a Bad value without data keeps the last value,
quality bad), its SourceTimestamp (else ServerTimestamp) as the source time. The
connection is watched (the server's state read every second); when it is lost the source
says so in `status()`, publishes nothing (so the feed delivers and bills nothing), and
tries again after 0.5 s, doubling to 30 s. (docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from agents.ot import certificate_paths, check_keys
from agents.ot.portal import AsyncioPortal
from agents.ot.source import ChangeFeed
from mesh.readings import MAX_UNIT, Quality, Reading, ReadingError, kind_of, now_ms

log = logging.getLogger("agents.ot.opcua")
MODES = ("subscribe", "poll")
SECURITY = ("none", "Basic256Sha256")
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
WATCH_INTERVAL = 1.0
"""Seconds between two checks that the server still answers."""


@dataclass(frozen=True)
class OpcUaSourceConfig:
    """Where a feed's readings come from (see the module docstring)."""

    endpoint: str
    node: str
    mode: str = "subscribe"
    interval: float = 0.1
    name: str = ""
    unit: str | None = None
    security: str = "none"
    certificate: Path | None = None
    private_key: Path | None = None
    username: str = ""
    password: str = ""

    @classmethod
    def from_table(cls, table: dict[str, object], where: str, base: Path) -> OpcUaSourceConfig:
        """The config a profile's table gives (paths relative to `base`); raises
        ValueError("KEY: PROBLEM") naming the key."""
        check_keys(table, sorted(cls.__dataclass_fields__), where)

        def text(key: str, default: str | None = None) -> str:
            value = table.get(key, default)
            if not isinstance(value, str) or (default is None and not value):
                raise ValueError(f"{where}.{key}: a non-empty string is required")
            return value

        endpoint = text("endpoint")
        if not endpoint.startswith("opc.tcp://"):
            raise ValueError(f"{where}.endpoint: {endpoint!r} is not an opc.tcp:// URL")
        mode = text("mode", "subscribe")
        if mode not in MODES:
            raise ValueError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
        interval = table.get("interval", 0.1)
        if type(interval) not in (int, float) or not 0.001 <= float(interval) <= 3600:  # type: ignore[arg-type]
            raise ValueError(f"{where}.interval: seconds between 0.001 and 3600")
        security = text("security", "none")
        if security not in SECURITY:
            raise ValueError(f"{where}.security: {security!r} is not one of {', '.join(SECURITY)}")
        certificate, private_key = certificate_paths(table, where, base, security)
        unit = table.get("unit")
        if unit is not None and (not isinstance(unit, str) or len(unit) > MAX_UNIT):
            raise ValueError(f"{where}.unit: a UCUM code of at most {MAX_UNIT} characters")
        return cls(
            endpoint=endpoint,
            node=text("node"),
            mode=mode,
            interval=float(interval),  # type: ignore[arg-type]
            name=text("name", ""),
            unit=unit,
            security=security,
            certificate=certificate,
            private_key=private_key,
            username=text("username", ""),
            password=text("password", ""),
        )


def quality_of(status: int) -> Quality:
    """An OPC UA StatusCode's severity (its top two bits) as a reading quality."""
    severity = (status >> 30) & 0b11
    return Quality.GOOD if severity == 0 else Quality.UNCERTAIN if severity == 1 else Quality.BAD


def plain_value(value: object) -> object:
    """An OPC UA variant's Python value as a reading can carry it (None: no value)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [plain_value(v) for v in value]
        if all(type(v) is bool for v in items) or all(type(v) is float for v in items):
            return tuple(items)
        if all(type(v) is int for v in items):
            return tuple(items)
        if all(isinstance(v, int | float) and type(v) is not bool for v in items):
            return tuple(float(v) for v in items)  # type: ignore[arg-type]
        return str(items)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    text = getattr(value, "Text", None)  # LocalizedText, QualifiedName-like
    return text if isinstance(text, str) else str(value)


def stamp_ms(stamp: datetime | None) -> int | None:
    """A DataValue timestamp (naive UTC in asyncua, or aware) as ms since the epoch."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    ms = int(stamp.timestamp() * 1000)
    return ms if ms > 0 else None


class OpcUaSource:
    """One OPC UA node as a feed's source (see the module docstring)."""

    def __init__(
        self, config: OpcUaSourceConfig, portal: AsyncioPortal, *, feed: ChangeFeed | None = None
    ) -> None:
        self.config = config
        self.feed = feed if feed is not None else ChangeFeed()
        self._portal = portal
        self._status = "not connected yet"
        self._name = config.name
        self._unit = config.unit or ""
        self._last: Reading | None = None
        self.connects = 0

    def status(self) -> str:
        """Connected or not, and why (one line)."""
        return self._status

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a session with the server and publish its values, until cancelled."""
        task_status.started()
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._portal.run(self._session)
            except Exception as exc:  # asyncua raises many kinds; each is "not connected"
                why = str(exc) or type(exc).__name__
                if self._status.startswith("connected"):
                    log.warning("opc.ua %s: connection lost: %s", self.config.endpoint, why)
                    delay = BACKOFF_FIRST
                self._status = f"disconnected: {why} (next try in {delay:g} s)"
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    # ------------------------------------------------------------- asyncio side

    async def _session(self) -> None:
        from asyncua import ua
        from asyncua.client.client import Client

        c = self.config
        client = Client(c.endpoint, timeout=4)
        if c.security != "none":
            await client.set_security_string(
                f"{c.security},SignAndEncrypt,{c.certificate},{c.private_key}"
            )
        if c.username:
            client.set_user(c.username)
            client.set_password(c.password)
        await client.connect()
        try:
            node = client.get_node(c.node)
            await self._describe(node, ua)
            self.connects += 1
            self._status = f"connected to {c.endpoint}, {c.mode} {c.node}"
            log.info("opc.ua %s: %s", c.endpoint, self._status)
            if c.mode == "subscribe":
                handler = _Changes(self)
                subscription = await client.create_subscription(c.interval * 1000, handler)
                await subscription.subscribe_data_change(
                    node, queuesize=1000, sampling_interval=ua.Double(c.interval * 1000)
                )
                while True:
                    await asyncio.sleep(WATCH_INTERVAL)
                    await asyncio.wait_for(client.nodes.server_state.read_value(), 4)
            else:
                while True:
                    self.take(await node.read_data_value())
                    await asyncio.sleep(c.interval)
        finally:
            self._status = "disconnected"
            try:
                await asyncio.wait_for(client.disconnect(), 2)
            except Exception as exc:  # the server may be gone: nothing to say goodbye to
                log.debug("opc.ua disconnect: %s", exc)

    async def _describe(self, node: Any, ua: Any) -> None:
        """The reading's name and unit: the profile's, else the node's own."""
        if not self._name:
            browse = await node.read_browse_name()
            self._name = str(browse.Name) or self.config.node
        if self.config.unit is None:
            try:
                prop = await node.get_child("0:EngineeringUnits")
                info = await prop.read_value()
                text = str(getattr(info.DisplayName, "Text", "") or "")
            except ua.UaError:
                text = ""
            self._unit = text if text.isascii() and " " not in text else ""

    def take(self, data: Any) -> None:
        """One DataValue from the server (asyncio thread): its reading, to Trio."""
        reading = self.reading_of(data)
        if reading is not None:
            self._last = reading  # asyncio thread only
            self._portal.to_trio(self.feed.publish, reading)

    def reading_of(self, data: Any) -> Reading | None:
        """A DataValue as a `Reading` (None: nothing a reading can carry)."""
        status = int(data.StatusCode.value) if data.StatusCode is not None else 0
        quality = quality_of(status)
        source = stamp_ms(data.SourceTimestamp) or stamp_ms(data.ServerTimestamp) or now_ms()
        value = plain_value(data.Value.Value if data.Value is not None else None)
        if value is None:
            last = self._last
            if quality is Quality.GOOD:
                return None  # a good status without a value says nothing
            value = last.value if last is not None else math.nan
        try:
            kind = kind_of(value)
            return Reading(self._name, value, self._unit, quality, source, 0, kind)  # type: ignore[arg-type]
        except ReadingError as exc:
            log.warning("opc.ua %s: value not taken: %s", self.config.node, exc)
            return None


class _Changes:
    """asyncua's data-change callback, on the asyncio thread."""

    def __init__(self, source: OpcUaSource) -> None:
        self._source = source

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self._source.take(data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        """The server ended the subscription: the watch loop finds out and reconnects."""
        log.info("opc.ua subscription status: %s", status)


__all__ = [
    "MODES",
    "SECURITY",
    "OpcUaSource",
    "OpcUaSourceConfig",
    "plain_value",
    "quality_of",
    "stamp_ms",
]
