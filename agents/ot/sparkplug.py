"""MQTT Sparkplug B 3.0 without I/O: topics, payloads and the edge node's session.

What it owns:

- **Topics** ``spBv1.0/<group>/<verb>/<edge node>[/<device>]`` (`Topic`); an id is
  non-empty UTF-8 without ``+``, ``#``, ``/`` (the spec's reserved characters) or NUL.
- **Payloads** (the protobuf generated from Eclipse Tahu's ``sparkplug_b.proto``):
  decoding one, the NDEATH, the rebirth request, and the `mesh.readings.Reading` a
  received metric carries; how a reading is written into a ``Metric`` and read back
  (datatypes, values, ``engUnit`` and ``Quality``) is `agents.ot.sparkplug_metrics`.
- `EdgeNode`: an edge node's session. bdSeq (0-255) grows by one per MQTT CONNECT and is
  carried by the Will (NDEATH) and the NBIRTH; seq is 0 in every NBIRTH and grows by one
  (wrapping after 255) in every DBIRTH, DDATA and DDEATH; a device's DBIRTH lists all its
  metrics (name, alias, datatype, value) before its first DDATA, which names metrics by
  alias only; a new metric (or a new kind or unit) re-births the device; an NCMD
  ``Node Control/Rebirth`` = true re-births everything with the same bdSeq. While
  offline it keeps the latest reading per metric (the next births carry it) and at most
  `pending_limit` older ones, sent as historical DDATA after the births.

Inputs in (readings, received topic and payload bytes, ``now`` in ms); `Outgoing` MQTT
messages (topic, payload, qos, retain) out. It never opens a socket and never reads a
clock: the Trio shells are `agents.ot.sparkplug_bridge`; the host side (a source's view
of a device) is `agents.ot.sparkplug_host`. (docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from agents.ot import sparkplug_b_pb2 as pb
from agents.ot.sparkplug_metrics import (
    QUALITY,
    QUALITY_GOOD,
    DataType,
    fill_metric,
    metric_properties,
    metric_value,
    quality_of,
)
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.readings import Kind, Quality, Reading, ReadingError

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BD_SEQ = "bdSeq"


class SparkplugError(LocalProtocolError):
    """We were asked for something Sparkplug does not allow (a bad id, an illegal step)."""


class SparkplugPayloadError(RemoteProtocolError):
    """A topic or payload from the broker that is not valid Sparkplug B."""


class Verb(enum.StrEnum):
    """The message type in a topic."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    NDATA = "NDATA"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    DDATA = "DDATA"
    DCMD = "DCMD"

    @property
    def of_device(self) -> bool:
        """Whether topics of this verb name a device."""
        return self.value.startswith("D")


def check_id(what: str, text: str) -> str:
    """`text` if it can be a group, edge node or device id; else `SparkplugError`."""
    if not isinstance(text, str) or not text:
        raise SparkplugError(f"{what}: an id is non-empty text")
    bad = sorted({c for c in text if c in "+#/\x00"})
    if bad:
        raise SparkplugError(f"{what}: {text!r} holds {' '.join(bad)!r}, reserved in topics")
    if len(text.encode("utf-8", "surrogatepass")) > 1024:
        raise SparkplugError(f"{what}: longer than 1024 bytes")
    return text


@dataclass(frozen=True)
class Topic:
    """A Sparkplug B topic; device verbs name a device, node verbs do not."""

    group: str
    verb: Verb
    node: str
    device: str | None = None

    def __post_init__(self) -> None:
        check_id("group", self.group)
        check_id("edge node", self.node)
        if self.verb.of_device != (self.device is not None):
            need = "needed" if self.verb.of_device else "not allowed"
            raise SparkplugError(f"{self.verb}: a device id is {need}")
        if self.device is not None:
            check_id("device", self.device)

    def __str__(self) -> str:
        tail = f"/{self.device}" if self.device is not None else ""
        return f"{NAMESPACE}/{self.group}/{self.verb}/{self.node}{tail}"

    @classmethod
    def parse(cls, text: str) -> Topic:
        """The topic `text` names; `SparkplugPayloadError` if it is not a Sparkplug B one."""
        parts = text.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in Verb.__members__:
            raise SparkplugPayloadError(
                "topic", f"{text!r} is not spBv1.0/group/VERB/node[/device]"
            )
        try:
            return cls(parts[1], Verb(parts[2]), parts[3], parts[4] if len(parts) == 5 else None)
        except SparkplugError as exc:
            raise SparkplugPayloadError("topic", str(exc)) from None


