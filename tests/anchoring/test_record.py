"""Records: one canonical body per record, a hash that is what is signed, strict decoding."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from mesh.anchoring.errors import RecordError
from mesh.anchoring.record import (
    GENESIS,
    MAX_PAYLOAD,
    Record,
    decode_record,
    open_record,
    record_hash,
    sign_record,
)
from mesh.identity import verify_digest
from tests.anchoring.helpers import BUYER, PRODUCER

AGENT = PRODUCER.public_key


def _record(**changes: object) -> Record:
    fields: dict[str, object] = {
        "agent": AGENT,
        "stream": "vibration",
        "seq": 3,
        "timestamp_ms": 1_700_000_000_123,
        "payload": b"\x01\x02rms=4.2",
        "prev": bytes(range(32)),
    }
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]


def test_body_is_the_canonical_msgpack_array_and_hash_is_tagged_sha256() -> None:
    record = _record()
    body = record.encode()
    # Independently: msgpack's smallest encodings, bin type for bytes, fixed field order.
    expected = msgpack.packb(
        [1, AGENT, "vibration", 3, 1_700_000_000_123, b"\x01\x02rms=4.2", bytes(range(32))],
        use_bin_type=True,
    )
    assert body == expected
    assert body[0] == 0x97  # fixarray of 7
    assert body[1] == 0x01  # version 1, positive fixint
    assert body[2:4] == b"\xc4\x21"  # bin8 of 33 bytes: the agent key
    assert record_hash(body) == hashlib.sha256(b"m2mesh-record\x00" + body).digest()


def test_sign_and_open_round_trip() -> None:
    signed = sign_record(PRODUCER, _record())
    assert verify_digest(AGENT, signed.hash, signed.signature)
    opened = open_record(signed.body, signed.signature)
    assert opened.record == signed.record and opened.hash == signed.hash
    assert opened.signature_valid()


def test_a_record_is_signed_by_its_own_agent_only() -> None:
    with pytest.raises(RecordError) as caught:
        sign_record(BUYER, _record())
    assert caught.value.field == "agent"


def test_open_refuses_another_agents_signature() -> None:
    signed = sign_record(PRODUCER, _record())
    forged = BUYER.sign_digest(signed.hash)
    with pytest.raises(RecordError) as caught:
        open_record(signed.body, forged)
    assert caught.value.field == "signature"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # seq 3 as uint16 instead of a fixint: same value, not canonical
        (
            b"\x97\x01\xc4\x21"
            + AGENT
            + b"\xa9vibration\xcd\x00\x03\xcf"
            + (1_700_000_000_123).to_bytes(8, "big")
            + b"\xc4\x00\xc4\x20"
            + bytes(32),
            "body",
        ),
        (msgpack.packb([2, AGENT, "s", 0, 0, b"", GENESIS], use_bin_type=True), "version"),
        (msgpack.packb([1, AGENT, "s", 0, 0, "text", GENESIS], use_bin_type=True), "payload"),
        (msgpack.packb([1, AGENT, "s", -1, 0, b"", GENESIS], use_bin_type=True), "seq"),
        (msgpack.packb([1, AGENT, "s", True, 0, b"", GENESIS], use_bin_type=True), "seq"),
        (msgpack.packb([1, AGENT, "s", 1.0, 0, b"", GENESIS], use_bin_type=True), "seq"),
        (msgpack.packb([1, AGENT[:32], "s", 0, 0, b"", GENESIS], use_bin_type=True), "agent"),
        (msgpack.packb([1, AGENT, "bad stream", 0, 0, b"", GENESIS], use_bin_type=True), "stream"),
        (msgpack.packb([1, AGENT, "s", 0, 0, b"", b"\x01" * 32], use_bin_type=True), "prev"),
        (msgpack.packb([1, AGENT, "s", 1, 0, b"", b"\x01" * 31], use_bin_type=True), "prev"),
        (msgpack.packb([1, AGENT, "s", 0, 0, b""], use_bin_type=True), "body"),
        (msgpack.packb({"v": 1}, use_bin_type=True), "body"),
        (msgpack.packb([1, AGENT, "s", 0, 0, b"", GENESIS], use_bin_type=True) + b"\x00", "body"),
        (msgpack.packb([1, AGENT, "s", 0, 0, b"", GENESIS], use_bin_type=True)[:-5], "body"),
        (b"", "body"),
        (b"\xc1", "body"),
    ],
)
def test_decode_refuses_anything_but_a_canonical_record(body: bytes, field: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode_record(body)
    assert caught.value.field == field


def test_field_rules() -> None:
    _record(seq=0, prev=GENESIS)
    _record(stream="meter/0a1b2c:ch-1@mill.3", payload=b"x" * MAX_PAYLOAD)
    cases: list[tuple[dict[str, object], str]] = [
        ({"payload": b"x" * (MAX_PAYLOAD + 1)}, "payload"),
        ({"stream": ""}, "stream"),
        ({"stream": "a" * 101}, "stream"),
        ({"stream": "-leading"}, "stream"),
        ({"stream": "ünïcode"}, "stream"),
        ({"seq": 2**63}, "seq"),
        ({"timestamp_ms": -1}, "timestamp_ms"),
        ({"seq": 0}, "prev"),  # seq 0 must link to genesis
        ({"agent": b"\x02" + b"\xff" * 32}, "agent"),  # not on the curve
    ]
    for changes, field in cases:
        with pytest.raises(RecordError) as caught:
            _record(**changes)
        assert caught.value.field == field, changes
