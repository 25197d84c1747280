"""The receipt exchange between a producer and a buyer (real stores, anchorer and ledger).

The two `ReceiptExchange`s talk through a loop-back `send` that encodes and decodes
every frame with the wire codec; the agents' real-process path is covered by the
`mesh demo` test (tests/agents/test_agent_procs.py), whose buyer exports and verifies
a proof of a reading it bought.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.receipts import ReceiptExchange, Send
from mesh.anchoring.archive import BuyerArchive
from mesh.anchoring.batch import BatchPolicy
from mesh.anchoring.errors import NotAnchored
from mesh.anchoring.frames import MAX_RECEIPT_REQUEST, AnchorReceipt, ReceiptRequest
from mesh.anchoring.proof import verify_proof
from mesh.anchoring.service import AnchorConfig
from mesh.identity import Identity
from mesh.store import Store
from mesh.wire import Frame, decode, encode
from tests.anchoring.helpers import (
    BUYER,
    PRODUCER,
    Running,
    create_ledger,
    open_store,
    running_anchorer,
)

OTHER = Identity.from_secret(bytes(range(3, 35)))
P = PRODUCER.public_key
STREAM = "readings/vibration"


class Link:
    """Two exchanges joined by a loop-back: frames cross through encode/decode."""

    def __init__(self) -> None:
        self.ends: dict[str, ReceiptExchange] = {}
        self.sent: list[tuple[str, str, Frame]] = []

    def sender(self, me: str) -> Send:
        async def send(peer_id: str, frame: Frame) -> None:
            self.sent.append((me, peer_id, frame))
            await self.ends[peer_id].handle(me, decode(encode(frame)))

        return send


@pytest.fixture
def buyer_archive(tmp_path: Path) -> Iterator[BuyerArchive]:
    with open_store(tmp_path / "buyer") as store:
        yield BuyerArchive(store)


def exchanges(
    link: Link, run: Running, buyer_archive: BuyerArchive
) -> tuple[ReceiptExchange, ReceiptExchange]:
    """(producer side, buyer side)."""
    producer = ReceiptExchange(
        # Its own connection, as the runtime's: `run.store` is the anchorer's (threads).
        BuyerArchive(Store(run.store.path, synchronous="NORMAL")),
        run.anchorer,
        link.sender(PRODUCER.peer_id),
        lambda: [BUYER.peer_id],
    )
    buyer = ReceiptExchange(
        buyer_archive,
        run.anchorer,  # unused on this side: the buyer sells nothing here
        link.sender(BUYER.peer_id),
        lambda: [PRODUCER.peer_id],
    )
    link.ends = {PRODUCER.peer_id: producer, BUYER.peer_id: buyer}
    return producer, buyer


async def test_a_buyer_collects_receipts_only_for_what_was_delivered_to_it(
    tmp_path: Path, buyer_archive: BuyerArchive
) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=8, max_age=1e9))
    async with running_anchorer(tmp_path / "producer", ledger, config=config) as run:
        mine = await run.anchorer.log_many(STREAM, [b"rms=%d" % i for i in range(12)],
                                           audience=BUYER.public_key)  # fmt: skip
        theirs = await run.anchorer.log_many(STREAM, [b"rms=x"] * 4, audience=OTHER.public_key)
        for record in [*mine, *theirs]:  # the buyer even holds the other buyer's readings
            assert buyer_archive.keep(record.body, record.signature, producer=P).stored
        link = Link()
        _, buyer = exchanges(link, run, buyer_archive)

        await buyer.ask_all()  # nothing is mined yet: no receipts, nothing changes
        assert buyer.statistics().receipts_accepted == 0
        assert buyer.unproven() == 16
        with pytest.raises(NotAnchored):
            buyer_archive.proof(P, STREAM, 0)

        await run.anchorer.anchor_now()
        await run.chain.mine()
        await run.anchorer.wait_mined()
        await buyer.ask_all()
        stats = buyer.statistics()
        assert (stats.receipts_accepted, stats.records_proven) == (2, 12)  # batches 0-7, 8-15
        assert buyer.unproven() == 4  # the other buyer's readings get no receipt here
        headers = run.headers()
        for record in mine:
            verified = verify_proof(buyer_archive.proof(P, STREAM, record.seq), headers)
            assert verified.record.seq == record.seq
        for record in theirs:
            with pytest.raises(NotAnchored, match="no receipt"):
                buyer_archive.proof(P, STREAM, record.seq)


async def test_a_request_for_too_many_seqs_is_refused(
    tmp_path: Path, buyer_archive: BuyerArchive
) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    async with running_anchorer(tmp_path / "producer", ledger) as run:
        link = Link()
        producer, _ = exchanges(link, run, buyer_archive)
        seqs = tuple(range(MAX_RECEIPT_REQUEST + 1))
        await producer.handle(BUYER.peer_id, ReceiptRequest(STREAM, seqs))
        assert producer.statistics().requests_refused == 1
        assert producer.statistics().requests_answered == 0
        assert link.sent == []


async def test_a_peer_that_asks_too_often_is_not_answered_until_its_budget_refills(
    tmp_path: Path, buyer_archive: BuyerArchive
) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    async with running_anchorer(tmp_path / "producer", ledger) as run:
        await run.anchorer.log_many(STREAM, [b"rms=%d" % i for i in range(4)],
                                    audience=BUYER.public_key)  # fmt: skip
        await run.anchorer.anchor_now()
        await run.chain.mine()
        await run.anchorer.wait_mined()
        link = Link()
        _, buyer = exchanges(link, run, buyer_archive)
        now = [0.0]
        producer = ReceiptExchange(
            BuyerArchive(run.store),
            run.anchorer,
            link.sender(PRODUCER.peer_id),
            lambda: [BUYER.peer_id],
            seqs_per_second=4,  # 8 at once
            clock=lambda: now[0],
        )
        link.ends = {PRODUCER.peer_id: producer, BUYER.peer_id: buyer}
        ask = ReceiptRequest(STREAM, (0, 1, 2, 3))
        for _ in range(3):  # the third exceeds the 8 seqs at once
            await producer.handle(BUYER.peer_id, ask)
        stats = producer.statistics()
        assert (stats.requests_answered, stats.requests_throttled) == (2, 1)
        assert len(link.sent) == 2  # one receipt (one batch) per answered request
        await producer.handle(OTHER.peer_id, ask)  # its own budget (and no receipt: not its)
        assert producer.statistics().requests_answered == 3
        now[0] = 1.0  # 4 seqs' worth back
        await producer.handle(BUYER.peer_id, ask)
        assert producer.statistics().requests_answered == 4


async def test_a_receipt_that_does_not_hold_changes_nothing(
    tmp_path: Path, buyer_archive: BuyerArchive
) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    async with running_anchorer(tmp_path / "producer", ledger) as run:
        records = await run.anchorer.log_many(STREAM, [b"a", b"b", b"c"], audience=BUYER.public_key)
        for record in records:
            buyer_archive.keep(record.body, record.signature, producer=P)
        await run.anchorer.anchor_now()
        await run.chain.mine()
        await run.anchorer.wait_mined()
        (receipt,) = await run.anchorer.receipts(STREAM, [0, 1, 2])
        link = Link()
        _, buyer = exchanges(link, run, buyer_archive)
        first = receipt.paths[0]
        forged_path = bytes([first.path[0] ^ 1]) + first.path[1:]
        forged = AnchorReceipt(
            receipt.anchor_tx,
            receipt.block_height,
            receipt.block_hash,
            receipt.bump,
            (type(first)(first.seq, forged_path), *receipt.paths[1:]),
        )
        await buyer.handle(PRODUCER.peer_id, forged)
        # Someone else's anchor, presented as the producer's, is refused too.
        await buyer.handle(OTHER.peer_id, receipt)
        assert buyer.statistics().receipts_rejected == 2
        assert buyer.statistics().records_proven == 0
        assert buyer.unproven() == 3
        await buyer.handle(PRODUCER.peer_id, receipt)
        assert buyer.statistics().records_proven == 3
        assert buyer.unproven() == 0


async def test_a_producer_without_a_session_is_asked_only_on_the_absent_round(
    tmp_path: Path, buyer_archive: BuyerArchive
) -> None:
    """Sessions on demand: a buyer back after a restart (or whose session closed while
    idle) holds readings of a producer it has no session with. Its regular rounds ask
    only the peers with a session; the absent round (every `absent_every`) asks that
    producer too -- the send dials it -- and the receipts come back."""
    ledger = create_ledger(tmp_path / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=8, max_age=1e9))
    async with running_anchorer(tmp_path / "producer", ledger, config=config) as run:
        mine = await run.anchorer.log_many(STREAM, [b"rms=%d" % i for i in range(8)],
                                           audience=BUYER.public_key)  # fmt: skip
        for record in mine:
            assert buyer_archive.keep(record.body, record.signature, producer=P).stored
        assert buyer_archive.producers_waiting() == {P}
        await run.anchorer.anchor_now()
        await run.chain.mine()
        await run.anchorer.wait_mined()
        link = Link()
        _, buyer = exchanges(link, run, buyer_archive)
        buyer._peers = lambda: []  # no session with anyone
        assert await buyer.ask_all() == 0 and link.sent == []
        assert await buyer.ask_all(absent=True) == 8
        assert buyer.statistics().records_proven == 8
        assert buyer_archive.producers_waiting() == set()
