"""The buyer's delivery check across orders: replays and stale readings refused, two
orders of one feed at once counting their interleaved seqs in either order."""

from __future__ import annotations

import pytest

from agents.services.delivery import DeliveryCheck, DeliveryViolation, Expected, SeqMemory
from agents.services.frames import ServiceDelivery
from mesh.anchoring.record import Record as AnchorRecord
from mesh.anchoring.record import sign_record
from mesh.identity import Identity
from mesh.readings import Reading

SELLER = Identity.generate()


def delivery(seq: int, payload: bytes | None = None) -> ServiceDelivery:
    if payload is None:
        payload = Reading.of("rms_velocity", seq / 10, "mm/s", source_ms=seq).encode()
    record = AnchorRecord(SELLER.public_key, "readings/svc", seq, 0, payload, bytes(32))
    signed = sign_record(SELLER, record)
    return ServiceDelivery(b"o" * 16, 1, 1, signed.body, signed.signature)


def order(seqs: SeqMemory, units: int = 1000) -> DeliveryCheck:
    return DeliveryCheck(Expected("data-feed", "svc", SELLER.peer_id, units, 0.01), 0.0, seqs)


def test_two_orders_of_one_feed_count_interleaved_seqs_in_either_order() -> None:
    seqs = SeqMemory()
    first, second = order(seqs), order(seqs)
    assert first.accept(delivery(24), 1.0) is not None  # the seller logged 23 for `second`
    assert second.accept(delivery(23), 1.0) is not None  # ... which its task counts later
    assert (first.counted, second.counted) == (1, 1)


@pytest.mark.parametrize("seq", [23, 24])
def test_a_reading_counted_once_across_orders(seq: int) -> None:
    seqs = SeqMemory()
    order(seqs).accept(delivery(24), 1.0)
    order(seqs).accept(delivery(23), 1.0)
    with pytest.raises(DeliveryViolation, match=f"reading seq {seq} again"):
        order(seqs).accept(delivery(seq), 1.0)


def test_a_stale_reading_is_refused_and_memory_stays_bounded() -> None:
    seqs = SeqMemory()
    check = order(seqs, units=10_000)
    for seq in range(0, 5000, 2):  # every other seq: the odd ones stay unaccepted
        check.accept(delivery(seq), 1.0)
    with pytest.raises(DeliveryViolation, match="stale"):
        order(seqs).accept(delivery(4998 - SeqMemory.REORDER - 1), 1.0)
    order(seqs).accept(delivery(4998 - SeqMemory.REORDER + 1), 1.0)  # within the window
    assert all(len(below) <= SeqMemory.REORDER for below in seqs._below.values())


@pytest.mark.parametrize(
    "payload",
    [
        b'{"rms_mm_s": 2.5}',  # an untyped reading (what every feed sent before protocol 7)
        Reading.of("x", 1.0).encode()[:-1],  # truncated
        b"\x98\x01\xa1x\x02\xca\x3f\x80\x00\x00\xa0\x00\x00\x00",  # not canonical
    ],
)
def test_a_signed_record_that_is_not_a_typed_reading_is_not_paid(payload: bytes) -> None:
    check = order(SeqMemory())
    with pytest.raises(DeliveryViolation, match="not a typed reading"):
        check.accept(delivery(7, payload), 1.0)
    assert check.counted == 0