@dataclass(frozen=True)
class Outgoing:
    """An MQTT message to publish."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


# -- payloads ------------------------------------------------------------------------------


def reading_of(
    metric: Any, datatype: int, name: str, unit: str, default_ms: int, now_ms: int
) -> Reading | None:
    """The reading a received metric carries (None if null); `SparkplugPayloadError` if
    its value does not fit `datatype` or a reading."""
    try:
        found = metric_value(metric, datatype)
        if found is None:
            return None
        kind, value = found
        code = metric_properties(metric).get(QUALITY, QUALITY_GOOD)
        quality = quality_of(code) if isinstance(code, int) else Quality.UNCERTAIN
        source_ms = metric.timestamp if metric.HasField("timestamp") else default_ms
        return Reading(name, value, unit, quality, source_ms, now_ms, kind)  # type: ignore[arg-type]
    except (ValueError, ReadingError, struct.error) as exc:
        raise SparkplugPayloadError(f"metric {name!r}", str(exc)) from None


def decode_payload(data: bytes) -> Any:
    """The ``Payload`` in `data`; `SparkplugPayloadError` if it is not one."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except DecodeError as exc:
        raise SparkplugPayloadError("payload", f"not a Sparkplug B payload: {exc}") from None
    return payload


def _payload(now_ms: int, seq: int | None) -> Any:
    payload = pb.Payload()
    payload.timestamp = now_ms
    if seq is not None:
        payload.seq = seq
    return payload


def _node_metric(
    payload: Any, name: str, datatype: DataType, field: str, value: object, now_ms: int
) -> None:
    metric = payload.metrics.add()
    metric.name, metric.timestamp, metric.datatype = name, now_ms, datatype
    setattr(metric, field, value)


def death_payload(bd_seq: int, now_ms: int) -> bytes:
    """An NDEATH: the bdSeq (Int64), no seq."""
    payload = _payload(now_ms, None)
    _node_metric(payload, BD_SEQ, DataType.INT64, "long_value", bd_seq, now_ms)
    return bytes(payload.SerializeToString())


def rebirth_request(group: str, node: str, now_ms: int) -> Outgoing:
    """The NCMD a host sends to ask `node` for its births again."""
    payload = _payload(now_ms, None)
    metric = payload.metrics.add()
    metric.name, metric.timestamp, metric.boolean_value = REBIRTH, now_ms, True
    return Outgoing(str(Topic(group, Verb.NCMD, node)), bytes(payload.SerializeToString()))


# -- the edge node -------------------------------------------------------------------------


class NodeState(enum.Enum):
    """Where an edge node's MQTT session is."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"


class NodeEvent(enum.Enum):
    """What moves an edge node between states."""

    CONNECT = "connect"
    CONNECTED = "connected"
    LOST = "lost"
    DEATH = "death"


TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    (NodeState.OFFLINE, NodeEvent.CONNECT): NodeState.CONNECTING,
    (NodeState.OFFLINE, NodeEvent.LOST): NodeState.OFFLINE,
    (NodeState.CONNECTING, NodeEvent.CONNECTED): NodeState.ONLINE,
    (NodeState.CONNECTING, NodeEvent.LOST): NodeState.OFFLINE,
    (NodeState.ONLINE, NodeEvent.LOST): NodeState.OFFLINE,
    (NodeState.ONLINE, NodeEvent.DEATH): NodeState.OFFLINE,
}


@dataclass(frozen=True)
class EdgeNodeStatistics:
    """A snapshot of an edge node's counters."""

    state: NodeState
    bd_seq: int
    seq: int
    devices: int
    metrics: int
    births: int
    data: int
    pending: int
    dropped: int


