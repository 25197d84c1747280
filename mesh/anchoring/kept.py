"""A buyer's kept records: the producers' signed readings it holds, and their receipts.

The ``origin='kept'`` rows of the anchoring tables (`mesh.anchoring.store` owns the
schema and the queries on an agent's own records and on proofs): storing a delivered
record without overwriting one already held at its seq, finding the readings still
without a receipt, and recording a checked receipt's batch (``mined``) and paths.
`mesh.anchoring.archive.BuyerArchive` is the face of this for the runtime. Methods are
synchronous SQLite work, each in one transaction; nothing here checks a signature or a
path (the archive does, before it calls in). (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh.anchoring.receipt import AnchorReceipt, CheckedReceipt
from mesh.anchoring.record import SignedRecord
from mesh.anchoring.recordlog import STREAM_ID, RecordLog
from mesh.anchoring.schema import ANCHORING_SCHEMA
from mesh.store import Store


class KeptRecords:
    """The kept (producers') records of one agent store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        store.register(ANCHORING_SCHEMA)
        self.log = RecordLog(store, "kept")
        """Where kept records are written: a segment append each, the index folded
        in groups (`mesh.anchoring.recordlog`)."""

    def keep(self, signed: SignedRecord) -> bytes | None:
        """Store a producer's record; returns the hash already held at that seq, if any.

        Nothing is written when a record is already held at (agent, stream, seq): the
        caller tells a duplicate (same hash) from a fork (another hash).
        """
        held = self.log.pending_hash(signed.agent, signed.stream, signed.seq)
        if held is not None:
            return held
        with self._store.read() as db:
            row = db.execute(
                f"SELECT hash FROM anchor_records WHERE sid = {STREAM_ID} AND seq = ?",
                (signed.agent, signed.stream, signed.seq),
            ).fetchone()
        if row is not None:
            return bytes(row[0])
        self.log.append([(signed, None)])
        return None

    def last_kept(self, agent: bytes, stream: str) -> int | None:
        """The highest seq held of a producer's stream."""
        with self._store.read() as db:
            row = db.execute(
                f"SELECT MAX(seq) FROM anchor_records WHERE sid = {STREAM_ID}",
                (agent, stream),
            ).fetchone()
        stored = None if row is None or row[0] is None else int(row[0])
        waiting = self.log.pending_top(agent, stream)
        if waiting is None or (stored is not None and stored > waiting):
            return stored
        return waiting

    def held_hashes(self, agent: bytes, stream: str, seqs: Sequence[int]) -> dict[int, bytes]:
        """Hashes of the records held among `seqs` of a producer's stream."""
        wanted = set(seqs)
        if not wanted:
            return {}
        waiting = {
            seq: digest
            for seq in wanted
            if (digest := self.log.pending_hash(agent, stream, seq)) is not None
        }
        with self._store.read() as db:
            rows = db.execute(
                f"SELECT seq, hash FROM anchor_records WHERE sid = {STREAM_ID}"
                " AND seq BETWEEN ? AND ?",
                (agent, stream, min(wanted), max(wanted)),
            ).fetchall()
        return {**{int(s): bytes(h) for s, h in rows if int(s) in wanted}, **waiting}

    def producers_waiting(self) -> set[bytes]:
        """The producers of which some kept record still waits for a receipt."""
        with self._store.read() as db:
            rows = db.execute(
                "SELECT DISTINCT s.agent FROM anchor_streams s WHERE EXISTS ("
                " SELECT 1 FROM anchor_records r INDEXED BY anchor_records_unbatched"
                " WHERE r.sid = s.id AND r.origin = 'kept' AND r.batch IS NULL)"
            ).fetchall()
        return {bytes(r[0]) for r in rows} | self.log.waiting_agents()

    def unproven(self, producer: bytes, per_stream: int) -> dict[str, list[int]]:
        """A producer's kept records still waiting for a receipt: stream -> the lowest
        `per_stream` seqs (held in the index without a path, or still waiting in memory
        for their receipt)."""
        waiting = self.log.waiting_seqs(producer)
        with self._store.read() as db:
            streams = db.execute(
                "SELECT id, stream FROM anchor_streams WHERE agent = ?", (producer,)
            ).fetchall()
            stored: dict[str, list[int]] = {}
            for sid, stream in streams:
                seqs = [
                    int(r[0])
                    for r in db.execute(
                        "SELECT seq FROM anchor_records INDEXED BY anchor_records_unbatched"
                        " WHERE sid = ? AND origin = 'kept' AND batch IS NULL"
                        " ORDER BY seq LIMIT ?",
                        (sid, per_stream),
                    )
                ]
                if seqs:
                    stored[str(stream)] = seqs
        return {
            stream: sorted({*stored.get(stream, ()), *waiting.get(stream, ())})[:per_stream]
            for stream in {*stored, *waiting}
        }

    def store_receipt(self, receipt: AnchorReceipt, checked: CheckedReceipt, now: float) -> int:
        """Record a checked receipt's batch (mined) and its paths; returns records proven.

        A batch already known with another anchor transaction keeps the first one.
        """
        anchor = checked.anchor
        staged = self.log.stage_paths(anchor.agent, anchor.stream, checked.paths)
        with self._store.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO anchor_batches (agent, stream, first_seq, last_seq, root,"
                " origin, state, txid, raw, block_height, block_hash, bump, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'kept', 'mined', ?, ?, ?, ?, ?, ?)",
                (
                    anchor.agent,
                    anchor.stream,
                    anchor.first_seq,
                    anchor.last_seq,
                    anchor.root,
                    checked.txid,
                    receipt.anchor_tx,
                    receipt.block_height,
                    receipt.block_hash,
                    receipt.bump,
                    now,
                ),
            )
            row = db.execute(
                "SELECT id, txid FROM anchor_batches WHERE agent = ? AND stream = ?"
                " AND first_seq = ?",
                (anchor.agent, anchor.stream, anchor.first_seq),
            ).fetchone()
            if row is None or str(row[1]) != checked.txid:
                return 0
            batch_id = int(row[0])
            # Rows still in memory are written now, once, their paths appended to the
            # segment; rows folded before (a restart, or more than `HOLD_ROWS` waited)
            # get the path added to the row.
            inserted = self.log.insert_proven(db, anchor.agent, anchor.stream, staged, batch_id)
            proven = len(inserted)
            if len(inserted) < len(checked.paths):
                proven += db.executemany(
                    f"UPDATE anchor_records SET batch = ?, path = ? WHERE sid = {STREAM_ID}"
                    " AND seq = ? AND origin = 'kept' AND path IS NULL",
                    [
                        (batch_id, path, anchor.agent, anchor.stream, seq)
                        for seq, path in checked.paths.items()
                        if seq not in inserted
                    ],
                ).rowcount
            if proven > 0:  # `mesh proof --list` reads these, not every record
                first, last = min(checked.paths), max(checked.paths)
                db.execute(
                    "UPDATE anchor_batches SET held = COALESCE(held, 0) + ?,"
                    " held_first = MIN(COALESCE(held_first, ?), ?),"
                    " held_last = MAX(COALESCE(held_last, ?), ?) WHERE id = ?",
                    (proven, first, first, last, last, batch_id),
                )
        self.log.taken(anchor.agent, anchor.stream, inserted)
        return len(checked.paths)


__all__ = ["KeptRecords"]
