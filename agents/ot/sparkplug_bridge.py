"""Sparkplug B over MQTT from Trio: an edge node that publishes readings, and a source.

The protocol lives in the sans-IO cores (`agents.ot.sparkplug.EdgeNode`,
`agents.ot.sparkplug_host.DeviceWatch`); MQTT in `agents.ot.mqtt`. These shells only
move messages between them and take the time.

Profile tables (`SparkplugPublisherConfig.from_table`, `SparkplugSourceConfig.from_table`)::

    broker = "mqtt://10.0.0.2:1883"   # port 1883 when left out
    group = "plant-1"                 # Sparkplug group id
    node = "cnc-mill"                 # edge node id
    username = "m2mesh"               # optional; password too
    password = "..."
    device = "spindle"                # the source only: the device...
    metric = "rms_velocity"           # ...and its metric, whose readings the feed carries

`SparkplugPublisher` is the agent as an edge node: `run` connects with the NDEATH Will,
subscribes to its commands, sends the NBIRTH and a DBIRTH per device, and answers a
Rebirth NCMD; `publish(device, reading)` sends a DDATA (a DBIRTH first when the device or
metric is new) and never blocks. It keeps the latest reading per metric and, while
offline, at most `pending_limit` older ones (the oldest dropped, counted), sent as
historical data after the next births. Cancelled, it drops the connection and the broker
publishes the NDEATH; `close` publishes the NDEATH itself and disconnects.

`SparkplugSource` is an `agents.ot.source.ReadingSource`: it subscribes to the node's
births and deaths and the device's births, data and deaths, and publishes the metric's
readings on its `ChangeFeed` (a bad-quality copy when the device or node dies; nothing
while disconnected); it asks for a rebirth when data comes before a birth.
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from agents.ot import check_keys
from agents.ot.mqtt import BrokerUrl, Message, MqttClient, MqttError, MqttOptions, MqttStatistics
from agents.ot.source import ChangeFeed
from agents.ot.sparkplug import (
    EdgeNode,
    EdgeNodeStatistics,
    NodeState,
    Outgoing,
    SparkplugError,
    SparkplugPayloadError,
    check_id,
)
from agents.ot.sparkplug_host import DeviceWatch
from mesh.readings import MAX_NAME, Reading, now_ms

log = logging.getLogger("agents.ot.sparkplug")
Clock = Callable[[], int]


def _text(table: dict[str, object], where: str, key: str, *, required: bool = True) -> str:
    value = table.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        got = "nothing" if value is None else f"{type(value).__name__} {value!r}"
        raise ValueError(
            f"{where}.{key}: expected {'non-empty ' if required else ''}text, got {got}"
        )
    return value


def _id(table: dict[str, object], where: str, key: str) -> str:
    value = _text(table, where, key)
    try:
        return check_id(key, value)
    except SparkplugError as exc:
        raise ValueError(f"{where}.{key}: {exc}") from None


def _common(
    table: dict[str, object], where: str, known: tuple[str, ...]
) -> tuple[BrokerUrl, str, str, str, str]:
    check_keys(table, known, where)
    url = _text(table, where, "broker")
    try:
        broker = BrokerUrl.parse(url)
    except ValueError as exc:
        raise ValueError(f"{where}.broker: {exc}") from None
    username = _text(table, where, "username", required=False)
    password = _text(table, where, "password", required=False)
    if password and not username:
        raise ValueError(f"{where}.password: given without a username")
    return broker, _id(table, where, "group"), _id(table, where, "node"), username, password


@dataclass(frozen=True)
class SparkplugPublisherConfig:
    """Where an edge node publishes (see the module docstring)."""

    broker: BrokerUrl
    group: str
    node: str
    username: str = ""
    password: str = ""

    KEYS = ("broker", "group", "node", "username", "password")

    @classmethod
    def from_table(cls, table: dict[str, object], where: str) -> SparkplugPublisherConfig:
        """The config a profile's table gives; `ValueError("WHERE.KEY: problem")`."""
        broker, group, node, username, password = _common(table, where, cls.KEYS)
        return cls(broker, group, node, username, password)

    def mqtt_options(self) -> MqttOptions:
        """How to reach the broker."""
        return MqttOptions(self.broker, username=self.username, password=self.password)


@dataclass(frozen=True)
class SparkplugSourceConfig:
    """Which metric of which device a source reads (see the module docstring)."""

    broker: BrokerUrl
    group: str
    node: str
    device: str
    metric: str
    username: str = ""
    password: str = ""

    KEYS = ("broker", "group", "node", "device", "metric", "username", "password")

    @classmethod
    def from_table(cls, table: dict[str, object], where: str) -> SparkplugSourceConfig:
        """The config a profile's table gives; `ValueError("WHERE.KEY: problem")`."""
        broker, group, node, username, password = _common(table, where, cls.KEYS)
        device, metric = _id(table, where, "device"), _text(table, where, "metric")
        if len(metric) > MAX_NAME:
            raise ValueError(f"{where}.metric: longer than {MAX_NAME} characters")
        return cls(broker, group, node, device, metric, username, password)

    def mqtt_options(self) -> MqttOptions:
        """How to reach the broker."""
        return MqttOptions(self.broker, username=self.username, password=self.password)


@dataclass(frozen=True)
class SparkplugPublisherStatistics:
    """A snapshot of a publisher's counters."""

    node: EdgeNodeStatistics
    mqtt: MqttStatistics
    unsent_dropped: int
    """Messages lost because the connection went or its send queue was full."""
    bad_commands: int


