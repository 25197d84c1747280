"""The Sparkplug B cores without I/O: topics, payloads, the edge node, a host's view.

Payloads are decoded here with the generated protobuf directly, not with the module's own
helpers, so an encoder bug cannot hide behind a matching decoder bug.
"""

from __future__ import annotations

import struct

import pytest

from agents.ot import sparkplug_b_pb2 as pb
from agents.ot.sparkplug import (
    REBIRTH,
    EdgeNode,
    NodeState,
    Outgoing,
    SparkplugError,
    SparkplugPayloadError,
    Topic,
    Verb,
    death_payload,
    decode_payload,
    rebirth_request,
)
from agents.ot.sparkplug_bridge import SparkplugPublisherConfig, SparkplugSourceConfig
from agents.ot.sparkplug_host import DeviceWatch
from agents.ot.sparkplug_metrics import DataType, pack_bools, quality_of, unpack_bools
from mesh.readings import Kind, Quality, Reading

NOW = 1_700_000_000_000


def payload(out: Outgoing) -> pb.Payload:
    decoded = pb.Payload()
    decoded.ParseFromString(out.payload)
    return decoded


def online(node: EdgeNode) -> list[Outgoing]:
    node.connect(NOW)
    return node.connected(NOW)


def verbs(messages: list[Outgoing]) -> list[str]:
    return [m.topic.split("/")[2] for m in messages]


# -- topics --------------------------------------------------------------------------------


def test_topics_round_trip() -> None:
    topic = Topic("plant 1", Verb.DDATA, "mill", "spindle")
    assert str(topic) == "spBv1.0/plant 1/DDATA/mill/spindle"
    assert Topic.parse(str(topic)) == topic
    assert str(Topic("g", Verb.NBIRTH, "n")) == "spBv1.0/g/NBIRTH/n"


@pytest.mark.parametrize("bad", ["", "a+b", "a#", "a/b", "a\x00"])
def test_ids_reject_reserved_characters(bad: str) -> None:
    with pytest.raises(SparkplugError, match="group"):
        Topic(bad, Verb.NBIRTH, "n")
    with pytest.raises(SparkplugError, match="device"):
        EdgeNode("g", "n").update(bad, Reading.of("x", 1.0), NOW)


def test_verbs_and_devices_must_agree() -> None:
    with pytest.raises(SparkplugError, match="needed"):
        Topic("g", Verb.DDATA, "n")
    with pytest.raises(SparkplugError, match="not allowed"):
        Topic("g", Verb.NDATA, "n", "d")


@pytest.mark.parametrize(
    "text", ["spBv1.0/g/NOPE/n", "spAv1.0/g/NBIRTH/n", "spBv1.0/g/NBIRTH", "spBv1.0/g/DDATA/n"]
)
def test_parse_rejects_non_sparkplug_topics(text: str) -> None:
    with pytest.raises(SparkplugPayloadError, match="topic"):
        Topic.parse(text)


# -- payload values ------------------------------------------------------------------------


def test_datatype_numbers_match_the_proto() -> None:
    for member in DataType:
        name = "".join(w.capitalize() for w in member.name.split("_")).replace("Uint", "UInt")
        assert pb.DataType.Value(name.replace("Uuid", "UUID").replace("Datetime", "DateTime")) == (
            member
        )


def test_boolean_array_packs_as_the_spec_example() -> None:
    values = (False, False, True, True, False, True, False, False, True, True, False, True)
    packed = pack_bools(values)
    assert packed[:5] == bytes([0x0C, 0, 0, 0, 0x34]) and packed[5] & 0xF0 == 0xD0
    assert unpack_bools(packed) == values
    assert unpack_bools(pack_bools(())) == ()
    with pytest.raises(ValueError, match="needs 6 bytes"):
        unpack_bools(packed[:-1])


