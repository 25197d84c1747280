"""Typed readings: the one value type every feed, record and bridge carries. No I/O.

A `Reading` is one measurement, shaped like an OPC UA DataValue and a Sparkplug B metric:

- ``name``: what was measured (``rms_velocity``, ``spindle/load``), 1-200 characters, no
  control characters;
- ``value``: a bool, a signed 64-bit int, a 64-bit float, a string (at most `MAX_TEXT`
  UTF-8 bytes), or an array of at most `MAX_ARRAY` bools, ints or floats; its `Kind`
  is explicit, so an int stays an int and an empty array keeps its type;
- ``unit``: the engineering unit as a UCUM code (``mm/s``, ``Cel``, ``%``, ``1``), at
  most 32 printable ASCII characters, ``""`` when it has none;
- ``quality``: good, uncertain or bad (an OPC UA StatusCode's severity; a Sparkplug
  metric's quality property);
- ``source_ms``: when the machine measured it; ``agent_ms``: when the agent took it
  (both milliseconds since the Unix epoch, UTC).

Its **encoding** (what a feed's record carries as payload, and so what is signed and
anchored) is the canonical MessagePack array

    [version, name, kind, value, unit, quality, source_ms, agent_ms]

with ``version`` 1 (`READING_VERSION`), ``kind`` and ``quality`` the ints of `Kind` and
`Quality`, floats as float64. *Canonical*: exactly what the ``msgpack`` package writes
with ``use_bin_type=True``; `decode_reading` re-encodes and demands byte equality, so a
reading has one encoding and two buyers of one record read one value.
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import msgpack

from mesh.errors import MeshError

READING_VERSION = 1
READINGS_PREFIX = "readings/"
"""A feed's records are on the stream ``readings/<service id>`` of its seller's log."""
MAX_NAME = 200
MAX_UNIT = 32
MAX_TEXT = 4096
MAX_ARRAY = 1024
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_packer = msgpack.Packer(use_bin_type=True)


class ReadingError(MeshError):
    """Bytes or values that are not a valid reading; the message says which field."""


class Kind(enum.IntEnum):
    """The type of a reading's value (its code is what the encoding carries)."""

    BOOL = 0
    INT = 1
    FLOAT = 2
    STRING = 3
    BOOL_ARRAY = 4
    INT_ARRAY = 5
    FLOAT_ARRAY = 6

    @property
    def is_array(self) -> bool:
        """Whether values of this kind are arrays."""
        return self >= Kind.BOOL_ARRAY

    @property
    def element(self) -> Kind:
        """The kind of one element (an array's), or the kind itself."""
        return Kind(self - Kind.BOOL_ARRAY) if self.is_array else self