@dataclass
class _Metric:
    alias: int
    latest: Reading
    born: tuple[Kind, str] | None = None  # (kind, unit) in the device's last DBIRTH


class EdgeNode:
    """One edge node's Sparkplug session (the module docstring says what it guarantees)."""

    def __init__(
        self, group: str, node: str, *, pending_limit: int = 1024, max_metrics: int = 4096
    ) -> None:
        self.group, self.node = check_id("group", group), check_id("edge node", node)
        if pending_limit < 0 or max_metrics < 1:
            raise SparkplugError("pending_limit >= 0 and max_metrics >= 1")
        self.state = NodeState.OFFLINE
        self.bd_seq = 0
        """The bdSeq of the current (or next) CONNECT."""
        self._bd_seq_sent: int | None = None
        self.max_metrics = max_metrics
        self._seq = 0
        self._devices: dict[str, dict[str, _Metric]] = {}
        self._born: set[str] = set()
        self._aliases = 0
        self._pending: deque[tuple[str, Reading]] = deque(maxlen=pending_limit or None)
        self._pending_limit = pending_limit
        self.births = self.data = self.dropped = 0

    def _step(self, event: NodeEvent) -> None:
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise SparkplugError(f"edge node: {event.value} while {self.state.value}") from None

    def _topic(self, verb: Verb, device: str | None = None) -> str:
        return str(Topic(self.group, verb, self.node, device))

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return seq

    def subscriptions(self) -> list[str]:
        """Topic filters to subscribe to (QoS 1) before the NBIRTH: our NCMD and DCMDs."""
        return [self._topic(Verb.NCMD), f"{NAMESPACE}/{self.group}/DCMD/{self.node}/+"]

    def connect(self, now_ms: int) -> Outgoing:
        """A new MQTT CONNECT is about to go: the Will (NDEATH, QoS 1) with the next bdSeq
        (one more than the last CONNECT's that went out, 0 after 255)."""
        self._step(NodeEvent.CONNECT)
        sent = self._bd_seq_sent
        self.bd_seq = 0 if sent is None else (sent + 1) % 256
        return Outgoing(self._topic(Verb.NDEATH), death_payload(self.bd_seq, now_ms), qos=1)

    def connected(self, now_ms: int) -> list[Outgoing]:
        """The session is up and subscribed: NBIRTH, every DBIRTH, then what waited."""
        self._step(NodeEvent.CONNECTED)
        self._bd_seq_sent = self.bd_seq
        out = self._births(now_ms)
        for device, reading in self._pending:
            if self._devices[device][reading.name].latest is not reading:
                out.append(self._data(device, reading, now_ms, historical=True))
        self._pending.clear()
        return out

    def lost(self, *, connect_sent: bool = True) -> None:
        """The MQTT connection is gone, or never came up (`connect_sent` False: the
        broker never saw the CONNECT, so the next one reuses its bdSeq)."""
        if self.state is NodeState.CONNECTING and connect_sent:
            self._bd_seq_sent = self.bd_seq
        self._step(NodeEvent.LOST)

    def death(self, now_ms: int) -> Outgoing:
        """We are leaving on purpose: the NDEATH to publish before DISCONNECT."""
        self._step(NodeEvent.DEATH)
        return Outgoing(self._topic(Verb.NDEATH), death_payload(self.bd_seq, now_ms), qos=1)

    def rebirth(self, now_ms: int) -> list[Outgoing]:
        """A complete birth sequence again (same bdSeq); nothing unless online."""
        return self._births(now_ms) if self.state is NodeState.ONLINE else []

    def update(self, device: str, reading: Reading, now_ms: int) -> list[Outgoing]:
        """A new reading of `device`: a DDATA, or a DBIRTH if the device or the metric's
        kind or unit is new to this session; nothing while offline (it waits)."""
        metrics = self._devices.get(device)
        if metrics is None:
            check_id("device", device)
            metrics = self._devices[device] = {}
        entry = metrics.get(reading.name)
        if entry is None:
            if sum(map(len, self._devices.values())) >= self.max_metrics:
                raise SparkplugError(f"edge node: more than {self.max_metrics} metrics")
            self._aliases += 1
            entry = metrics[reading.name] = _Metric(self._aliases, reading)
        entry.latest = reading
        if self.state is not NodeState.ONLINE:
            if self._pending_limit:
                if len(self._pending) == self._pending_limit:
                    self.dropped += 1
                self._pending.append((device, reading))
            return []
        if device not in self._born or entry.born != (reading.kind, reading.unit):
            return [self._device_birth(device, now_ms)]
        return [self._data(device, reading, now_ms)]

    def device_death(self, device: str, now_ms: int) -> list[Outgoing]:
        """`device` is gone: its DDEATH (nothing if it was not born); its next reading
        births it again."""
        if self.state is not NodeState.ONLINE or device not in self._born:
            return []
        self._born.discard(device)
        payload = _payload(now_ms, self._next_seq())
        return [Outgoing(self._topic(Verb.DDEATH, device), bytes(payload.SerializeToString()))]

    def receive(self, topic: str, data: bytes, now_ms: int) -> list[Outgoing]:
        """A message on one of our `subscriptions`: a Rebirth NCMD is answered with a
        birth sequence; other commands are ignored. `SparkplugPayloadError` for bad bytes."""
        parsed = Topic.parse(topic)
        if parsed.verb is not Verb.NCMD or (parsed.group, parsed.node) != (self.group, self.node):
            return []
        for metric in decode_payload(data).metrics:
            is_bool = metric.WhichOneof("value") == "boolean_value"
            if metric.name == REBIRTH and is_bool and metric.boolean_value:
                return self.rebirth(now_ms)
        return []

    def statistics(self) -> EdgeNodeStatistics:
        """The counters now."""
        return EdgeNodeStatistics(
            self.state, self.bd_seq, self._seq, len(self._devices),
            sum(map(len, self._devices.values())), self.births, self.data,
            len(self._pending), self.dropped,
        )  # fmt: skip

    def _births(self, now_ms: int) -> list[Outgoing]:
        self._seq = 0
        payload = _payload(now_ms, self._next_seq())
        _node_metric(payload, BD_SEQ, DataType.INT64, "long_value", self.bd_seq, now_ms)
        _node_metric(payload, REBIRTH, DataType.BOOLEAN, "boolean_value", False, now_ms)
        self.births += 1
        self._born.clear()
        out = [Outgoing(self._topic(Verb.NBIRTH), bytes(payload.SerializeToString()))]
        return out + [self._device_birth(device, now_ms) for device in self._devices]

    def _device_birth(self, device: str, now_ms: int) -> Outgoing:
        payload = _payload(now_ms, self._next_seq())
        for entry in self._devices[device].values():
            fill_metric(payload.metrics.add(), entry.latest, entry.alias, birth=True)
            entry.born = (entry.latest.kind, entry.latest.unit)
        self._born.add(device)
        self.births += 1
        return Outgoing(self._topic(Verb.DBIRTH, device), bytes(payload.SerializeToString()))

    def _data(
        self, device: str, reading: Reading, now_ms: int, *, historical: bool = False
    ) -> Outgoing:
        payload = _payload(now_ms, self._next_seq())
        alias = self._devices[device][reading.name].alias
        fill_metric(payload.metrics.add(), reading, alias, birth=False, historical=historical)
        self.data += 1
        return Outgoing(self._topic(Verb.DDATA, device), bytes(payload.SerializeToString()))


__all__ = [
    "BD_SEQ",
    "NAMESPACE",
    "REBIRTH",
    "TRANSITIONS",
    "EdgeNode",
    "EdgeNodeStatistics",
    "NodeEvent",
    "NodeState",
    "Outgoing",
    "SparkplugError",
    "SparkplugPayloadError",
    "Topic",
    "Verb",
    "check_id",
    "death_payload",
    "decode_payload",
    "reading_of",
    "rebirth_request",
]
