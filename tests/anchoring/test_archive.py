"""A data-feed buyer keeps signed readings and proves them with the producer's receipts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mesh.anchoring.archive import BuyerArchive
from mesh.anchoring.batch import BatchPolicy, batch_levels
from mesh.anchoring.errors import NotAnchored, ReceiptRejected, RecordNotFound, RecordRejected
from mesh.anchoring.hashchain import StreamWriter
from mesh.anchoring.proof import verify_proof
from mesh.anchoring.receipt import (
    MAX_RECEIPT_PATHS,
    AnchorReceipt,
    ReceiptPath,
    make_receipts,
    paths_per_receipt,
)
from mesh.anchoring.record import Record, sign_record
from mesh.anchoring.service import AnchorConfig
from mesh.wire import decode, encode
from tests.anchoring.helpers import BUYER, PRODUCER, create_ledger, open_store, running_anchorer

P = PRODUCER.public_key


async def test_a_buyer_proves_the_readings_it_kept_without_the_producer(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=10, max_age=1e9))
    with open_store(tmp_path / "buyer") as buyer_store:
        archive = BuyerArchive(buyer_store)
        async with running_anchorer(tmp_path / "producer", ledger, config=config) as run:
            records = await run.anchorer.log_many("vibration", [b"rms=%d" % i for i in range(30)])
            delivered = records[::3]  # this buyer got every third reading
            for record in delivered:
                kept = archive.keep(record.body, record.signature, producer=P)
                assert kept.stored and kept.findings == ()
            with pytest.raises(NotAnchored, match="no receipt from the producer yet"):
                archive.proof(P, "vibration", 0)
            await run.anchorer.anchor_now()
            await run.chain.mine()
            await run.anchorer.wait_mined()
            seqs = [r.seq for r in delivered]
            receipts = await run.anchorer.receipts("vibration", seqs)
            headers = run.headers()
        assert len(receipts) == 3  # one per batch
        assert sum(archive.accept_receipt(P, r) for r in receipts) == len(delivered)
        for seq in seqs:
            verified = verify_proof(archive.proof(P, "vibration", seq), headers)
            assert verified.record.seq == seq and verified.record.agent == P
        with pytest.raises(RecordNotFound):  # never delivered to this buyer
            archive.proof(P, "vibration", 1)
        summary = {s.stream: s for s in archive.records.streams()}["vibration"]
        assert summary.origin == "kept" and summary.records == len(delivered)
        # Per batch, the span of the seqs held (read from three batch rows, not 10 records).
        assert summary.anchored == [(0, 9), (12, 18), (21, 27)] and summary.unanchored == 0


def test_keep_names_duplicates_forks_and_reorders(tmp_path: Path) -> None:
    writer = StreamWriter(PRODUCER)
    records = [writer.append("vibration", b"r%d" % i, i) for i in range(4)]
    fork = sign_record(PRODUCER, Record(P, "vibration", 2, 9, b"another story", records[1].hash))
    with open_store(tmp_path / "buyer") as store:
        archive = BuyerArchive(store)
        archive.keep(records[0].body, records[0].signature)
        archive.keep(records[2].body, records[2].signature)
        late = archive.keep(records[1].body, records[1].signature)
        assert late.stored and [f.kind for f in late.findings] == ["reorder"]
        again = archive.keep(records[2].body, records[2].signature)
        assert not again.stored and [f.kind for f in again.findings] == ["duplicate"]
        forked = archive.keep(fork.body, fork.signature)
        assert not forked.stored and [f.kind for f in forked.findings] == ["fork"]
        assert records[2].hash.hex() in forked.findings[0].detail


def test_keep_refuses_bad_records_as_remote_errors(tmp_path: Path) -> None:
    record = StreamWriter(PRODUCER).append("vibration", b"r", 0)
    theirs = StreamWriter(BUYER).append("vibration", b"r", 0)
    with open_store(tmp_path / "buyer") as store:
        archive = BuyerArchive(store)
        for body, signature, producer, field in [
            (record.body, theirs.signature, None, "record.signature"),
            (record.body[:-1], record.signature, None, "record.body"),
            (theirs.body, theirs.signature, P, "record.agent"),
        ]:
            with pytest.raises(RecordRejected) as caught:
                archive.keep(body, signature, producer=producer)
            assert caught.value.field == field


async def test_forged_receipts_are_rejected(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    with open_store(tmp_path / "buyer") as buyer_store:
        archive = BuyerArchive(buyer_store)
        async with running_anchorer(tmp_path / "producer", ledger) as run:
            records = await run.anchorer.log_many("vibration", [b"x%d" % i for i in range(9)])
            for record in records[:4]:
                archive.keep(record.body, record.signature, producer=P)
            await run.anchorer.anchor_now()
            await run.chain.mine()
            await run.anchorer.wait_mined()
            (receipt,) = await run.anchorer.receipts("vibration", range(9))
            headers = run.headers()
        assert len(receipt.paths) == 9
        bad_path = receipt.paths[1].path[:-1] + bytes([receipt.paths[1].path[-1] ^ 1])
        forged = AnchorReceipt(
            receipt.anchor_tx,
            receipt.block_height,
            receipt.block_hash,
            receipt.bump,
            (receipt.paths[0], ReceiptPath(1, bad_path)),
        )
        with pytest.raises(ReceiptRejected, match="does not lead to the root"):
            archive.accept_receipt(P, forged)
        with pytest.raises(ReceiptRejected, match="another agent"):
            archive.accept_receipt(BUYER.public_key, receipt)
        with pytest.raises(ReceiptRejected) as caught:
            archive.accept_receipt(P, AnchorReceipt(receipt.anchor_tx[:-1], 1, "00" * 32, b"", ()))
        assert caught.value.field == "AnchorReceipt.anchor_tx"
        assert archive.accept_receipt(P, receipt) == 4  # only what we hold
        verify_proof(archive.proof(P, "vibration", 3), headers)


async def test_receipts_of_two_streams_anchored_in_one_transaction(tmp_path: Path) -> None:
    """The producer's two streams, seqs 0..4 each, anchored by one transaction (an
    output each): each receipt is matched to its stream's output by the paths of the
    records we hold, and a path made for the other stream is refused."""
    ledger = create_ledger(tmp_path / "ledger.db")
    with open_store(tmp_path / "buyer") as buyer_store:
        archive = BuyerArchive(buyer_store)
        async with running_anchorer(tmp_path / "producer", ledger) as run:
            for stream in ("vibration", "meter"):
                for record in await run.anchorer.log_many(stream, [b"%d" % i for i in range(5)]):
                    archive.keep(record.body, record.signature, producer=P)
            batches = await run.anchorer.anchor_now()
            assert len(batches) == 2 and len({b.txid for b in batches}) == 1
            await run.chain.mine()
            await run.anchorer.wait_mined()
            (vibration,) = await run.anchorer.receipts("vibration", range(5))
            (meter,) = await run.anchorer.receipts("meter", range(5))
            headers = run.headers()
        swapped = AnchorReceipt(
            meter.anchor_tx,
            meter.block_height,
            meter.block_hash,
            meter.bump,
            (vibration.paths[0], *meter.paths[1:]),
        )
        with pytest.raises(ReceiptRejected, match="does not lead to the root"):
            archive.accept_receipt(P, swapped)
        assert archive.accept_receipt(P, vibration) == 5
        assert archive.accept_receipt(P, meter) == 5
        for stream in ("vibration", "meter"):
            for seq in range(5):
                assert verify_proof(archive.proof(P, stream, seq), headers).record.seq == seq


@pytest.mark.parametrize("count", [10_000, 100_000])
def test_receipts_split_to_fit_a_wire_frame(count: int) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]
    levels = batch_levels(leaves)
    anchor_tx, bump = b"\x01" * 320, b"\x02" * 1_200
    per = paths_per_receipt(count)
    assert 1 <= per <= MAX_RECEIPT_PATHS
    receipts = make_receipts(anchor_tx, 7, "ab" * 32, bump, 5_000, levels, range(5_000, 5_300))
    assert [len(r.paths) for r in receipts] == [per, per, 300 - 2 * per]
    for receipt in receipts:
        assert decode(encode(receipt)) == receipt  # raises if it does not fit a frame
    assert make_receipts(anchor_tx, 7, "ab" * 32, bump, 5_000, levels, [1, 5_000 + count]) == []