class Quality(enum.IntEnum):
    """How far a reading can be trusted, as its source said."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2

    @property
    def label(self) -> str:
        """``good``, ``uncertain`` or ``bad``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Quality:
        """The quality named `text` (``good``/``uncertain``/``bad``)."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ReadingError(f"quality: {text!r} is not good, uncertain or bad") from None


Value = bool | int | float | str | tuple[bool, ...] | tuple[int, ...] | tuple[float, ...]
_SCALAR: dict[Kind, type] = {Kind.BOOL: bool, Kind.INT: int, Kind.FLOAT: float, Kind.STRING: str}


def kind_of(value: object) -> Kind:
    """The `Kind` of a Python value (a list or tuple of one scalar type is an array;
    an empty one is a float array)."""
    if isinstance(value, list | tuple):
        if not value:
            return Kind.FLOAT_ARRAY
        element = kind_of(value[0])
        if element.is_array or element is Kind.STRING:
            raise ReadingError("value: arrays hold bools, ints or floats")
        return Kind(element + Kind.BOOL_ARRAY)
    for kind, cls in _SCALAR.items():
        if type(value) is cls:
            return kind
    raise ReadingError(f"value: a {type(value).__name__} is not a reading's value")


def _check_scalar(kind: Kind, value: object, where: str) -> None:
    if type(value) is not _SCALAR[kind]:
        article = "an" if kind is Kind.INT else "a"
        raise ReadingError(f"{where}: {value!r} is not {article} {kind.name.lower()}")
    if kind is Kind.INT and not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
        raise ReadingError(f"{where}: {value} is outside a signed 64-bit int")
    if kind is Kind.STRING and len(str(value).encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise ReadingError(f"{where}: longer than {MAX_TEXT} bytes")


def _check_value(kind: Kind, value: object) -> None:
    if not kind.is_array:
        _check_scalar(kind, value, "value")
        return
    if type(value) is not tuple:
        raise ReadingError("value: an array must be a tuple")
    if len(value) > MAX_ARRAY:
        raise ReadingError(f"value: more than {MAX_ARRAY} elements")
    for i, item in enumerate(value):
        _check_scalar(kind.element, item, f"value[{i}]")


def _check_text(field: str, text: object, limit: int, *, empty: bool) -> None:
    if type(text) is not str or (not text and not empty) or len(text) > limit:
        raise ReadingError(f"{field}: {'0' if empty else '1'}-{limit} characters of text")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ReadingError(f"{field}: control characters are not allowed")


def _check_ms(field: str, ms: object) -> None:
    if type(ms) is not int or not 0 <= ms <= _INT_MAX:
        raise ReadingError(f"{field}: milliseconds since 1970 as a non-negative int")


@dataclass(frozen=True)
class Reading:
    """One typed measurement (see the module docstring). Built checked: a `Reading`
    that exists is a valid one."""

    name: str
    value: Value
    unit: str = ""
    quality: Quality = Quality.GOOD
    source_ms: int = 0
    agent_ms: int = 0
    kind: Kind = Kind.FLOAT

    def __post_init__(self) -> None:
        _check_text("name", self.name, MAX_NAME, empty=False)
        _check_text("unit", self.unit, MAX_UNIT, empty=True)
        if not self.unit.isascii() or " " in self.unit:
            raise ReadingError(f"unit: {self.unit!r} is not a UCUM code (ASCII, no spaces)")
        if not isinstance(self.quality, Quality):
            raise ReadingError("quality: a Quality")
        if not isinstance(self.kind, Kind):
            raise ReadingError("kind: a Kind")
        _check_value(self.kind, self.value)
        _check_ms("source_ms", self.source_ms)
        _check_ms("agent_ms", self.agent_ms)

    @classmethod
    def of(
        cls,
        name: str,
        value: object,
        unit: str = "",
        *,
        quality: Quality = Quality.GOOD,
        source_ms: int | None = None,
        agent_ms: int = 0,
    ) -> Reading:
        """A reading of `value`, its kind taken from the Python type (a list becomes a
        tuple); `source_ms` defaults to now."""
        kind = kind_of(value)
        if kind.is_array:
            value = tuple(value)  # type: ignore[arg-type]
        if source_ms is None:
            source_ms = now_ms()
        return cls(name, value, unit, quality, source_ms, agent_ms, kind)  # type: ignore[arg-type]

    def stamped(self, agent_ms: int) -> Reading:
        """This reading as the agent took it at `agent_ms`."""
        return replace(self, agent_ms=agent_ms)

    def encode(self) -> bytes:
        """The canonical encoding (the module docstring)."""
        value: Any = list(self.value) if self.kind.is_array else self.value  # type: ignore[arg-type]
        return bytes(
            _packer.pack(
                [
                    READING_VERSION,
                    self.name,
                    int(self.kind),
                    value,
                    self.unit,
                    int(self.quality),
                    self.source_ms,
                    self.agent_ms,
                ]
            )
        )

    def value_text(self) -> str:
        """The value as a person reads it (floats shortest-exact, arrays bracketed)."""
        if self.kind.is_array:
            return "[" + ", ".join(_scalar_text(v) for v in self.value) + "]"  # type: ignore[union-attr]
        return _scalar_text(self.value)

    def describe(self) -> str:
        """One line: ``name = value unit (quality, measured TIME)``."""
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.name} = {self.value_text()}{unit} "
            f"({self.quality.label}, measured {iso_ms(self.source_ms)})"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: name, kind, value (NaN/inf as strings), unit, quality and
        both times as ISO 8601 and milliseconds."""
        return {
            "name": self.name,
            "kind": self.kind.name.lower(),
            "value": _json_value(self.value),
            "unit": self.unit,
            "quality": self.quality.label,
            "source_time": iso_ms(self.source_ms),
            "source_ms": self.source_ms,
            "agent_time": iso_ms(self.agent_ms),
            "agent_ms": self.agent_ms,
        }


