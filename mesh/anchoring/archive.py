"""`BuyerArchive`: a data-feed buyer keeps the signed readings it paid for, and proves them.

The producer delivers each reading as its signed record: the record body (canonical
MessagePack, `mesh.anchoring.record`) and the producer's signature over its hash. The
buyer `keep`s it — the signature is checked, the record stored in its own agent store as
``origin='kept'`` — long before the producer anchors it. Once the producer's batch is
mined, the producer sends an `AnchorReceipt` (`mesh.anchoring.receipt`) with the Merkle
paths of the buyer's records; `accept_receipt` checks every path against the anchor's
root and stores it. From then on `proof` (or `mesh proof --data-dir BUYER_DIR`) exports a
proof that verifies without the producer: the buyer holds everything.

`keep` also watches the producer's stream: a record at a seq already held is a
``duplicate`` (same hash) or a ``fork`` (another record, validly signed: the producer
said two different things; the returned finding names both hashes and the archive keeps
the first). A record older than the newest one held is a ``reorder``. Gaps are normal
here — a producer's stream interleaves readings for all its buyers.

Everything a peer sent is checked here, and failures are `RecordRejected` /
`ReceiptRejected` (`RemoteProtocolError`s): they end that peer's exchange, not the
agent. Methods block on SQLite: from Trio call them through `trio.to_thread` with the
store's limiter. This module never talks to the network. (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.anchoring.errors import NotAnchored, RecordError, RecordRejected
from mesh.anchoring.hashchain import Finding
from mesh.anchoring.kept import KeptRecords
from mesh.anchoring.proof import Proof
from mesh.anchoring.receipt import AnchorReceipt, check_receipt
from mesh.anchoring.record import SignedRecord, open_record
from mesh.anchoring.store import AnchorStore
from mesh.store import Store


@dataclass(frozen=True)
class Kept:
    """The outcome of keeping one delivered record."""

    record: SignedRecord
    stored: bool
    findings: tuple[Finding, ...]


class BuyerArchive:
    """Producers' signed records held by a buyer, and the proofs of them."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.records = AnchorStore(store)
        self.kept = KeptRecords(store)
        self.kept.log.recover()  # index what a crash left unindexed in the segments
        self._store = store
        self._clock = clock

    def keep(self, body: bytes, signature: bytes, *, producer: bytes | None = None) -> Kept:
        """Check and store a delivered record; `producer` is the session's peer key.

        Raises `RecordRejected` when the record is malformed, its signature is not its
        agent's, or it is not the producer's own record.
        """
        try:
            signed = open_record(body, signature)
        except RecordError as exc:
            raise RecordRejected(f"record.{exc.field}", exc.detail) from None
        if producer is not None and signed.agent != producer:
            raise RecordRejected("record.agent", "signed by another agent than the sender")
        newest = self.kept.last_kept(signed.agent, signed.stream)
        existing = self.kept.keep(signed)

        def finding(kind: str, detail: str) -> Finding:
            return Finding(kind, signed.agent, signed.stream, signed.seq, detail)

        if existing == signed.hash:
            return Kept(signed, False, (finding("duplicate", "already held"),))
        if existing is not None:
            return Kept(
                signed,
                False,
                (
                    finding(
                        "fork",
                        f"held {existing.hex()}, delivered {signed.hash.hex()}:"
                        " two signed records at one seq",
                    ),
                ),
            )
        if newest is not None and signed.seq < newest:
            return Kept(signed, True, (finding("reorder", f"seq {signed.seq} after seq {newest}"),))
        return Kept(signed, True, ())

    def accept_receipt(self, producer: bytes, receipt: AnchorReceipt) -> int:
        """Check and store a producer's receipt; returns how many held records it proves.

        Raises `ReceiptRejected` when the anchor is not the producer's or a path for a
        record we hold does not lead to the anchored root.
        """
        checked = check_receipt(
            receipt,
            producer,
            lambda stream, seqs: self.kept.held_hashes(producer, stream, seqs),
        )
        if not checked.paths:
            return 0
        return self.kept.store_receipt(receipt, checked, self._clock())

    def proof(self, producer: bytes, stream: str, seq: int) -> Proof:
        """The proof of a kept record (`NotAnchored` until a receipt covered it)."""
        if self.kept.log.pending_hash(producer, stream, seq) is not None:
            raise NotAnchored(f"record {stream}/{seq}: no receipt from the producer yet")
        return self.records.proof(producer, stream, seq)

    def last_proven(self, producer: bytes, stream: str) -> int | None:
        """The highest seq of `producer`'s `stream` a receipt proved (None: none yet)."""
        with self._store.read() as db:
            row = db.execute(
                "SELECT MAX(held_last) FROM anchor_batches"
                " WHERE agent = ? AND stream = ? AND origin = 'kept'",
                (producer, stream),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        """Write what waits of the kept records' index (before the store closes)."""
        self.kept.log.close()

    def held(self, producer: bytes, stream: str, seqs: Sequence[int]) -> dict[int, bytes]:
        """The record hashes held among `seqs` (what a receipt request would name)."""
        return self.kept.held_hashes(producer, stream, seqs)

    def producers_waiting(self) -> set[bytes]:
        """The producers of which some kept record still waits for a receipt."""
        return self.kept.producers_waiting()

    def unproven(self, producer: bytes, per_stream: int) -> dict[str, list[int]]:
        """A producer's kept records still waiting for a receipt: stream -> the lowest
        `per_stream` seqs (what to ask the producer for)."""
        return self.kept.unproven(producer, per_stream)
