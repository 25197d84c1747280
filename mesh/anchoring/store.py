"""The anchoring tables in the agent's store, and every query on them.

Component ``anchoring`` of `mesh.store.Store` (one SQLite file per agent, WAL):

- ``anchor_records``: every signed record the agent holds — its own (``origin='own'``)
  and those it kept as a buyer (``'kept'``, signed by a producer) — keyed by (stream id,
  seq), with the batch it was anchored in and, for kept records, the Merkle path the
  producer's receipt gave;
- ``anchor_streams``, ``anchor_peers``: the ids records name an (agent, stream) and an
  audience's peer key by: a row, written once per reading, holds small integers, not two
  33-byte keys (`mesh.anchoring.recordlog` writes them; readers join, or `STREAM_ID`);
- ``anchor_batches``: one row per batch: seq range, root, and how far anchoring got:
  ``planned`` (records assigned, no transaction yet) → ``built`` (the wallet's signed
  draft is recorded) → ``broadcast`` → ``mined`` (block height, hash, BUMP). A kept
  batch is recorded ``mined`` straight from a checked receipt.

A batch's transaction is recorded (``built``) before it is broadcast and marked after,
so a restart can always tell which anchors may be on chain (docs/ARCHITECTURE.md §7).

This module holds every query on the agent's own records, its batches, proofs and the
receipts it gives out; the queries on kept rows (keeping, receipts received) are
`mesh.anchoring.kept.KeptRecords`, and the schema (the tables and their migrations) is
`mesh.anchoring.schema`.

Methods are synchronous SQLite work, each in one transaction; from Trio call them
through `trio.to_thread` with the store's limiter. This module never signs, broadcasts
or reads a clock (times come in as arguments).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from mesh.anchoring.batch import PendingBatch, batch_levels, batch_path
from mesh.anchoring.cold import StreamSummary as StreamSummary
from mesh.anchoring.errors import AnchoringError, NotAnchored, RecordNotFound
from mesh.anchoring.hashchain import Head
from mesh.anchoring.proof import Proof, make_proof
from mesh.anchoring.ranges import merge_ranges
from mesh.anchoring.receipt import AnchorReceipt, make_receipts, split_path
from mesh.anchoring.record import SignedRecord, decode_record, record_hash
from mesh.anchoring.recordlog import (
    PEER_ID,
    STREAM_ID,
    RecordLog,
    Span,
    kept_path,
    read_record,
    segments_dir,
)
from mesh.anchoring.schema import ANCHORING_SCHEMA
from mesh.store import Store

IN_BATCH = (
    f" FROM anchor_records WHERE sid = {STREAM_ID} AND seq BETWEEN ? AND ?"
    " AND batch = ? ORDER BY seq"
)
"""The rows of one batch, by the primary key (bind `_span(batch)`)."""

_BATCH_COLUMNS = (
    "id, agent, stream, first_seq, last_seq, root, origin, state, txid, raw, fee,"
    " block_height, block_hash, bump"
)


@dataclass(frozen=True)
class BatchInfo:
    """A batch row: its records, root, and how far anchoring got."""

    id: int
    agent: bytes
    stream: str
    first_seq: int
    last_seq: int
    root: bytes
    origin: str
    state: str
    txid: str | None
    raw: bytes | None
    fee: int | None
    block_height: int | None
    block_hash: str | None
    bump: bytes | None

    @property
    def count(self) -> int:
        """How many records the batch holds."""
        return self.last_seq - self.first_seq + 1

    @property
    def reservation(self) -> str:
        """The wallet reservation id used to fund this batch's anchor."""
        return f"anchor:{self.agent.hex()[:16]}:{self.stream}:{self.first_seq}"