READINGS = [
    Reading.of("on", True, source_ms=NOW - 5),
    Reading.of("count", -(1 << 63), "1", source_ms=NOW - 4),
    Reading.of("big", (1 << 63) - 1, source_ms=NOW - 4),
    Reading.of("speed", 1234.5625, "mm/s", source_ms=NOW - 3),
    Reading.of("label", "Spindle ✓", source_ms=NOW - 2),
    Reading.of("bits", [True, False, True], source_ms=NOW - 1),
    Reading.of("ints", [-1, 2, -(1 << 40)], source_ms=NOW - 1),
    Reading.of("floats", [0.5, -2.25], "Cel", source_ms=NOW - 1),
    Reading.of("empty", [], source_ms=NOW),
]
WIRE = {
    "on": (11, "boolean_value"),
    "count": (4, "long_value"),
    "big": (4, "long_value"),
    "speed": (10, "double_value"),
    "label": (12, "string_value"),
    "bits": (32, "bytes_value"),
    "ints": (25, "bytes_value"),
    "floats": (31, "bytes_value"),
    "empty": (31, "bytes_value"),
}


def test_births_carry_every_metric_with_name_alias_type_unit_and_value() -> None:
    node = EdgeNode("g", "n")
    online(node)
    out = [m for r in READINGS for m in node.update("dev", r, NOW)]
    births = [payload(m) for m in out if "/DBIRTH/" in m.topic]
    assert len(births) == len(READINGS)  # each new metric re-births the device
    last = births[-1]
    assert [m.name for m in last.metrics] == [r.name for r in READINGS]
    assert len({m.alias for m in last.metrics}) == len(READINGS)
    for metric, reading in zip(last.metrics, READINGS, strict=True):
        datatype, field = WIRE[reading.name]
        assert (metric.datatype, metric.WhichOneof("value")) == (datatype, field)
        assert metric.timestamp == reading.source_ms
        units = dict(zip(metric.properties.keys, metric.properties.values, strict=True))
        if reading.unit:
            assert units["engUnit"].type == 12 and units["engUnit"].string_value == reading.unit
        else:
            assert "engUnit" not in units
    assert last.metrics[1].long_value == 1 << 63  # -2**63 as two's complement
    assert last.metrics[6].bytes_value == struct.pack("<3q", -1, 2, -(1 << 40))
    assert last.metrics[7].bytes_value == struct.pack("<2d", 0.5, -2.25)


def test_readings_round_trip_through_a_host_view() -> None:
    for reading in READINGS:
        node, watch = EdgeNode("g", "n"), DeviceWatch("g", "n", "dev", reading.name)
        online(node)
        (birth,) = node.update("dev", reading, NOW)
        (got,) = watch.receive(birth.topic, birth.payload, NOW + 7)
        assert got == reading.stamped(NOW + 7)
        again = Reading(
            reading.name, reading.value, reading.unit, Quality.BAD, NOW + 1, 0, reading.kind
        )
        (data,) = node.update("dev", again, NOW + 1)
        assert "/DDATA/" in data.topic
        (got,) = watch.receive(data.topic, data.payload, NOW + 8)
        assert got == again.stamped(NOW + 8)


def test_data_names_metrics_by_alias_only_without_datatype() -> None:
    node = EdgeNode("g", "n")
    online(node)
    (birth,) = node.update("dev", Reading.of("t", 1.0, source_ms=NOW), NOW)
    (data,) = node.update("dev", Reading.of("t", 2.0, source_ms=NOW + 1), NOW + 1)
    (metric,) = payload(data).metrics
    assert not metric.HasField("name") and not metric.HasField("datatype")
    assert metric.alias == payload(birth).metrics[0].alias and metric.double_value == 2.0


@pytest.mark.parametrize(
    ("quality", "code"), [(Quality.GOOD, None), (Quality.UNCERTAIN, 500), (Quality.BAD, 0)]
)
def test_quality_property_is_int32_and_only_when_not_good(
    quality: Quality, code: int | None
) -> None:
    node = EdgeNode("g", "n")
    online(node)
    node.update("dev", Reading.of("t", 1.0), NOW)
    (data,) = node.update("dev", Reading.of("t", 2.0, quality=quality), NOW)
    props = payload(data).metrics[0].properties
    if code is None:
        assert list(props.keys) == []
    else:
        assert list(props.keys) == ["Quality"]
        assert (props.values[0].type, props.values[0].int_value) == (3, code)