class SparkplugPublisher:
    """The agent as a Sparkplug edge node (see the module docstring)."""

    def __init__(
        self, config: SparkplugPublisherConfig, *, pending_limit: int = 1024, clock: Clock = now_ms
    ) -> None:
        self.config = config
        self.node = EdgeNode(config.group, config.node, pending_limit=pending_limit)
        self.client = MqttClient(config.mqtt_options())
        self._clock = clock
        self._online = trio.Event()
        self._stop = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._status = "not started"
        self.unsent_dropped = self.bad_commands = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the edge node's session until `close` (started at once)."""
        if self._stop.is_set():
            task_status.started()
            return
        with trio.CancelScope() as self._scope:
            self._status = f"connecting to {self.config.broker}"
            await self.client.run(
                self._session, will=self._will, on_down=self._down, task_status=task_status
            )
        self._status = "closed"

    def publish(self, device: str, reading: Reading) -> None:
        """Send `reading` of `device` (a DDATA, after a DBIRTH if new); never blocks.
        Offline, it waits for the next births (`SparkplugError` for a bad device id)."""
        self._send(self.node.update(device, reading, self._clock()))

    def device_death(self, device: str) -> None:
        """`device` went away: its DDEATH (its next reading births it again)."""
        self._send(self.node.device_death(device, self._clock()))

    def close(self) -> None:
        """Leave: the NDEATH, then DISCONNECT; `run` returns."""
        self._stop.set()
        if self.node.state is not NodeState.ONLINE and self._scope is not None:
            self._scope.cancel()

    async def wait_online(self) -> None:
        """Wait until the births of the current session are out."""
        await self._online.wait()

    def status(self) -> str:
        """One line: online or not, and why."""
        return self._status

    def statistics(self) -> SparkplugPublisherStatistics:
        """The counters now."""
        return SparkplugPublisherStatistics(
            self.node.statistics(), self.client.statistics(), self.unsent_dropped, self.bad_commands
        )

    def _will(self) -> Message:
        will = self.node.connect(self._clock())
        return Message(will.topic, will.payload, will.qos, will.retain)

    def _down(self, error: MqttError) -> None:
        self.node.lost(connect_sent=error.connect_sent)
        if self._online.is_set():
            self._online = trio.Event()
        self._status = f"offline: {error}"
        log.info("sparkplug edge node %s/%s %s", self.config.group, self.config.node, self._status)
        if self._stop.is_set() and self._scope is not None:
            self._scope.cancel()

    async def _session(self, client: MqttClient) -> None:
        commands = await client.subscribe(*self.node.subscriptions(), qos=1)
        self._send(self.node.connected(self._clock()))
        self._status = f"online at {self.config.broker} (bdSeq {self.node.bd_seq})"
        self._online.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer, commands)
            await self._stop.wait()
            nursery.cancel_scope.cancel()
        self._send([self.node.death(self._clock())])  # then run() disconnects

    async def _answer(self, commands: trio.MemoryReceiveChannel[Message]) -> None:
        async for message in commands:
            try:
                self._send(self.node.receive(message.topic, message.payload, self._clock()))
            except SparkplugPayloadError as exc:
                self.bad_commands += 1
                log.warning("sparkplug: ignored a command on %s: %s", message.topic, exc)

    def _send(self, messages: list[Outgoing]) -> None:
        for out in messages:
            try:
                self.client.publish_nowait(out.topic, out.payload, out.qos, out.retain)
            except (MqttError, trio.WouldBlock):
                self.unsent_dropped += 1  # the next births carry the latest values


class SparkplugSource:
    """A feed of one Sparkplug metric (see the module docstring)."""

    def __init__(
        self,
        config: SparkplugSourceConfig,
        *,
        feed: ChangeFeed | None = None,
        clock: Clock = now_ms,
        rebirth_interval_ms: int = 5000,
    ) -> None:
        self.config = config
        self.feed = feed if feed is not None else ChangeFeed()
        self.watch = DeviceWatch(
            config.group,
            config.node,
            config.device,
            config.metric,
            rebirth_interval_ms=rebirth_interval_ms,
        )
        self.client = MqttClient(config.mqtt_options())
        self._clock = clock
        self._subscribed = trio.Event()
        self._status = "not started"
        self.bad_messages = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, keep connected (back-off between attempts), publish readings."""
        self._status = f"connecting to {self.config.broker}"
        await self.client.run(self._session, on_down=self._down, task_status=task_status)

    async def wait_subscribed(self) -> None:
        """Wait until the current connection's subscriptions are active."""
        await self._subscribed.wait()

    def status(self) -> str:
        """One line: connected or not, and why."""
        return self._status

    def _down(self, error: MqttError) -> None:
        if self._subscribed.is_set():
            self._subscribed = trio.Event()
        self._status = f"disconnected: {error}"
        log.info("sparkplug source %s", self._status)

    async def _session(self, client: MqttClient) -> None:
        messages = await client.subscribe(*self.watch.subscriptions(), qos=0)
        c = self.config
        self._status = f"subscribed to {c.group}/{c.node}/{c.device} at {c.broker}"
        self._subscribed.set()
        async for message in messages:
            try:
                effects = self.watch.receive(message.topic, message.payload, self._clock())
            except SparkplugPayloadError as exc:
                self.bad_messages += 1
                log.warning("sparkplug: ignored a message on %s: %s", message.topic, exc)
                continue
            for effect in effects:
                if isinstance(effect, Reading):
                    self.feed.publish(effect)
                else:  # a rebirth request; if the queue is full, the next data asks again
                    with contextlib.suppress(trio.WouldBlock):
                        client.publish_nowait(effect.topic, effect.payload, effect.qos)


__all__ = [
    "SparkplugPublisher",
    "SparkplugPublisherConfig",
    "SparkplugPublisherStatistics",
    "SparkplugSource",
    "SparkplugSourceConfig",
]