def _batch(row: Any) -> BatchInfo:
    return BatchInfo(
        int(row[0]),
        bytes(row[1]),
        str(row[2]),
        int(row[3]),
        int(row[4]),
        bytes(row[5]),
        str(row[6]),
        str(row[7]),
        None if row[8] is None else str(row[8]),
        None if row[9] is None else bytes(row[9]),
        None if row[10] is None else int(row[10]),
        None if row[11] is None else int(row[11]),
        None if row[12] is None else str(row[12]),
        None if row[13] is None else bytes(row[13]),
    )


@dataclass(frozen=True)
class LoadedState:
    """What the anchoring task needs after a restart."""

    heads: dict[str, Head]
    pending: list[tuple[str, int, bytes]]
    unfinished: list[BatchInfo]


class AnchorStore:
    """The anchoring tables of one agent store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        store.register(ANCHORING_SCHEMA)
        self.log = RecordLog(store, "own")
        """Where `insert_own` writes (only the agent's anchorer writes through it)."""
        self.segments = segments_dir(store)

    @property
    def store(self) -> Store:
        """The underlying agent store."""
        return self._store

    # ---------------------------------------------------------------- own records

    def insert_own(
        self, records: Sequence[SignedRecord], audiences: Sequence[bytes | None] | None = None
    ) -> None:
        """Persist our own freshly signed records (one append for all of them; their
        index rows follow in a later fold, see `mesh.anchoring.recordlog`).

        ``audiences[i]`` is the peer key record i was delivered to, if any: the one peer
        that may ask for its receipt.
        """
        to = audiences if audiences is not None else [None] * len(records)
        self.log.append(list(zip(records, to, strict=True)))

    def load_state(self, agent: bytes) -> LoadedState:
        """Stream heads, records not yet in a batch, and batches not yet mined (after
        indexing what a crash left unindexed in the segments)."""
        self.log.recover()
        self.log.fold()
        with self._store.read() as db:
            heads = {
                str(stream): Head(int(seq), bytes(digest))
                for stream, seq, digest in db.execute(
                    "SELECT s.stream, r.seq, r.hash FROM anchor_streams s"
                    " JOIN anchor_records r ON r.sid = s.id"
                    " AND r.seq = (SELECT MAX(seq) FROM anchor_records WHERE sid = s.id)"
                    " WHERE s.agent = ?",
                    (agent,),
                )
            }
            pending = [
                (str(s), int(q), bytes(h))
                for s, q, h in db.execute(
                    "SELECT s.stream, r.seq, r.hash FROM anchor_streams s"
                    " JOIN anchor_records r INDEXED BY anchor_records_unbatched"
                    " ON r.sid = s.id WHERE s.agent = ? AND r.batch IS NULL"
                    " ORDER BY s.stream, r.seq",
                    (agent,),
                )
            ]
            unfinished = [
                _batch(row)
                for row in db.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM anchor_batches"
                    " WHERE agent = ? AND origin = 'own' AND state != 'mined' ORDER BY id",
                    (agent,),
                )
            ]
        return LoadedState(heads, pending, unfinished)

    def plan_batches(
        self, agent: bytes, cut: Sequence[tuple[PendingBatch, bytes]], now: float
    ) -> list[BatchInfo]:
        """Record new batches (``planned``; each a pending batch and its root) in one
        transaction and assign their records: the index rows still waiting are written
        with them, those already written are assigned."""
        if not cut:
            return []
        with self._store.write() as db:
            spans: list[Span] = []
            for pending, root in cut:
                cursor = db.execute(
                    "INSERT INTO anchor_batches (agent, stream, first_seq, last_seq, root,"
                    " origin, state, created_at) VALUES (?, ?, ?, ?, ?, 'own', 'planned', ?)",
                    (agent, pending.stream, pending.first_seq, pending.last_seq, root, now),
                )
                batch_id = int(cursor.lastrowid or 0)
                spans.append((agent, pending.stream, pending.first_seq, pending.last_seq, batch_id))
            assigned = self.log.insert_waiting(db, spans)
            for (pending, _), span in zip(cut, spans, strict=True):
                assigned += db.execute(  # rows folded earlier (more than a fold's worth waited)
                    f"UPDATE anchor_records SET batch = ? WHERE sid = {STREAM_ID}"
                    " AND seq BETWEEN ? AND ? AND batch IS NULL",
                    (span[4], agent, pending.stream, pending.first_seq, pending.last_seq),
                ).rowcount
            expected = sum(len(pending.hashes) for pending, _ in cut)
            if assigned != expected:
                raise AnchoringError(  # rolls the batches back: the store disagrees with us
                    "batches "
                    + ", ".join(f"{p.stream} {p.first_seq}..{p.last_seq}" for p, _ in cut)
                    + f": only {assigned} of {expected} records are stored and unbatched"
                )
            planned = [self._get(db, span[4]) for span in spans]
            self._store.after_commit(self.log.folded)
        return planned

    def record_draft(self, batch_id: int, txid: str, raw: bytes, fee: int) -> None:
        """The anchor transaction is built and signed: record it before broadcasting."""
        with self._store.write() as db:
            db.execute(
                "UPDATE anchor_batches SET state = 'built', txid = ?, raw = ?, fee = ?"
                " WHERE id = ? AND state = 'planned'",
                (txid, raw, fee, batch_id),
            )

    def clear_draft(self, batch_id: int) -> None:
        """Forget a draft that was never broadcast (it was abandoned): back to planned."""
        with self._store.write() as db:
            db.execute(
                "UPDATE anchor_batches SET state = 'planned', txid = NULL, raw = NULL, fee = NULL"
                " WHERE id = ? AND state = 'built'",
                (batch_id,),
            )

    def mark_broadcast(self, batch_id: int) -> None:
        """The chain accepted the anchor transaction."""
        with self._store.write() as db:
            db.execute(
                "UPDATE anchor_batches SET state = 'broadcast' WHERE id = ? AND state = 'built'",
                (batch_id,),
            )

    def mark_mined(self, batch_id: int, height: int, block_hash: str, bump: bytes) -> None:
        """The anchor transaction is in block `height`; keep its BUMP."""
        with self._store.write() as db:
            db.execute(
                "UPDATE anchor_batches SET state = 'mined', block_height = ?, block_hash = ?,"
                " bump = ? WHERE id = ? AND state = 'broadcast'",
                (height, block_hash, bump, batch_id),
            )

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction of the store these tables live in: the methods above
        called inside it (and the wallet's, on the same store) commit together."""
        return self._store.write()

    def batch(self, batch_id: int) -> BatchInfo:
        """One batch by id."""
        with self._store.read() as db:
            return self._get(db, batch_id)

    def batches(self, *, state: str | None = None, stream: str | None = None) -> list[BatchInfo]:
        """Batches, oldest first, optionally only in `state` or of `stream`."""
        sql = f"SELECT {_BATCH_COLUMNS} FROM anchor_batches WHERE 1"
        params: list[object] = []
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        if stream is not None:
            sql += " AND stream = ?"
            params.append(stream)
        with self._store.read() as db:
            return [_batch(row) for row in db.execute(sql + " ORDER BY id", params)]

    def batch_leaves(self, batch_id: int) -> list[bytes]:
        """The record hashes of a batch, in seq order (the tree's leaves)."""
        with self._store.read() as db:
            batch = self._get(db, batch_id)
            return [bytes(r[0]) for r in db.execute("SELECT hash" + IN_BATCH, _span(batch))]

    @staticmethod
    def _get(db: sqlite3.Connection, batch_id: int) -> BatchInfo:
        row = db.execute(
            f"SELECT {_BATCH_COLUMNS} FROM anchor_batches WHERE id = ?", (batch_id,)
        ).fetchone()
        if row is None:
            raise RecordNotFound(f"no batch {batch_id}")
        return _batch(row)

    # ---------------------------------------------------------------- proofs

    def proof(self, agent: bytes, stream: str, seq: int) -> Proof:
        """A proof for one record; `NotAnchored` until its batch is mined."""
        self.log.fold()
        with self._store.read() as db:
            row = db.execute(
                "SELECT body, signature, batch, path, origin, seg, off, pseg, poff"
                f" FROM anchor_records WHERE sid = {STREAM_ID} AND seq = ?",
                (agent, stream, seq),
            ).fetchone()
            if row is None:
                raise RecordNotFound(f"no record {stream}/{seq} of agent {agent.hex()}")
            body, signature, batch_id, column_path, origin, seg, off, pseg, poff = row
            stored_path = kept_path(self.segments, column_path, pseg, poff)
            if batch_id is None and origin == "kept":
                raise NotAnchored(f"record {stream}/{seq}: no receipt from the producer yet")
            if batch_id is None:
                raise NotAnchored(f"record {stream}/{seq} is not in a batch yet")
            batch = self._get(db, int(batch_id))
            if origin == "kept" and stored_path is None:
                raise NotAnchored(f"record {stream}/{seq}: no receipt from the producer yet")
            leaves = None
            if stored_path is None:
                leaves = [bytes(r[0]) for r in db.execute("SELECT hash" + IN_BATCH, _span(batch))]
        signed = self._body(body, signature, seg, off)
        if stored_path is not None:
            path = split_path(stored_path)
        else:
            assert leaves is not None
            path = batch_path(batch_levels(leaves), seq - batch.first_seq)
        return self._assemble(signed, batch, path)

    def batch_proofs(self, batch_id: int) -> Iterator[Proof]:
        """A proof for every record of one of our mined batches (one tree build)."""
        with self._store.read() as db:
            batch = self._get(db, batch_id)
            rows = db.execute(
                "SELECT body, signature, seg, off" + IN_BATCH, _span(batch)
            ).fetchall()
        signed = [self._body(*row) for row in rows]
        levels = batch_levels([r.hash for r in signed])
        for index, record in enumerate(signed):
            yield self._assemble(record, batch, batch_path(levels, index))

    def _body(self, body: Any, signature: Any, seg: Any, off: Any) -> SignedRecord:
        """A stored record, from its row or (when the row has a segment) its segment."""
        if seg is not None:
            body, signature = read_record(self.segments, int(seg), int(off))
        return _signed(bytes(body), bytes(signature))

    @staticmethod
    def _assemble(signed: SignedRecord, batch: BatchInfo, path: Sequence[bytes]) -> Proof:
        if (
            batch.state != "mined"
            or batch.raw is None
            or batch.bump is None
            or batch.block_height is None
            or batch.block_hash is None
        ):
            raise NotAnchored(
                f"record {signed.stream}/{signed.seq}: its batch"
                f" {batch.first_seq}..{batch.last_seq} is {batch.state}, not mined yet"
            )
        return make_proof(
            signed, batch.root, path, batch.raw, batch.block_height, batch.block_hash, batch.bump
        )

    def agents_for(self, stream: str) -> list[bytes]:
        """The agents whose records of `stream` this store holds."""
        self.log.fold()
        with self._store.read() as db:
            return [
                bytes(r[0])
                for r in db.execute(
                    "SELECT agent FROM anchor_streams s WHERE stream = ? AND EXISTS"
                    " (SELECT 1 FROM anchor_records WHERE sid = s.id) ORDER BY agent",
                    (stream,),
                )
            ]

    def streams(self) -> list[StreamSummary]:
        """Every stream held, with its anchored (mined) seq ranges.

        Read from the batches and the records not in one yet, never from every record,
        so ``mesh proof --list`` costs the same after a year. A kept stream's ranges span
        the seqs held of each batch a receipt proved (held seqs may have gaps inside:
        a producer's stream interleaves its buyers).
        """
        self.log.fold()
        totals: dict[tuple[bytes, str, str], tuple[int, int, list[tuple[int, int]]]] = {}

        def add(key: tuple[bytes, str, str], records: int, anchored: int) -> list[Any]:
            count, proven, spans = totals.get(key, (0, 0, []))
            totals[key] = (count + records, proven + anchored, spans)
            return spans

        with self._store.read() as db:
            batches = db.execute(
                "SELECT agent, stream, origin, first_seq, last_seq, state, held,"
                " held_first, held_last FROM anchor_batches ORDER BY first_seq"
            )
            for agent, stream, origin, first, last, state, held, held_first, held_last in batches:
                key = (bytes(agent), str(stream), str(origin))
                if origin == "own":
                    size = int(last) - int(first) + 1
                    mined = state == "mined"
                    spans = add(key, size, size if mined else 0)
                    if mined:
                        spans.append((int(first), int(last)))
                elif held:
                    add(key, int(held), int(held)).append((int(held_first), int(held_last)))
            for agent, stream, origin, count in db.execute(
                "SELECT s.agent, s.stream, r.origin, COUNT(*) FROM anchor_records r"
                " INDEXED BY anchor_records_unbatched JOIN anchor_streams s ON s.id = r.sid"
                " WHERE r.batch IS NULL GROUP BY s.agent, s.stream, r.origin"
            ):
                add((bytes(agent), str(stream), str(origin)), int(count), 0)
        return [
            StreamSummary(agent.hex(), stream, origin, count, merge_ranges(spans), count - proven)
            for (agent, stream, origin), (count, proven, spans) in sorted(
                totals.items(), key=lambda item: (item[0][2] != "own", item[0][1], item[0][0])
            )
        ]

    # ---------------------------------------------------------------- receipts

    def receipts(
        self, agent: bytes, stream: str, seqs: Sequence[int], *, audience: bytes | None = None
    ) -> list[AnchorReceipt]:
        """Receipts for those of `seqs` whose batch is mined (other seqs are skipped).

        With `audience`, only for records that were delivered to that peer.
        """
        wanted = sorted(set(seqs))
        if not wanted:
            return []
        with self._store.read() as db:
            if audience is not None:
                theirs = {
                    int(r[0])
                    for r in db.execute(
                        f"SELECT seq FROM anchor_records WHERE sid = {STREAM_ID}"
                        f" AND seq BETWEEN ? AND ? AND audience = {PEER_ID}",
                        (agent, stream, wanted[0], wanted[-1], audience),
                    )
                }
                wanted = [s for s in wanted if s in theirs]
                if not wanted:
                    return []
            spans = [
                _batch(row)
                for row in db.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM anchor_batches WHERE agent = ? AND stream = ?"
                    " AND origin = 'own' AND state = 'mined' AND last_seq >= ? AND first_seq <= ?"
                    " ORDER BY first_seq",
                    (agent, stream, wanted[0], wanted[-1]),
                )
            ]
        out: list[AnchorReceipt] = []
        for batch in spans:
            inside = [s for s in wanted if batch.first_seq <= s <= batch.last_seq]
            if not inside:
                continue
            assert batch.raw is not None and batch.bump is not None
            assert batch.block_height is not None and batch.block_hash is not None
            levels = batch_levels(self.batch_leaves(batch.id))
            out.extend(
                make_receipts(
                    batch.raw,
                    batch.block_height,
                    batch.block_hash,
                    batch.bump,
                    batch.first_seq,
                    levels,
                    inside,
                )
            )
        return out


def _span(batch: BatchInfo) -> tuple[bytes, str, int, int, int]:
    """The parameters of `IN_BATCH` for `batch`."""
    return (batch.agent, batch.stream, batch.first_seq, batch.last_seq, batch.id)


def _signed(body: bytes, signature: bytes) -> SignedRecord:
    """A stored record (its signature was checked when it was stored or signed)."""
    return SignedRecord(decode_record(body), body, record_hash(body), signature)
