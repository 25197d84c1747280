"""The wire schema: round trips, msgpack compatibility, and a decoder that only
ever raises RemoteProtocolError on peer garbage."""

from __future__ import annotations

import contextlib
import random
import typing
from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agents.services.frames
import mesh.certs.frames
import mesh.channel.frames
import mesh.workflow.frames
from mesh.anchoring.frames import ReceiptRequest
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.session_frames import Heartbeat, Hello, Message, ProfileSummary
from mesh.wire import FRAME_TYPES, MAX_FRAME_SIZE, Frame, Struct, decode, encode

LAYERS = {  # each layer owns its frames and a range of tags
    "mesh.session_frames": range(1, 10),
    "mesh.channel.frames": range(20, 30),
    "agents.services.frames": range(30, 40),
    "mesh.anchoring.frames": range(40, 50),
    "mesh.certs.frames": range(50, 60),
    "mesh.workflow.frames": range(60, 70),
}


def test_every_layer_registers_its_own_frames_in_its_own_tag_range() -> None:
    assert agents.services.frames.ServiceOrder.TAG == 30  # imported: registered
    assert mesh.channel.frames.ChannelPay.TAG in LAYERS["mesh.channel.frames"]
    owners = {cls.__module__ for cls in FRAME_TYPES.values()}
    assert owners == set(LAYERS), owners  # every layer is in the fuzzed table below
    for tag, cls in FRAME_TYPES.items():
        assert tag in LAYERS[cls.__module__], (tag, cls)
    assert mesh.certs.frames.ProofRequest.TAG in LAYERS["mesh.certs.frames"]
    assert mesh.workflow.frames.Verdict.TAG in LAYERS["mesh.workflow.frames"]
    assert len(FRAME_TYPES) == 32


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for any type the wire schema allows."""
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-(2**63), 2**64 - 1)
    if hint is str:
        return st.text(max_size=40)
    if hint is bytes:
        return st.binary(max_size=80)
    if hint is float:
        return st.floats(allow_nan=False)
    if isinstance(hint, type) and issubclass(hint, Struct):
        hints = typing.get_type_hints(hint)
        return st.builds(hint, *(strategy_for(hints[f.name]) for f in fields(hint)))  # type: ignore[arg-type]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return st.lists(strategy_for(args[0]), max_size=5).map(tuple)
    inner = next(a for a in args if a is not type(None))
    return st.none() | strategy_for(inner)


any_frame = st.one_of(*(strategy_for(cls) for cls in FRAME_TYPES.values()))


def as_plain(value: Any) -> Any:
    """What an independent MessagePack decoder should see for a value."""
    if isinstance(value, Struct):
        return [as_plain(getattr(value, f.name)) for f in fields(value)]  # type: ignore[arg-type]
    if isinstance(value, tuple):
        return [as_plain(v) for v in value]
    return value


@settings(max_examples=300)
@given(any_frame)
def test_every_frame_round_trips(frame: Frame) -> None:
    assert decode(encode(frame)) == frame


@settings(max_examples=300)
@given(any_frame)
def test_independent_msgpack_decoder_agrees(frame: Frame) -> None:
    """A plain msgpack decode (no schema) sees [tag, *fields], nested as arrays."""
    plain = msgpack.unpackb(encode(frame), raw=False)
    assert plain == [frame.TAG, *as_plain(frame)]


def test_golden_bytes() -> None:
    """Pin the wire format byte for byte, independent of any codec library."""
    assert encode(Heartbeat(seq=5, reply=True)) == bytes([0x93, 0x04, 0x05, 0xC3])
    assert encode(Message(topic="t", body=b"\x00\x01")) == bytes(
        [0x93, 0x06, 0xA1, ord("t"), 0xC4, 0x02, 0x00, 0x01]
    )
    assert encode(ReceiptRequest(stream="s", seqs=(1, 300))) == bytes(
        [0x93, 0x28, 0xA1, ord("s"), 0x92, 0x01, 0xCD, 0x01, 0x2C]
    )


def test_every_tag_is_unique_and_every_type_registered() -> None:
    assert len({cls.TAG for cls in FRAME_TYPES.values()}) == len(FRAME_TYPES)
    assert all(tag == cls.TAG for tag, cls in FRAME_TYPES.items())
    assert {"HandshakeStart", "Hello", "Error", "Heartbeat"} <= {
        c.__name__ for c in FRAME_TYPES.values()
    }


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b"", "frame", "MessagePack"),
        (msgpack.packb([99, 1]), "frame.tag", "unknown frame tag 99"),
        (msgpack.packb(["4", 1, True]), "frame.tag", "unknown"),
        (msgpack.packb([True, 1]), "frame.tag", "unknown"),
        (msgpack.packb({"a": 1}), "frame", "array"),
        (msgpack.packb([]), "frame", "array"),
        (msgpack.packb([4, 1]), "Heartbeat", "expected 2 fields, got 1"),
        (msgpack.packb([4, 1, 1]), "Heartbeat.reply", "expected bool, got int"),
        (msgpack.packb([4, True, True]), "Heartbeat.seq", "expected int, got bool"),
        (msgpack.packb([6, "t", "body"]), "Message.body", "expected bytes, got str"),
        (msgpack.packb([4, 1, True]) + b"\x00", "frame", "trailing bytes"),
        (msgpack.packb([4, 1, True])[:-1], "frame", "MessagePack"),
        (
            msgpack.packb([2, 1, b"k", b"s", "m", ["n", ["a", 3]], "default", ""]),
            "Hello.profile.services[1]",
            "expected str, got int",
        ),
        (
            msgpack.packb([2, 1, b"k", b"s", "m", ["n"], "default", ""]),
            "Hello.profile",
            "expected 2 fields",
        ),
        (
            msgpack.packb([2, 1, b"k", b"s", "m", 7, "default", ""]),
            "Hello.profile",
            "expected ProfileSummary",
        ),
        (msgpack.packb([2, 1, b"k", b"s", "m", ["n", []], 5, ""]), "Hello.site", "expected str"),
        (b"\x91" * 5000, "frame", "MessagePack"),
        (b"\xdd\xff\xff\xff\xff", "frame", "MessagePack"),
        (b"\xc4" + b"\x00" * (MAX_FRAME_SIZE + 1), "frame", "exceeds max"),
        (msgpack.packb([6, "t", msgpack.ExtType(1, b"x")]), "Message.body", "ExtType"),
    ],
)
def test_malformed_frames_name_field_and_reason(data: bytes, field: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.field == field
    assert reason in info.value.reason


def test_encoding_an_oversized_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="max"):
        encode(Message(topic="big", body=bytes(MAX_FRAME_SIZE)))
    with pytest.raises(LocalProtocolError):
        encode(Heartbeat(seq=2**70, reply=False))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            buf = buf[:pos]
        else:
            buf[pos:pos] = bytes([rng.choice([0x91, 0xDC, 0xDD, 0xC4, 0xC5, 0xDE, 0xD9, 0xC7])])
    return bytes(buf)


def test_ten_thousand_mutated_inputs_raise_only_remote_protocol_error() -> None:
    rng = random.Random(20261125)
    seeds = [
        encode(
            Hello(
                1, b"\x02" * 33, b"sig", "tcp://127.0.0.1:1", ProfileSummary("n", ("a",)), "s", ""
            )
        ),
        encode(Heartbeat(1, False)),
        encode(Message("topic", b"x" * 50)),
    ]
    outcomes = {"ok": 0, "error": 0}
    for i in range(10_000):
        data = rng.randbytes(rng.randint(0, 64)) if i % 4 == 0 else _mutate(rng, rng.choice(seeds))
        try:
            decode(data)
            outcomes["ok"] += 1
        except RemoteProtocolError as exc:
            assert exc.field and exc.reason
            outcomes["error"] += 1
    assert outcomes["error"] > 5_000


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(data)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000)
@given(st.sampled_from(sorted(FRAME_TYPES)), st.lists(json_like, max_size=6))
def test_well_formed_msgpack_with_wrong_shapes(tag: int, values: list[Any]) -> None:
    """Valid MessagePack, known tag, arbitrary field values: typed error or a valid frame."""
    try:
        frame = decode(msgpack.packb([tag, *values]))
    except RemoteProtocolError:
        return
    assert decode(encode(frame)) == frame
