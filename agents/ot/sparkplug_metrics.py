"""Sparkplug B metrics without I/O: a `mesh.readings.Reading` as a ``Metric`` and back.

Metrics are the protobuf generated from Eclipse Tahu's ``sparkplug_b.proto``
(`agents.ot.sparkplug_b_pb2`). A reading is a ``Metric`` whose datatype follows its
`Kind` (Boolean, Int64, Double, String, BooleanArray, Int64Array, DoubleArray; arrays
packed into ``bytes_value`` little-endian as spec 6.4.16 says, booleans as a 4-byte
count then bits MSB first), whose timestamp is ``source_ms``, whose unit is the property
``engUnit`` (String, in births) and whose quality is the property ``Quality`` (Int32,
only when not good: 0 bad, 500 stale for uncertain, as the spec's only codes are
0/192/500; on reading, 192 is good, 500 uncertain, and other OPC-style codes go by
range). Reading one back (`metric_value`) takes any datatype of `DataType`.

Topics, payloads and the edge node's session are `agents.ot.sparkplug`. Values in,
values out: no socket, no clock. (docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import enum
import struct
from typing import Any

from mesh.readings import Kind, Quality, Reading

ENG_UNIT = "engUnit"
QUALITY = "Quality"
QUALITY_BAD, QUALITY_GOOD, QUALITY_STALE = 0, 192, 500
_INT64 = 1 << 64


class DataType(enum.IntEnum):
    """Sparkplug datatypes (the spec's numbers), the ones a reading can take."""

    INT8, INT16, INT32, INT64 = 1, 2, 3, 4
    UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
    FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
    INT8_ARRAY, INT16_ARRAY, INT32_ARRAY, INT64_ARRAY = 22, 23, 24, 25
    UINT8_ARRAY, UINT16_ARRAY, UINT32_ARRAY, UINT64_ARRAY = 26, 27, 28, 29
    FLOAT_ARRAY, DOUBLE_ARRAY, BOOLEAN_ARRAY = 30, 31, 32


_OUT: dict[Kind, DataType] = {
    Kind.BOOL: DataType.BOOLEAN,
    Kind.INT: DataType.INT64,
    Kind.FLOAT: DataType.DOUBLE,
    Kind.STRING: DataType.STRING,
    Kind.BOOL_ARRAY: DataType.BOOLEAN_ARRAY,
    Kind.INT_ARRAY: DataType.INT64_ARRAY,
    Kind.FLOAT_ARRAY: DataType.DOUBLE_ARRAY,
}
# datatype -> (protobuf value field, kind, signed bits to sign-extend from or 0)
_SCALARS: dict[DataType, tuple[str, Kind, int]] = {
    DataType.INT8: ("int_value", Kind.INT, 32),
    DataType.INT16: ("int_value", Kind.INT, 32),
    DataType.INT32: ("int_value", Kind.INT, 32),
    DataType.INT64: ("long_value", Kind.INT, 64),
    DataType.UINT8: ("int_value", Kind.INT, 0),
    DataType.UINT16: ("int_value", Kind.INT, 0),
    DataType.UINT32: ("int_value", Kind.INT, 0),
    DataType.UINT64: ("long_value", Kind.INT, 0),
    DataType.DATETIME: ("long_value", Kind.INT, 0),
    DataType.FLOAT: ("float_value", Kind.FLOAT, 0),
    DataType.DOUBLE: ("double_value", Kind.FLOAT, 0),
    DataType.BOOLEAN: ("boolean_value", Kind.BOOL, 0),
    DataType.STRING: ("string_value", Kind.STRING, 0),
    DataType.TEXT: ("string_value", Kind.STRING, 0),
    DataType.UUID: ("string_value", Kind.STRING, 0),
}
# array datatype -> (struct code of one element, kind)
_ARRAYS: dict[DataType, tuple[str, Kind]] = {
    DataType.INT8_ARRAY: ("b", Kind.INT_ARRAY),
    DataType.INT16_ARRAY: ("h", Kind.INT_ARRAY),
    DataType.INT32_ARRAY: ("i", Kind.INT_ARRAY),
    DataType.INT64_ARRAY: ("q", Kind.INT_ARRAY),
    DataType.UINT8_ARRAY: ("B", Kind.INT_ARRAY),
    DataType.UINT16_ARRAY: ("H", Kind.INT_ARRAY),
    DataType.UINT32_ARRAY: ("I", Kind.INT_ARRAY),
    DataType.UINT64_ARRAY: ("Q", Kind.INT_ARRAY),
    DataType.FLOAT_ARRAY: ("f", Kind.FLOAT_ARRAY),
    DataType.DOUBLE_ARRAY: ("d", Kind.FLOAT_ARRAY),
}


def pack_bools(values: tuple[bool, ...]) -> bytes:
    """A BooleanArray's bytes: the count (uint32 LE), then one bit each, MSB first."""
    packed = bytearray((len(values) + 7) // 8)
    for i, bit in enumerate(values):
        if bit:
            packed[i // 8] |= 0x80 >> (i % 8)
    return struct.pack("<I", len(values)) + bytes(packed)


def unpack_bools(data: bytes) -> tuple[bool, ...]:
    """The booleans `pack_bools` wrote (`ValueError` if the length does not match)."""
    if len(data) < 4:
        raise ValueError("a BooleanArray starts with a 4-byte count")
    (count,) = struct.unpack_from("<I", data)
    if len(data) != 4 + (count + 7) // 8:
        raise ValueError(f"a BooleanArray of {count} needs {4 + (count + 7) // 8} bytes")
    return tuple(bool(data[4 + i // 8] & (0x80 >> (i % 8))) for i in range(count))


def _property(target: Any, key: str, datatype: DataType, field: str, value: object) -> None:
    target.properties.keys.append(key)
    prop = target.properties.values.add()
    prop.type = datatype
    setattr(prop, field, value)


def quality_code(quality: Quality) -> int:
    """The Sparkplug ``Quality`` property value of `quality` (uncertain is stale)."""
    return {Quality.GOOD: QUALITY_GOOD, Quality.UNCERTAIN: QUALITY_STALE}.get(quality, QUALITY_BAD)


def quality_of(code: int) -> Quality:
    """The quality a ``Quality`` property value means (OPC DA ranges beyond the spec's)."""
    if not 0 <= code <= 255:  # 500 (stale) or not a code at all
        return Quality.UNCERTAIN
    return Quality.BAD if code < 64 else Quality.UNCERTAIN if code < 192 else Quality.GOOD


def fill_metric(
    metric: Any, reading: Reading, alias: int, *, birth: bool, historical: bool = False
) -> None:
    """Write `reading` into the protobuf `metric`: with name, datatype and unit in a birth,
    by alias alone otherwise."""
    datatype = _OUT[reading.kind]
    if birth:
        metric.name = reading.name
        metric.datatype = datatype
    metric.alias = alias
    metric.timestamp = reading.source_ms
    if historical:
        metric.is_historical = True
    value: Any = reading.value
    if reading.kind is Kind.INT:
        metric.long_value = value % _INT64
    elif reading.kind.is_array:
        if reading.kind is Kind.BOOL_ARRAY:
            metric.bytes_value = pack_bools(value)
        else:
            code = "q" if reading.kind is Kind.INT_ARRAY else "d"
            metric.bytes_value = struct.pack(f"<{len(value)}{code}", *value)
    else:
        setattr(metric, _SCALARS[datatype][0], value)
    if birth and reading.unit:
        _property(metric, ENG_UNIT, DataType.STRING, "string_value", reading.unit)
    if reading.quality is not Quality.GOOD:
        _property(metric, QUALITY, DataType.INT32, "int_value", quality_code(reading.quality))


def metric_value(metric: Any, datatype: int) -> tuple[Kind, object] | None:
    """The kind and value of `metric` read as `datatype` (None if it is null); raises
    `ValueError` saying what does not fit."""
    if metric.is_null:
        return None
    if datatype in _SCALARS:
        field, kind, bits = _SCALARS[DataType(datatype)]
        if metric.WhichOneof("value") != field:
            raise ValueError(f"datatype {datatype} needs {field}, got {metric.WhichOneof('value')}")
        value = getattr(metric, field)
        if bits and value >= 1 << (bits - 1):
            value -= 1 << bits
        return kind, value
    if datatype == DataType.BOOLEAN_ARRAY or datatype in _ARRAYS:
        if metric.WhichOneof("value") != "bytes_value":
            raise ValueError(f"datatype {datatype} needs bytes_value")
        data = bytes(metric.bytes_value)
        if datatype == DataType.BOOLEAN_ARRAY:
            return Kind.BOOL_ARRAY, unpack_bools(data)
        code, kind = _ARRAYS[DataType(datatype)]
        size = struct.calcsize(code)
        if len(data) % size:
            raise ValueError(f"{len(data)} bytes are not a whole number of {size}-byte elements")
        return kind, struct.unpack(f"<{len(data) // size}{code}", data)
    raise ValueError(f"datatype {datatype} has no reading kind")


def metric_properties(metric: Any) -> dict[str, object]:
    """The metric's PropertySet as a dict of plain values."""
    props = metric.properties
    if len(props.keys) != len(props.values):
        raise ValueError("a PropertySet needs as many keys as values")
    out: dict[str, object] = {}
    for key, prop in zip(props.keys, props.values, strict=True):
        field = prop.WhichOneof("value")
        if field is not None and not prop.is_null:
            value = getattr(prop, field)
            if field == "int_value" and prop.type in (
                DataType.INT8,
                DataType.INT16,
                DataType.INT32,
            ):
                value = value - (1 << 32) if value >= 1 << 31 else value
            out[str(key)] = value
    return out


__all__ = [
    "ENG_UNIT",
    "QUALITY",
    "QUALITY_BAD",
    "QUALITY_GOOD",
    "QUALITY_STALE",
    "DataType",
    "fill_metric",
    "metric_properties",
    "metric_value",
    "pack_bools",
    "quality_code",
    "quality_of",
    "unpack_bools",
]
