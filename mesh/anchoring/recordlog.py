"""`RecordLog`: where an agent's records are written -- segment files plus a lazy index.

One `RecordLog` writes the records of one origin (``own``: the agent's signed log;
``kept``: producers' records a buyer holds) of one agent store. `append` puts the
records into the current segment (`mesh.anchoring.segments`, one write for the lot)
and queues their index rows (``anchor_records``: stream id, seq, hash, audience id,
segment and offset; no body or signature). Queued rows are written
once, as late as possible: an own record's with its batch when the batch is planned
(`insert_waiting`), a kept record's with its batch and Merkle path (appended to the
segment, `stage_paths`) when its receipt proves it (`insert_proven`); a query that
needs them, or more than `fold_rows` waiting, folds them as they are (`fold`). So a
reading costs one append of its own bytes and a share of an index commit, instead of
an SQLite commit of its own (~20 KB written, see the segments module).

Crash: what `append` returned is on disk (durable as the store is, see the segments
module); index rows not folded yet are rebuilt by `recover` from each segment's tail
past its ``indexed_to`` (run it before the first `append` and before reading heads).

Ids: a row names its (agent, stream) pair and its audience's peer key by ids
(``anchor_streams``, ``anchor_peers``), looked up or inserted inside the write
transaction that writes the row, and remembered only once it committed (an id from a
transaction that rolled back names nothing); readers in other processes find them in
SQL (`STREAM_ID`, `PEER_ID`).

Segments rotate at `segment_bytes`; ``anchor_segments.live`` counts the index rows
(and kept paths) pointing into each one, so retention (`mesh.anchoring.retention`)
knows when a segment file holds nothing anyone needs. Readers in other processes
(``mesh proof``) see the written index only: at most `fold_rows` records behind a
running agent (unanchored or unproven ones, which have no proof yet anyway).

Blocking file and SQLite work; the caller serialises the use of one `RecordLog`.
(docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from mesh.anchoring.record import SignedRecord, decode_record, record_hash
from mesh.anchoring.segments import HEADER, SegmentError, SegmentWriter, read_entry, scan
from mesh.store import Store

HOLD_ROWS = 8192
"""Kept records (a buyer's) wait in memory until their receipt proves them, so each row
is written once, with its path; past this many, they are folded without it."""
FOLD_ROWS = 2048
"""Index rows kept in memory before they are folded into SQLite (more than a batch of
the default 1 000 records: rows are then folded as their batch is planned, already
assigned to it, and never written twice)."""
SEGMENT_BYTES = 64 << 20
"""A segment file is closed, and a new one begun, past this size."""

PEER_IDS = 4096
"""Audience keys whose ids a log remembers; past this many it forgets them all (a miss
costs one indexed SELECT)."""
STREAM_ID = "(SELECT id FROM anchor_streams WHERE agent = ? AND stream = ?)"
"""SQL for the id of an (agent, stream) pair, ``anchor_records.sid`` (bind agent and
stream): how a query that holds no id reaches a stream's rows by their primary key."""
PEER_ID = "(SELECT id FROM anchor_peers WHERE key = ?)"
"""SQL for the id of an audience's peer key, ``anchor_records.audience`` (bind the key)."""

_INSERT = (  # a row already there is another writer or a bug: loud, never ignored
    "INSERT INTO anchor_records (sid, seq, hash, origin, audience, seg, off, batch, pseg,"
    " poff) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
PATH_ENTRY = "path"
"""The first element of a segment entry holding a kept record's Merkle path."""
Span = tuple[bytes, str, int, int, int]
"""A batch a fold assigns rows to: agent, stream, first seq, last seq, batch id."""


def segments_dir(store: Store) -> Path:
    """Where a store's record segments live: ``records/`` beside the database."""
    return store.path.parent / "records"


def segment_path(directory: Path, segment: int) -> Path:
    """The file of segment `segment`."""
    return directory / f"{segment:08d}.seg"


def encode(signed: SignedRecord, audience: bytes | None) -> bytes:
    """A record as a segment entry."""
    packed: bytes = msgpack.packb([signed.body, signed.signature, audience], use_bin_type=True)
    return packed


def encode_path(path: bytes) -> bytes:
    """A kept record's Merkle path as a segment entry (written once, when its receipt
    arrives, instead of into the record's index row)."""
    packed: bytes = msgpack.packb([PATH_ENTRY, path], use_bin_type=True)
    return packed


def _unpack(payload: bytes) -> list[object]:
    try:
        value = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData) as exc:
        raise SegmentError(f"a segment entry does not decode: {exc}") from None
    if not isinstance(value, list):
        raise SegmentError("a segment entry is not a list")
    return value


def is_path(payload: bytes) -> bool:
    """Whether a segment entry holds a Merkle path (not a record)."""
    return _unpack(payload)[:1] == [PATH_ENTRY]


def read_path(directory: Path, segment: int, offset: int) -> bytes:
    """The Merkle path stored at `offset` of `segment`."""
    value = _unpack(read_entry(segment_path(directory, segment), offset))
    if len(value) != 2 or value[0] != PATH_ENTRY or not isinstance(value[1], bytes):
        raise SegmentError(f"segment {segment} offset {offset}: not a Merkle path")
    return value[1]


def kept_path(
    directory: Path, path: bytes | None, segment: int | None, offset: int | None
) -> bytes | None:
    """A kept record's Merkle path from its index row: the ``path`` column, or the
    segment entry ``pseg``/``poff`` point to; None while it has no receipt."""
    if path is not None:
        return bytes(path)
    if segment is None or offset is None:
        return None
    return read_path(directory, int(segment), int(offset))


def decode(payload: bytes) -> tuple[bytes, bytes, bytes | None]:
    """(body, signature, audience) of a segment entry."""
    value = _unpack(payload)
    if len(value) != 3:
        raise SegmentError("a segment entry is not a record")
    body, signature, audience = value
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise SegmentError("a segment entry is not a record")
    return body, signature, audience if isinstance(audience, bytes) else None


def read_record(directory: Path, segment: int, offset: int) -> tuple[bytes, bytes]:
    """(body, signature) of the record stored at `offset` of `segment`."""
    body, signature, _ = decode(read_entry(segment_path(directory, segment), offset))
    return body, signature


@dataclass(frozen=True, slots=True)
class _Row:
    agent: bytes
    stream: str
    seq: int
    hash: bytes
    audience: bytes | None
    segment: int
    offset: int
    end: int


def _indexed(db: sqlite3.Connection, row: _Row) -> bool:
    """Whether `row` is in the index already; another record at its seq is loud."""
    found = db.execute(
        f"SELECT hash FROM anchor_records WHERE sid = {STREAM_ID} AND seq = ?",
        (row.agent, row.stream, row.seq),
    ).fetchone()
    if found is not None and bytes(found[0]) != row.hash:
        raise SegmentError(
            f"{row.stream}/{row.seq}: the index holds another record than segment"
            f" {row.segment} at offset {row.offset}"
        )
    return found is not None


def _span_of(r: _Row, batches: Sequence[Span]) -> int | None:
    """The id of the batch among `batches` that row `r` falls in, if any."""
    for agent, stream, first, last, span_id in batches:
        if r.agent == agent and r.stream == stream and first <= r.seq <= last:
            return span_id
    return None


class _Ids:
    """The ids a log's rows name their (agent, stream) pairs and audiences by (see module).

    The stream map stays small (an agent's streams, a buyer's producers' streams); the
    peer map is bounded by `PEER_IDS`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._streams: dict[tuple[bytes, str], int] = {}
        self._peers: dict[bytes, int] = {}

    def resolve(
        self, db: sqlite3.Connection, rows: Sequence[_Row]
    ) -> tuple[dict[tuple[bytes, str], int], dict[bytes, int]]:
        """The ids of `rows`' streams and audiences, inserted where missing inside the
        caller's write transaction; remembered once it commits."""
        streams: dict[tuple[bytes, str], int] = {}
        peers: dict[bytes, int] = {}
        for r in rows:
            key = (r.agent, r.stream)
            if key not in streams:
                known = self._streams.get(key)
                streams[key] = known if known is not None else _stream_id(db, *key)
            if r.audience is not None and r.audience not in peers:
                known = self._peers.get(r.audience)
                peers[r.audience] = known if known is not None else _peer_id(db, r.audience)
        self._store.after_commit(lambda: self._remember(streams, peers))
        return streams, peers

    def _remember(self, streams: dict[tuple[bytes, str], int], peers: dict[bytes, int]) -> None:
        self._streams.update(streams)
        fresh = [(key, id_) for key, id_ in peers.items() if key not in self._peers]
        if len(self._peers) + len(fresh) > PEER_IDS:
            self._peers.clear()
        self._peers.update(fresh[:PEER_IDS])


def _stream_id(db: sqlite3.Connection, agent: bytes, stream: str) -> int:
    """The id of (agent, stream), inserted when it has none (inside a write transaction)."""
    row = db.execute(
        "SELECT id FROM anchor_streams WHERE agent = ? AND stream = ?", (agent, stream)
    ).fetchone()
    if row is not None:
        return int(row[0])
    cursor = db.execute("INSERT INTO anchor_streams (agent, stream) VALUES (?, ?)", (agent, stream))
    return int(cursor.lastrowid or 0)


def _peer_id(db: sqlite3.Connection, key: bytes) -> int:
    """The id of a peer key, inserted when it has none (inside a write transaction)."""
    row = db.execute("SELECT id FROM anchor_peers WHERE key = ?", (key,)).fetchone()
    if row is not None:
        return int(row[0])
    return int(db.execute("INSERT INTO anchor_peers (key) VALUES (?)", (key,)).lastrowid or 0)


class RecordLog:
    """Appends one origin's records to segments and folds their index (see module)."""

    def __init__(
        self,
        store: Store,
        origin: str,
        *,
        fold_rows: int | None = None,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        """Nothing is read or written until `recover` or `append`. `fold_rows` rows
        wait in memory before a fold (for kept records, `HOLD_ROWS` by default)."""
        if origin not in ("own", "kept"):
            raise ValueError(f"origin must be 'own' or 'kept', not {origin!r}")
        self._store = store
        self.origin = origin
        self.directory = segments_dir(store)
        self.fold_rows = fold_rows or (FOLD_ROWS if origin == "own" else HOLD_ROWS)
        self.segment_bytes = segment_bytes
        self._ends: dict[int, int] = {}  # segment -> end of what was appended to it
        self._writer: SegmentWriter | None = None
        self._segment = 0
        self._pending: list[_Row] = []
        self._held: dict[tuple[bytes, str, int], bytes] = {}  # pending rows' hashes
        self._top: dict[tuple[bytes, str], int] = {}  # highest pending seq per stream
        self._ids = _Ids(store)
        self._recovered = False

    # ---------------------------------------------------------------- writing

    def recover(self) -> int:
        """Index what the segments hold past their ``indexed_to`` (a crash lost those
        rows); cut a torn tail off the newest segment. Returns rows indexed."""
        if self._recovered:
            return 0
        rows: list[_Row] = []
        newest: tuple[int, int] | None = None
        with self._store.read() as db:
            segments = db.execute(
                "SELECT id, indexed_to FROM anchor_segments WHERE origin = ? ORDER BY id",
                (self.origin,),
            ).fetchall()
        for segment, indexed_to in segments:
            path = segment_path(self.directory, int(segment))
            valid_to = int(indexed_to)
            if not path.exists():  # removed by hand: never append where offsets lie
                newest = None
                continue
            for offset, end, payload in scan(path, int(indexed_to)):
                if not is_path(payload):  # a path's row points at it, or it is an orphan
                    rows.append(self._row(payload, int(segment), offset, end))
                valid_to = end
            newest = (int(segment), max(valid_to, HEADER))
        for r in rows:
            self._ends[r.segment] = max(self._ends.get(r.segment, 0), r.end)
        if rows:
            with self._store.write() as db:
                # Kept rows may have been indexed out of order (proven first), past
                # `indexed_to`: those are there already.
                fresh = [r for r in rows if not _indexed(db, r)]
                self._insert(db, fresh, touched={r.segment for r in rows})
        if newest is not None:
            self._open(*newest)
        self._recovered = True
        return len(rows)

    def append(self, records: Sequence[tuple[SignedRecord, bytes | None]]) -> None:
        """Write records (with the peer each was delivered to) to the current segment;
        their index rows wait for the next fold. Returns once the bytes are written."""
        if not records:
            return
        if not self._recovered:
            self.recover()
        writer = self._current()
        offsets = writer.append([encode(signed, audience) for signed, audience in records])
        ends = [*offsets[1:], writer.size]
        self._ends[self._segment] = writer.size
        for (signed, audience), offset, end in zip(records, offsets, ends, strict=True):
            self._pending.append(
                _Row(
                    signed.agent,
                    signed.stream,
                    signed.seq,
                    signed.hash,
                    audience,
                    self._segment,
                    offset,
                    end,
                )
            )
            self._held[(signed.agent, signed.stream, signed.seq)] = signed.hash
            key = (signed.agent, signed.stream)
            self._top[key] = max(self._top.get(key, -1), signed.seq)
        if len(self._pending) >= self.fold_rows:
            self.fold()

    def fold(self) -> int:
        """Write the waiting index rows in one transaction; returns how many. (They
        leave memory only once committed: a failed fold loses nothing.)"""
        if not self._pending:
            return 0
        count = len(self._pending)
        with self._store.write() as db:
            self.insert_waiting(db)
        self.folded()
        return count

    def insert_waiting(self, db: sqlite3.Connection, batches: Sequence[Span] = ()) -> int:
        """Insert the waiting index rows inside the caller's write transaction; those of
        `batches` (each agent, stream, first seq, last seq, batch id) already assigned
        to theirs, so planning batches rewrites no row. Returns how many rows fell in
        `batches`. Call `folded` once that transaction committed (and only then)."""
        inside = sum(1 for r in self._pending if _span_of(r, batches) is not None)
        self._insert(db, self._pending, batches)
        return inside

    def folded(self) -> None:
        """The rows `insert_waiting` wrote are committed: forget them here."""
        self._pending, self._held, self._top = [], {}, {}

    def stage_paths(
        self, agent: bytes, stream: str, paths: Mapping[int, bytes]
    ) -> dict[int, tuple[int, int]]:
        """Append the Merkle paths of the waiting rows among `paths`' seqs to the segment
        (one write; outside any transaction: the segment may rotate); returns seq ->
        (segment, offset) for `insert_proven`. An entry whose row is never inserted is
        an orphan nothing points at."""
        seqs = sorted(
            r.seq for r in self._pending if r.agent == agent and r.stream == stream
            and r.seq in paths
        )  # fmt: skip
        if not seqs:
            return {}
        writer = self._current()
        offsets = writer.append([encode_path(paths[seq]) for seq in seqs])
        self._ends[self._segment] = writer.size
        return {seq: (self._segment, offset) for seq, offset in zip(seqs, offsets, strict=True)}

    def insert_proven(
        self,
        db: sqlite3.Connection,
        agent: bytes,
        stream: str,
        staged: Mapping[int, tuple[int, int]],
        batch_id: int,
    ) -> set[int]:
        """Insert, inside the caller's write transaction, the waiting rows `stage_paths`
        wrote paths for, with their batch: a kept record proven before it was ever
        folded is written once, its path in the segment. Returns the seqs inserted;
        call `taken` with them once the transaction committed."""
        rows = [
            r for r in self._pending
            if r.agent == agent and r.stream == stream and r.seq in staged
        ]  # fmt: skip
        if rows:
            rest = [r for r in self._pending if not (r.agent == agent and r.stream == stream
                                                     and r.seq in staged)]  # fmt: skip
            self._insert(db, rows, staged=staged, batch_id=batch_id, remaining=rest)
        return {r.seq for r in rows}

    def taken(self, agent: bytes, stream: str, seqs: set[int]) -> None:
        """The rows `insert_proven` wrote are committed: forget them here."""
        if not seqs:
            return
        self._pending = [
            r for r in self._pending if not (r.agent == agent and r.stream == stream
                                             and r.seq in seqs)
        ]  # fmt: skip
        for seq in seqs:
            self._held.pop((agent, stream, seq), None)

    def waiting_agents(self) -> set[bytes]:
        """The agents with records appended and not indexed yet."""
        return {r.agent for r in self._pending}

    def waiting_seqs(self, agent: bytes) -> dict[str, list[int]]:
        """stream -> seqs of `agent`'s records appended and not indexed yet, ascending."""
        out: dict[str, list[int]] = {}
        for r in self._pending:
            if r.agent == agent:
                out.setdefault(r.stream, []).append(r.seq)
        for seqs in out.values():
            seqs.sort()
        return out

    def pending_hash(self, agent: bytes, stream: str, seq: int) -> bytes | None:
        """The hash of a record appended but not folded yet, at that seq."""
        return self._held.get((agent, stream, seq))

    def pending_top(self, agent: bytes, stream: str) -> int | None:
        """The highest seq of a stream appended but not folded yet."""
        return self._top.get((agent, stream))

    @property
    def waiting(self) -> int:
        """Index rows not folded yet."""
        return len(self._pending)

    def close(self, *, fold: bool = True) -> None:
        """Fold what waits (unless told not to: `recover` will) and close the file."""
        try:
            if fold:
                self.fold()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # ---------------------------------------------------------------- internals

    def _row(self, payload: bytes, segment: int, offset: int, end: int) -> _Row:
        body, _, audience = decode(payload)
        record = decode_record(body)
        return _Row(
            record.agent,
            record.stream,
            record.seq,
            record_hash(body),
            audience,
            segment,
            offset,
            end,
        )

    def _insert(
        self,
        db: sqlite3.Connection,
        rows: Sequence[_Row],
        batches: Sequence[Span] = (),
        *,
        staged: Mapping[int, tuple[int, int]] | None = None,
        batch_id: int | None = None,
        remaining: Sequence[_Row] = (),
        touched: set[int] | None = None,
    ) -> None:
        """Insert index rows and move each segment's ``indexed_to`` to where the first
        row still waiting (`remaining`) begins: everything before it is indexed."""

        def batch_of(r: _Row) -> int | None:
            return batch_id if batch_id is not None else _span_of(r, batches)

        streams, peers = self._ids.resolve(db, rows)
        db.executemany(
            _INSERT,
            [
                (
                    streams[(r.agent, r.stream)],
                    r.seq,
                    r.hash,
                    self.origin,
                    None if r.audience is None else peers[r.audience],
                    r.segment,
                    r.offset,
                    batch_of(r),
                    *(staged[r.seq] if staged is not None else (None, None)),
                )
                for r in rows
            ],
        )
        count: dict[int, int] = {}  # index rows pointing into each segment, paths too
        for r in rows:
            count[r.segment] = count.get(r.segment, 0) + 1
            if staged is not None:
                pseg = staged[r.seq][0]
                count[pseg] = count.get(pseg, 0) + 1
        reach: dict[int, int] = {}
        for segment in touched if touched is not None else set(count):
            waiting = [r.offset for r in remaining if r.segment == segment]
            reach[segment] = min(waiting) if waiting else self._ends.get(segment, 0)
        db.executemany(
            "UPDATE anchor_segments SET indexed_to = MAX(indexed_to, ?), live = live + ?"
            " WHERE id = ?",
            [(reach[s], count.get(s, 0), s) for s in reach],
        )

    def _current(self) -> SegmentWriter:
        writer = self._writer
        if writer is not None and writer.size < self.segment_bytes:
            return writer
        if writer is not None:
            self.fold()  # rows of the full segment first: its indexed_to is final
            writer.close()
            self._writer = None
        with self._store.write() as db:
            segment = int(
                db.execute(
                    "INSERT INTO anchor_segments (origin, indexed_to, live) VALUES (?, 0, 0)",
                    (self.origin,),
                ).lastrowid
                or 0
            )
        return self._open(segment, None)

    def _open(self, segment: int, valid_to: int | None) -> SegmentWriter:
        sync = self._store.synchronous == "FULL"
        writer = SegmentWriter(segment_path(self.directory, segment), sync=sync, valid_to=valid_to)
        self._writer, self._segment = writer, segment
        return writer


__all__ = [
    "FOLD_ROWS",
    "PEER_ID",
    "STREAM_ID",
    "RecordLog",
    "decode",
    "encode",
    "read_record",
    "segments_dir",
]