def reading_from_json(document: dict[str, Any]) -> Reading:
    """The reading `Reading.to_json` wrote (raises `ReadingError` if it is not one)."""
    try:
        kind = Kind[str(document["kind"]).upper()]
        raw = document["value"]
        convert = _FROM_JSON[kind.element]
        value = tuple(convert(v) for v in raw) if kind.is_array else convert(raw)
        return Reading(
            str(document["name"]),
            value,
            str(document["unit"]),
            Quality.parse(str(document["quality"])),
            int(document["source_ms"]),
            int(document["agent_ms"]),
            kind,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ReadingError(f"not a reading document: {exc}") from None


def _exact(cls: type) -> Any:
    def convert(v: object) -> object:
        if type(v) is not cls:
            raise TypeError(f"{v!r} is not a {cls.__name__}")
        return v

    return convert


_FROM_JSON: dict[Kind, Any] = {
    Kind.BOOL: _exact(bool),
    Kind.INT: _exact(int),
    Kind.FLOAT: lambda v: float(v) if type(v) in (int, float, str) else _exact(float)(v),
    Kind.STRING: _exact(str),
}


def decode_reading(data: bytes) -> Reading:
    """The reading `data` encodes; raises `ReadingError` for anything but a canonical
    version-1 encoding of a valid reading."""
    if type(data) is not bytes:
        raise ReadingError("a reading is bytes")
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:  # ExtraData is a ValueError
        raise ReadingError(f"not MessagePack: {exc}") from None
    if type(items) is not list or len(items) != 8:
        raise ReadingError("not a reading: expected an array of 8")
    version, name, kind, value, unit, quality, source_ms, agent_ms = items
    if type(version) is not int or version != READING_VERSION:
        raise ReadingError(f"version {version!r}, this agent reads {READING_VERSION}")
    if type(kind) is not int or kind not in Kind._value2member_map_:
        raise ReadingError(f"kind: {kind!r} is not a known kind")
    if type(quality) is not int or quality not in Quality._value2member_map_:
        raise ReadingError(f"quality: {quality!r} is not a known quality")
    if Kind(kind).is_array:
        if type(value) is not list:
            raise ReadingError("value: an array kind needs an array")
        value = tuple(value)
    reading = Reading(name, value, unit, Quality(quality), source_ms, agent_ms, Kind(kind))
    if reading.encode() != data:
        raise ReadingError("not canonical: re-encoding differs")
    return reading


def readings_stream(service: str) -> str:
    """The log stream a feed's readings are signed on."""
    return READINGS_PREFIX + service


def now_ms() -> int:
    """The wall clock in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def iso_ms(ms: int) -> str:
    """`ms` since the epoch as ISO 8601 UTC with milliseconds (``...T12:00:00.123Z``)."""
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _scalar_text(value: object) -> str:
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is float:
        return repr(value) if math.isfinite(value) else str(value)
    if type(value) is str:
        return value if value.isprintable() and value.strip() == value and value else repr(value)
    return str(value)


def _json_value(value: object) -> object:
    if type(value) is tuple:
        return [_json_value(v) for v in value]
    if type(value) is float and not math.isfinite(value):
        return str(value)
    return value


__all__ = [
    "MAX_ARRAY",
    "MAX_NAME",
    "MAX_TEXT",
    "MAX_UNIT",
    "READINGS_PREFIX",
    "READING_VERSION",
    "Kind",
    "Quality",
    "Reading",
    "ReadingError",
    "Value",
    "decode_reading",
    "iso_ms",
    "kind_of",
    "now_ms",
    "reading_from_json",
    "readings_stream",
]
