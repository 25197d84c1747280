"""A Sparkplug B host application's view of one metric of one device, without I/O.

`DeviceWatch` takes every message on its `subscriptions` (the edge node's NBIRTH and
NDEATH, the device's DBIRTH, DDATA and DDEATH) and returns the readings to publish and
the MQTT messages to send. It guarantees:

- aliases are learnt from the DBIRTH (the spec makes them unique per edge node) and
  dropped at the next NBIRTH; a DDATA metric is read with its birth's datatype and unit;
  a birth that repeats the reading already published is not published again;
- a data message before the device's birth, or naming an alias no birth defined, is
  skipped and answered with a rebirth request (NCMD ``Node Control/Rebirth`` = true),
  at most one per `rebirth_interval_ms`;
- when the device (DDEATH) or its node (an NDEATH whose bdSeq matches the NBIRTH's) dies,
  the last reading is published once more with quality bad; nothing follows until the
  next birth. An NDEATH of an older session (another bdSeq) is ignored;
- historical metrics (store-and-forward) become readings like the others: their
  ``source_ms`` says when they were measured.

It never opens a socket and never reads a clock (`now_ms` comes in); sequence numbers
are not checked, as a subscriber to one device sees only part of its node's sequence.
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agents.ot.sparkplug import (
    BD_SEQ,
    Outgoing,
    SparkplugPayloadError,
    Topic,
    Verb,
    check_id,
    decode_payload,
    reading_of,
    rebirth_request,
)
from agents.ot.sparkplug_metrics import ENG_UNIT, metric_properties
from mesh.readings import Quality, Reading


@dataclass(frozen=True)
class _Definition:
    name: str
    datatype: int
    unit: str


class DeviceWatch:
    """What a host application knows of `metric` on `device` of edge node `node`.

    `receive` takes every message on `subscriptions` and returns the readings to publish
    and the messages to send (a rebirth request, at most one per `rebirth_interval_ms`).
    """

    def __init__(
        self, group: str, node: str, device: str, metric: str, *, rebirth_interval_ms: int = 5000
    ) -> None:
        self.group, self.node = check_id("group", group), check_id("edge node", node)
        self.device, self.metric = check_id("device", device), metric
        self.rebirth_interval_ms = rebirth_interval_ms
        self.node_bd_seq: int | None = None
        """The bdSeq of the node's last NBIRTH."""
        self.born = False
        """Whether the device's DBIRTH came and no death since."""
        self.definition: _Definition | None = None
        self.last: Reading | None = None
        self.rebirths_requested = 0
        self._aliases: dict[int, _Definition] = {}
        self._asked_ms: int | None = None

    def subscriptions(self) -> list[str]:
        """The node's births and deaths, the device's births, data and deaths."""
        node = [str(Topic(self.group, v, self.node)) for v in (Verb.NBIRTH, Verb.NDEATH)]
        device = (Verb.DBIRTH, Verb.DDATA, Verb.DDEATH)
        return node + [str(Topic(self.group, v, self.node, self.device)) for v in device]

    def receive(self, topic: str, data: bytes, now_ms: int) -> list[Reading | Outgoing]:
        """React to one message; `SparkplugPayloadError` for a bad topic or payload."""
        parsed = Topic.parse(topic)
        if (parsed.group, parsed.node) != (self.group, self.node):
            return []
        if parsed.device is not None and parsed.device != self.device:
            return []
        payload = decode_payload(data)
        if parsed.verb is Verb.NBIRTH:
            self.node_bd_seq = _bd_seq(payload)
            self.born = False  # its DBIRTHs follow
            self._aliases.clear()
            return []
        if parsed.verb is Verb.NDEATH:
            bd_seq = _bd_seq(payload)
            if bd_seq is not None and self.node_bd_seq is not None and bd_seq != self.node_bd_seq:
                return []  # the Will of an older session
            return self._dead(now_ms)
        if parsed.verb is Verb.DDEATH:
            return self._dead(now_ms)
        if parsed.verb is Verb.DBIRTH:
            return self._birth(payload, now_ms)
        if parsed.verb is Verb.DDATA:
            return self._data(payload, now_ms)
        return []

    def _birth(self, payload: Any, now_ms: int) -> list[Reading | Outgoing]:
        out: list[Reading | Outgoing] = []
        self.born, self.definition = True, None
        for metric in payload.metrics:
            if not metric.name or not metric.HasField("datatype"):
                raise SparkplugPayloadError("DBIRTH", "every metric needs a name and datatype")
            unit = metric_properties(metric).get(ENG_UNIT, "")
            definition = _Definition(
                metric.name, metric.datatype, unit if isinstance(unit, str) else ""
            )
            if metric.HasField("alias"):
                self._aliases[metric.alias] = definition
            if metric.name == self.metric:
                self.definition = definition
                out += self._take(metric, definition, payload, now_ms)
        return out

    def _data(self, payload: Any, now_ms: int) -> list[Reading | Outgoing]:
        if not self.born:
            return self._ask(now_ms)
        out: list[Reading | Outgoing] = []
        for metric in payload.metrics:
            if metric.HasField("alias") and metric.alias in self._aliases:
                definition = self._aliases[metric.alias]
            elif (
                metric.name and self.definition is not None and metric.name == self.definition.name
            ):
                definition = self.definition
            elif metric.name:
                continue  # a metric we do not watch, named
            else:
                return self._ask(now_ms)  # an alias no birth told us
            if definition.name == self.metric:
                out += self._take(metric, definition, payload, now_ms)
        return out

    def _take(
        self, metric: Any, definition: _Definition, payload: Any, now_ms: int
    ) -> list[Reading | Outgoing]:
        name, unit = definition.name, definition.unit
        reading = reading_of(metric, definition.datatype, name, unit, payload.timestamp, now_ms)
        if reading is None or (
            self.last is not None and reading == replace(self.last, agent_ms=now_ms)
        ):
            return []  # none, or the value we have (a re-birth repeats it)
        self.last = reading
        return [reading]

    def _dead(self, now_ms: int) -> list[Reading | Outgoing]:
        was, self.born = self.born, False
        if not was or self.last is None:
            return []
        self.last = replace(self.last, quality=Quality.BAD, agent_ms=now_ms)
        return [self.last]

    def _ask(self, now_ms: int) -> list[Reading | Outgoing]:
        if self._asked_ms is not None and now_ms - self._asked_ms < self.rebirth_interval_ms:
            return []
        self._asked_ms = now_ms
        self.rebirths_requested += 1
        return [rebirth_request(self.group, self.node, now_ms)]


def _bd_seq(payload: Any) -> int | None:
    for metric in payload.metrics:
        if metric.name == BD_SEQ and metric.WhichOneof("value") in ("long_value", "int_value"):
            return int(getattr(metric, str(metric.WhichOneof("value"))))
    return None


__all__ = ["DeviceWatch"]