def test_quality_codes_read_by_spec_then_opc_ranges() -> None:
    assert [quality_of(c) for c in (192, 0, 500, 64, 100, 216, 63)] == [
        Quality.GOOD,
        Quality.BAD,
        Quality.UNCERTAIN,
        Quality.UNCERTAIN,
        Quality.UNCERTAIN,
        Quality.GOOD,
        Quality.BAD,
    ]


# -- the edge node -------------------------------------------------------------------------


def test_session_births_bdseq_and_seq() -> None:
    node = EdgeNode("g", "n")
    will = node.connect(NOW)
    assert (will.topic, will.qos, will.retain) == ("spBv1.0/g/NDEATH/n", 1, False)
    death = payload(will)
    assert not death.HasField("seq")
    assert [(m.name, m.datatype, m.long_value) for m in death.metrics] == [("bdSeq", 4, 0)]
    (nbirth,) = node.connected(NOW)
    birth = payload(nbirth)
    assert (nbirth.qos, nbirth.retain, birth.seq, birth.timestamp) == (0, False, 0, NOW)
    names = {m.name: m for m in birth.metrics}
    assert names["bdSeq"].long_value == 0 and names["bdSeq"].datatype == 4
    rebirth = names[REBIRTH]
    assert rebirth.datatype == 11 and rebirth.boolean_value is False
    assert not rebirth.HasField("alias")


def test_seq_increments_and_wraps_after_255() -> None:
    node = EdgeNode("g", "n")
    online(node)
    seqs = [payload(m).seq for i in range(300) for m in node.update("d", Reading.of("x", i), NOW)]
    assert seqs == [(i + 1) % 256 for i in range(300)]


def test_bdseq_grows_per_connect_and_wraps() -> None:
    node = EdgeNode("g", "n")
    seen = []
    for i in range(258):
        will = node.connect(NOW)
        seen.append(payload(will).metrics[0].long_value)
        node.lost()
        if i == 2:  # a TCP connect that failed: the broker saw no CONNECT
            assert payload(node.connect(NOW)).metrics[0].long_value == 3
            node.lost(connect_sent=False)
    assert seen[:5] == [0, 1, 2, 3, 4] and seen[255:] == [255, 0, 1]


def test_births_come_before_data_and_a_new_metric_rebirths_the_device() -> None:
    node = EdgeNode("g", "n")
    online(node)
    out = node.update("a", Reading.of("x", 1.0), NOW)
    out += node.update("a", Reading.of("x", 2.0), NOW)
    out += node.update("a", Reading.of("y", 3), NOW)
    out += node.update("a", Reading.of("x", 4.0, "mm"), NOW)  # a new unit: a new birth
    out += node.update("b", Reading.of("x", 5.0), NOW)
    assert [m.topic.split("/", 2)[2] for m in out] == [
        "DBIRTH/n/a",
        "DDATA/n/a",
        "DBIRTH/n/a",
        "DBIRTH/n/a",
        "DBIRTH/n/b",
    ]
    aliases = [m.alias for o in out if "DBIRTH" in o.topic for m in payload(o).metrics]
    assert aliases == [1, 1, 2, 1, 2, 3]  # unique across the node, stable


def test_rebirth_command_resends_every_birth_with_the_same_bdseq() -> None:
    node = EdgeNode("g", "n")
    node.connect(NOW)
    node.lost()
    online(node)
    node.update("a", Reading.of("x", 1.0), NOW)
    node.update("a", Reading.of("x", 2.0), NOW)
    request = rebirth_request("g", "n", NOW)
    assert request.topic == "spBv1.0/g/NCMD/n"
    assert not payload(request).HasField("seq")
    out = node.receive(request.topic, request.payload, NOW)
    assert verbs(out) == ["NBIRTH", "DBIRTH"]
    assert [payload(m).seq for m in out] == [0, 1]
    assert payload(out[0]).metrics[0].long_value == 1 == node.bd_seq
    assert payload(out[1]).metrics[0].double_value == 2.0
    no = pb.Payload()
    no.metrics.add(name=REBIRTH, boolean_value=False)
    assert node.receive(request.topic, no.SerializeToString(), NOW) == []
    assert node.receive("spBv1.0/g/DCMD/n/a", request.payload, NOW) == []


