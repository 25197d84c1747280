"""Typed readings: one canonical encoding, strict decoding, every value kind."""

from __future__ import annotations

import contextlib
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.readings import (
    MAX_ARRAY,
    Kind,
    Quality,
    Reading,
    ReadingError,
    decode_reading,
    reading_from_json,
)

AT = {"source_ms": 1_796_558_400_123, "agent_ms": 1_796_558_400_200}
VALUES = [
    True,
    -(1 << 63),
    (1 << 63) - 1,
    2.31,
    math.inf,
    "RUN",
    (True, False),
    (1, -2),
    (0.5,),
    (),
]


@pytest.mark.parametrize("value", VALUES)
def test_every_kind_round_trips_through_bytes_and_json(value: object) -> None:
    reading = Reading.of("spindle/load", value, "%", quality=Quality.UNCERTAIN, **AT)
    assert decode_reading(reading.encode()) == reading
    assert reading_from_json(reading.to_json()) == reading


def test_the_kind_is_explicit_an_int_stays_an_int() -> None:
    assert Reading.of("n", 3).kind is Kind.INT and Reading.of("x", 3.0).kind is Kind.FLOAT
    assert Reading.of("a", []).kind is Kind.FLOAT_ARRAY
    as_float = Reading("x", 3.0, kind=Kind.FLOAT).encode()
    assert decode_reading(as_float).value == 3.0 and type(decode_reading(as_float).value) is float
    with pytest.raises(ReadingError, match="is not a float"):
        Reading("x", 3, kind=Kind.FLOAT)


def _raw(*items: object) -> bytes:
    return bytes(msgpack.packb(list(items), use_bin_type=True))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not MessagePack"),
        (b"\xc1", "not MessagePack"),
        (_raw(2, "x", 2, 1.0, "", 0, 0, 0), "version 2"),
        (_raw(1, "x", 9, 1.0, "", 0, 0, 0), "kind: 9"),
        (_raw(1, "x", 2, 1.0, "", 3, 0, 0), "quality: 3"),
        (_raw(1, "x", 1, 1.0, "", 0, 0, 0), "is not an int"),
        (_raw(1, "", 2, 1.0, "", 0, 0, 0), "name"),
        (_raw(1, "x\n", 2, 1.0, "", 0, 0, 0), "control characters"),
        (_raw(1, "x", 2, 1.0, "mm per s", 0, 0, 0), "UCUM"),
        (_raw(1, "x", 2, 1.0, "", 0, -1, 0), "source_ms"),
        (_raw(1, "x", 5, [1, 2.5], "", 0, 0, 0), r"value\[1\]"),
        (_raw(1, "x", 5, [0] * (MAX_ARRAY + 1), "", 0, 0, 0), "more than"),
        (_raw(1, "x", 2, 1.0, "", 0, 0, 0) + b"\x00", "not MessagePack"),
        # 1.0 as float32: a valid value, but not the canonical (float64) encoding
        (b"\x98\x01\xa1x\x02\xca\x3f\x80\x00\x00\xa0\x00\x00\x00", "not canonical"),
        (b"\x98\x01\xa1x\x01\xd1\x00\x01\xa0\x00\x00\x00", "not canonical"),  # int16 for 1
    ],
)
def test_anything_but_a_canonical_valid_reading_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(ReadingError, match=problem):
        decode_reading(data)


def test_the_described_line_is_what_a_person_reads() -> None:
    reading = Reading.of("rms_velocity", 2.5, "mm/s", **AT)
    assert reading.describe() == "rms_velocity = 2.5 mm/s (good, measured 2026-12-06T12:00:00.123Z)"
    assert Reading.of("state", "a\x1bb", quality=Quality.BAD, **AT).value_text() == "'a\\x1bb'"
    assert Reading.of("flags", [True, False], **AT).value_text() == "[true, false]"
    assert reading.to_json()["source_time"] == "2026-12-06T12:00:00.123Z"


scalars = st.one_of(
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=50),
)
values = st.one_of(
    scalars,
    st.lists(st.booleans(), max_size=5),
    st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=5),
    st.lists(st.floats(allow_nan=False), max_size=5),
)


@given(value=values, quality=st.sampled_from(Quality), ms=st.integers(0, (1 << 63) - 1))
def test_any_reading_decodes_to_itself(value: object, quality: Quality, ms: int) -> None:
    reading = Reading.of("m", value, "Cel", quality=quality, source_ms=ms, agent_ms=ms)
    assert decode_reading(reading.encode()) == reading


@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(ReadingError):
        decode_reading(data)
