"""The anchor output: exact bytes, strict parsing, one anchor per transaction."""

from __future__ import annotations

import pytest
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_output import TransactionOutput

from mesh.anchoring.payload import (
    ANCHOR_TAG,
    AnchorFormatError,
    AnchorPayload,
    anchors_in,
    find_anchor,
    parse_anchor_script,
)
from tests.anchoring.helpers import PRODUCER

PAYLOAD = AnchorPayload(PRODUCER.public_key, "vibration", 1000, 1999, bytes(range(32)))


def test_script_layout_is_exactly_as_documented() -> None:
    script = PAYLOAD.script()
    expected = (
        b"\x00\x6a"
        + bytes([len(ANCHOR_TAG)])
        + ANCHOR_TAG
        + b"\x01\x01"
        + b"\x21"
        + PRODUCER.public_key
        + b"\x09vibration"
        + b"\x08"
        + (1000).to_bytes(8, "big")
        + b"\x08"
        + (1999).to_bytes(8, "big")
        + b"\x20"
        + bytes(range(32))
    )
    assert script == expected
    assert len(script) == 113  # 104 + the stream name
    assert parse_anchor_script(script) == PAYLOAD
    assert PAYLOAD.count == 1000


@pytest.mark.parametrize(
    "script",
    [
        b"\x00\x6a\x04abcd",  # another protocol
        PAYLOAD.script() + b"\x01\x00",  # a seventh field
        PAYLOAD.script()[:-1],  # truncated root
        PAYLOAD.script().replace(b"\x01\x01\x21", b"\x01\x02\x21", 1),  # version 2
        PAYLOAD.script().replace(b"\x09vibration", b"\x4c\x09vibration", 1),  # non-minimal
        PAYLOAD.script().replace(b"\x09vibration", b"\x09vibr tion", 1),  # bad stream
        PAYLOAD.script().replace(
            b"\x08" + (1000).to_bytes(8, "big"), b"\x08" + (3000).to_bytes(8, "big"), 1
        ),
        PAYLOAD.script()[:16] + b"\x51" + PAYLOAD.script()[17:],  # an opcode, not a push
    ],
)
def test_anything_else_is_refused(script: bytes) -> None:
    with pytest.raises(AnchorFormatError):
        parse_anchor_script(script)


def test_a_transaction_carries_exactly_one_anchor() -> None:
    def tx(*scripts: bytes) -> Transaction:
        return Transaction([], [TransactionOutput(Script(s), 0) for s in scripts])

    other = b"\x76\xa9\x14" + bytes(20) + b"\x88\xac"
    assert find_anchor(tx(other, PAYLOAD.script())) == (1, PAYLOAD)
    with pytest.raises(AnchorFormatError, match="found 0"):
        find_anchor(tx(other))
    with pytest.raises(AnchorFormatError, match="found 2"):
        find_anchor(tx(PAYLOAD.script(), PAYLOAD.script()))


def test_a_transaction_may_anchor_several_streams_one_output_each() -> None:
    readings = AnchorPayload(PRODUCER.public_key, "readings/v", 0, 999, bytes(32))
    meters = AnchorPayload(PRODUCER.public_key, "meters", 0, 9, bytes(range(32)))
    tx = Transaction([], [TransactionOutput(Script(p.script()), 1) for p in (readings, meters)])
    agent = PRODUCER.public_key
    assert find_anchor(tx, agent, "meters", 5) == (1, meters)
    assert find_anchor(tx, agent, "readings/v", 5) == (0, readings)
    with pytest.raises(AnchorFormatError, match="stream 'meters' seq 10, found 0"):
        find_anchor(tx, agent, "meters", 10)
    with pytest.raises(AnchorFormatError, match="found 2"):
        find_anchor(tx)  # no stream named: a proof must not have to choose
    assert [a for _, a in anchors_in(tx)] == [readings, meters]