def test_bad_command_payloads_raise_a_remote_error() -> None:
    node = EdgeNode("g", "n")
    online(node)
    with pytest.raises(SparkplugPayloadError, match="not a Sparkplug B payload"):
        node.receive("spBv1.0/g/NCMD/n", b"\xff\xff\xff", NOW)
    with pytest.raises(SparkplugPayloadError):
        decode_payload(b"\x0a\x05ab")


def test_offline_readings_wait_bounded_and_come_back_as_history() -> None:
    node = EdgeNode("g", "n", pending_limit=3)
    online(node)
    node.update("a", Reading.of("x", 0.0), NOW)
    node.lost()
    for i in range(1, 6):
        assert node.update("a", Reading.of("x", float(i), source_ms=NOW + i), NOW) == []
    stats = node.statistics()
    assert (stats.state, stats.pending, stats.dropped) == (NodeState.OFFLINE, 3, 2)
    out = online(node)
    assert verbs(out) == ["NBIRTH", "DBIRTH", "DDATA", "DDATA"]
    assert payload(out[1]).metrics[0].double_value == 5.0  # the birth has the latest
    history = [payload(m).metrics[0] for m in out[2:]]
    assert [(m.double_value, m.is_historical) for m in history] == [(3.0, True), (4.0, True)]
    assert node.statistics().pending == 0


def test_illegal_steps_raise_a_local_error() -> None:
    node = EdgeNode("g", "n")
    with pytest.raises(SparkplugError, match="connected while offline"):
        node.connected(NOW)
    node.connect(NOW)
    with pytest.raises(SparkplugError, match="connect while connecting"):
        node.connect(NOW)
    with pytest.raises(SparkplugError, match="death while connecting"):
        node.death(NOW)


def test_metric_count_is_bounded() -> None:
    node = EdgeNode("g", "n", max_metrics=2)
    node.update("a", Reading.of("x", 1.0), NOW)
    node.update("b", Reading.of("x", 1.0), NOW)
    with pytest.raises(SparkplugError, match="more than 2 metrics"):
        node.update("a", Reading.of("y", 1.0), NOW)


# -- a host's view -------------------------------------------------------------------------


def born_pair() -> tuple[EdgeNode, DeviceWatch, list[Outgoing]]:
    node, watch = EdgeNode("g", "n"), DeviceWatch("g", "n", "dev", "t", rebirth_interval_ms=1000)
    out = online(node)
    out += node.update("dev", Reading.of("other", 1), NOW)
    out += node.update("dev", Reading.of("t", 20.0, "Cel", source_ms=NOW), NOW)
    return node, watch, out


def test_data_before_birth_asks_for_a_rebirth_rate_limited() -> None:
    node, watch, _ = born_pair()
    (data,) = node.update("dev", Reading.of("t", 21.0, "Cel"), NOW)
    (ask,) = watch.receive(data.topic, data.payload, NOW)
    assert isinstance(ask, Outgoing) and ask.topic == "spBv1.0/g/NCMD/n"
    (metric,) = payload(ask).metrics
    assert (metric.name, metric.boolean_value) == (REBIRTH, True)
    assert watch.receive(data.topic, data.payload, NOW + 999) == []
    assert len(watch.receive(data.topic, data.payload, NOW + 1000)) == 1
    answer = node.receive(ask.topic, ask.payload, NOW)
    got = [e for m in answer for e in watch.receive(m.topic, m.payload, NOW)]
    assert [(r.name, r.value, r.unit) for r in got] == [("t", 21.0, "Cel")]  # type: ignore[union-attr]


def test_an_unknown_alias_asks_for_a_rebirth_and_skips_the_message() -> None:
    _, watch, out = born_pair()
    for m in out:
        watch.receive(m.topic, m.payload, NOW)
    stray = pb.Payload(timestamp=NOW, seq=9)
    stray.metrics.add(alias=77, timestamp=NOW, double_value=1.0)
    effects = watch.receive("spBv1.0/g/DDATA/n/dev", stray.SerializeToString(), NOW)
    assert [type(e) for e in effects] == [Outgoing]


