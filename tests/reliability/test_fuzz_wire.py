"""Fuzzing the wire decoder, the one door from peer bytes to frames.

Inputs: raw random bytes, encodings of valid frames of every type with random
mutations (bit flips, insertions, deletions, truncations, MessagePack type markers),
well-formed MessagePack with a known tag but arbitrary field values, and size bombs
(container headers that promise far more than the frame carries). The property: the
decoder returns a fully typed frame that re-encodes to the same frame, or raises
`RemoteProtocolError` naming a field and a reason -- nothing else, never slowly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import RemoteProtocolError
from mesh.wire import FRAME_TYPES, MAX_FRAME_SIZE, decode, encode
from tests.reliability.budget import CI_EXAMPLES, SLOW_EXAMPLES, fuzz_settings
from tests.test_wire import any_frame

MARKERS = (0x90, 0x91, 0x9F, 0xC0, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xD9, 0xDC, 0xDD, 0xDE)
"""MessagePack type bytes worth splicing in: arrays, maps, bins, strs, ext, nil, bools."""
SLOW_DECODE = 0.05
"""Seconds: no single frame may take longer than this to decode or refuse."""


@dataclass
class Tally:
    """What one fuzz run tried, for the assertions and for SECURITY.md."""

    inputs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    slowest: float = 0.0

    def add(self, outcome: str, seconds: float = 0.0) -> None:
        self.inputs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.slowest = max(self.slowest, seconds)


@st.composite
def mutated_frame(draw: st.DrawFn) -> bytes:
    """A valid frame's encoding with one to four random edits."""
    data = bytearray(encode(draw(any_frame)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "marker"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[pos % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = bytes([draw(st.sampled_from(MARKERS))])
    return bytes(data)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=25,
)


@st.composite
def wrong_shapes(draw: st.DrawFn) -> bytes:
    """Valid MessagePack: a known tag and arbitrary values in its fields."""
    tag = draw(st.sampled_from(sorted(FRAME_TYPES)))
    values = draw(st.lists(json_like, max_size=12))
    packed: bytes = msgpack.packb([tag, *values], use_bin_type=draw(st.booleans()))
    return packed


@st.composite
def bombs(draw: st.DrawFn) -> bytes:
    """Headers that promise huge containers, nested deep or long, near the size limit."""
    kind = draw(st.sampled_from(["array32", "map32", "bin32", "str32", "nested", "wide"]))
    if kind == "nested":
        return bytes([0x91]) * draw(st.integers(1, MAX_FRAME_SIZE))
    if kind == "wide":
        count = draw(st.integers(0, 0xFFFF))
        body = bytes([draw(st.sampled_from([0xC0, 0x00, 0x90, 0xC3]))]) * count
        return bytes([0xDC]) + count.to_bytes(2, "big") + body
    marker = {"array32": 0xDD, "map32": 0xDF, "bin32": 0xC6, "str32": 0xDB}[kind]
    claimed = draw(st.integers(0, 2**32 - 1))
    return bytes([marker]) + claimed.to_bytes(4, "big") + draw(st.binary(max_size=64))


SOURCES: dict[str, st.SearchStrategy[bytes]] = {
    "random": st.binary(max_size=512),
    "mutated": mutated_frame(),
    "wrong-shape": wrong_shapes(),
    "bomb": bombs(),
    "valid": any_frame.map(encode),
}
peer_bytes = st.sampled_from(sorted(SOURCES)).flatmap(
    lambda name: st.tuples(st.just(name), SOURCES[name])
)


def check_decoder(source: str, data: bytes, tally: Tally) -> None:
    """One input: a typed frame that round-trips, or a RemoteProtocolError -- quickly."""
    started = time.perf_counter()
    try:
        frame: Any = decode(data)
    except RemoteProtocolError as exc:
        assert exc.field and exc.reason, f"an error must name field and reason: {exc!r}"
        outcome = "rejected"
    else:
        assert type(frame) in FRAME_TYPES.values()
        assert decode(encode(frame)) == frame
        outcome = "accepted"
    elapsed = time.perf_counter() - started
    assert elapsed < SLOW_DECODE, f"{len(data)} bytes took {elapsed:.3f} s"
    tally.add(f"{source}:{outcome}", elapsed)


def run_decoder_fuzz(examples: int) -> Tally:
    tally = Tally()

    @fuzz_settings(examples)
    @given(peer_bytes)
    def fuzz(sourced: tuple[str, bytes]) -> None:
        check_decoder(*sourced, tally)

    fuzz()
    print(f"\nwire decoder: {tally.inputs} inputs {tally.outcomes}, slowest {tally.slowest:.4f} s")
    return tally


def test_decoder_returns_typed_frames_or_remote_errors() -> None:
    """The decoder never raises anything but RemoteProtocolError on 1 000 hostile inputs,
    every accepted frame round-trips, and both outcomes occur (the inputs reach the
    schema checks, not just the MessagePack parser)."""
    tally = run_decoder_fuzz(CI_EXAMPLES)
    assert tally.inputs >= CI_EXAMPLES
    accepted = sum(n for k, n in tally.outcomes.items() if k.endswith(":accepted"))
    assert accepted > 50 and tally.inputs - accepted > 300


@pytest.mark.slow
def test_decoder_fuzz_slow() -> None:
    """The same property over 100 000 inputs."""
    tally = run_decoder_fuzz(SLOW_EXAMPLES)
    assert tally.inputs >= SLOW_EXAMPLES