def test_deaths_mark_the_value_bad_once() -> None:
    node, watch, out = born_pair()
    got = [e for m in out for e in watch.receive(m.topic, m.payload, NOW)]
    assert [r.value for r in got] == [20.0]  # type: ignore[union-attr]
    stale = death_payload(node.bd_seq + 1, NOW)  # the Will of another session
    assert watch.receive("spBv1.0/g/NDEATH/n", stale, NOW) == []
    (dead,) = node.device_death("dev", NOW)
    (bad,) = watch.receive(dead.topic, dead.payload, NOW + 5)
    assert isinstance(bad, Reading) and (bad.value, bad.quality, bad.agent_ms) == (
        20.0,
        Quality.BAD,
        NOW + 5,
    )
    assert watch.receive(dead.topic, dead.payload, NOW + 6) == []


def test_the_nodes_own_death_kills_the_device() -> None:
    node, watch, out = born_pair()
    for m in out:
        watch.receive(m.topic, m.payload, NOW)
    death = node.death(NOW)
    assert (death.topic, death.qos, payload(death).metrics[0].long_value) == (
        "spBv1.0/g/NDEATH/n",
        1,
        node.bd_seq,
    )
    (bad,) = watch.receive(death.topic, death.payload, NOW)
    assert isinstance(bad, Reading) and bad.quality is Quality.BAD


def test_host_rejects_payloads_that_do_not_fit() -> None:
    _, watch, out = born_pair()
    for m in out:
        watch.receive(m.topic, m.payload, NOW)
    alias = next(m.alias for m in payload(out[-1]).metrics if m.name == "t")
    wrong = pb.Payload(timestamp=NOW, seq=5)
    wrong.metrics.add(alias=alias, timestamp=NOW, string_value="hot")
    with pytest.raises(SparkplugPayloadError, match="double_value"):
        watch.receive("spBv1.0/g/DDATA/n/dev", wrong.SerializeToString(), NOW)
    with pytest.raises(SparkplugPayloadError, match="not a Sparkplug B payload"):
        watch.receive("spBv1.0/g/DDATA/n/dev", b"\x08", NOW)
    assert watch.receive("spBv1.0/g/DDATA/n/other", b"\x08", NOW) == []
    assert Kind.FLOAT is watch.last.kind  # type: ignore[union-attr]


# -- profile tables ------------------------------------------------------------------------


def test_configs_from_tables() -> None:
    table: dict[str, object] = {"broker": "mqtt://10.0.0.2", "group": "g", "node": "n"}
    config = SparkplugPublisherConfig.from_table(table, "services.x.sparkplug")
    assert (config.broker.host, config.broker.port, config.username) == ("10.0.0.2", 1883, "")
    source = SparkplugSourceConfig.from_table(
        {**table, "device": "d", "metric": "a/b", "username": "u", "password": "p"}, "s"
    )
    assert (source.device, source.metric, source.password) == ("d", "a/b", "p")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"broker": "tcp://h:1"}, "w.broker: 'tcp://h:1' is not an mqtt:// URL"),
        ({"broker": "mqtt://h:99999"}, "w.broker: "),
        ({"broker": 5}, "w.broker: expected non-empty text, got int 5"),
        ({"group": "a/b"}, "w.group: "),
        ({"node": ""}, "w.node: expected non-empty text"),
        ({"password": "p"}, "w.password: given without a username"),
        ({"colour": "red"}, "w.colour: unknown key"),
    ],
)
def test_configs_name_the_bad_key(change: dict[str, object], message: str) -> None:
    table: dict[str, object] = {"broker": "mqtt://h", "group": "g", "node": "n", **change}
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as info:
        SparkplugPublisherConfig.from_table(table, "w")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"w\.device: "):
        SparkplugSourceConfig.from_table({"broker": "mqtt://h", "group": "g", "node": "n"}, "w")
