"""Channel records in the agent's SQLite store.

Owns the ``channels`` table, the payment journal beside it (`mesh.channel.journal`:
payments and acknowledgements, folded into the table every MiB) and the mapping
between a `Record` and its row. One `save` call writes any number of records -- the
table's in one transaction, the journal's in one append (group commit); the channel
manager calls it before it sends or acknowledges anything (docs/ARCHITECTURE.md §7).

A channel that is final (closed, refunded, failed) is never loaded or rewritten; the
row records when it became final (``final_at``, wall clock), and `compact` later cuts
it to a tombstone: what refuses a reuse of its id or funding outpoint (`seen`) and
what its history shows (state, totals, close txid), without the raw transactions and
signatures. Nothing of a funded channel is ever deleted.
Blocking SQLite: one caller at a time (the manager serialises every use of the store).
`load_channels` and `ids_with_prefix` only read, on any connection: a read-only one
to a stopped agent's store too (`agents.offline`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from mesh.channel.journal import Hot, Journal
from mesh.channel.journal import read as read_journal
from mesh.channel.state import FINAL_STATES, Record, Role, State
from mesh.channel.txs import Terms
from mesh.store import Schema, Store, StoreError

CHECKPOINT_BYTES = 1 << 20
"""Fold the payment journal into the table once it holds this much (~7 400 records)."""

CHANNEL_SCHEMA = Schema(
    "channels",
    (
        """
        CREATE TABLE channels (
            channel_id BLOB PRIMARY KEY,
            role TEXT NOT NULL,
            state TEXT NOT NULL,
            peer_id TEXT NOT NULL,
            service TEXT NOT NULL,
            payer_key BLOB NOT NULL,
            payee_key BLOB NOT NULL,
            capacity INTEGER NOT NULL,
            close_fee INTEGER NOT NULL,
            refund_fee INTEGER NOT NULL,
            expiry_height INTEGER NOT NULL,
            funding_txid TEXT NOT NULL,
            funding_vout INTEGER NOT NULL,
            payer_payout BLOB NOT NULL,
            payee_payout BLOB NOT NULL,
            seq INTEGER NOT NULL,
            total INTEGER NOT NULL,
            payer_sig BLOB NOT NULL,
            acked_seq INTEGER NOT NULL,
            acked_total INTEGER NOT NULL,
            refund_sig BLOB NOT NULL,
            close_txid TEXT NOT NULL,
            funding_raw BLOB,
            close_raw BLOB
        );
        CREATE INDEX channels_by_state ON channels (state);
        """,
        # A funding outpoint is never served twice (`ChannelStore.seen`).
        "CREATE INDEX channels_by_outpoint ON channels (funding_txid, funding_vout);",
        # What the settlement paid the payee (`Record.paid_on_chain`). Known for rows
        # settled before: a payee's close paid its total, a refund nothing; a payer's
        # close may have paid less than it signed, so that stays unknown (NULL).
        """
        ALTER TABLE channels ADD COLUMN paid_on_chain INTEGER;
        UPDATE channels SET paid_on_chain = 0 WHERE state = 'refunded';
        UPDATE channels SET paid_on_chain = total WHERE state = 'closed' AND role = 'payee';
        """,
        # Why the payee refused a payer's funding (`Record.refused`): none before.
        "ALTER TABLE channels ADD COLUMN refused TEXT NOT NULL DEFAULT '';",
        # When a channel became final (wall clock, seconds; rows final before this
        # migration count from it), and whether `compact` cut it to a tombstone.
        """
        ALTER TABLE channels ADD COLUMN final_at REAL;
        ALTER TABLE channels ADD COLUMN compacted INTEGER NOT NULL DEFAULT 0;
        UPDATE channels SET final_at = CAST(strftime('%s', 'now') AS REAL)
            WHERE state IN ('closed', 'refunded', 'failed');
        CREATE INDEX channels_to_compact ON channels (final_at) WHERE compacted = 0;
        """,
    ),
)

_COLUMNS = (
    "channel_id, role, state, peer_id, service, payer_key, payee_key, capacity, close_fee,"
    " refund_fee, expiry_height, funding_txid, funding_vout, payer_payout, payee_payout,"
    " seq, total, payer_sig, acked_seq, acked_total, refund_sig, close_txid, paid_on_chain,"
    " refused"
)


@dataclass(frozen=True)
class StoredChannel:
    """A record as stored, with the service it pays for and the raw transactions.

    A compacted channel (`compacted`) keeps its terms, state, totals and close txid;
    its signatures are empty and its raw transactions None."""

    record: Record
    service: str
    funding_raw: bytes | None
    close_raw: bytes | None
    final_at: float | None = None
    """When the channel became final (wall clock), None while it is not."""
    compacted: bool = False


_FINAL_VALUES = frozenset(state.value for state in FINAL_STATES)
_FINAL_SQL = ", ".join(f"'{value}'" for value in sorted(_FINAL_VALUES))
_UPSERT = (
    f"INSERT INTO channels ({_COLUMNS}, final_at)"
    f" VALUES ({', '.join('?' * (len(_COLUMNS.split(',')) + 1))})"
    " ON CONFLICT (channel_id) DO UPDATE SET "
    + ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _COLUMNS.split(",")[1:])
    # The first time a channel is final counts; a tombstone is never rewritten.
    + ", final_at = COALESCE(channels.final_at, excluded.final_at) WHERE channels.compacted = 0"
)
_SELECT = f"SELECT {_COLUMNS}, final_at, compacted, funding_raw, close_raw FROM channels"
"""Every stored column of a channel, in the order `_stored` reads them."""
_PAY_FROM, _PAY_TO = 15, 20
"""`_row[_PAY_FROM:_PAY_TO]` is seq, total, payer_sig, acked_seq, acked_total: all that a
payment or an acknowledgement changes."""
_UPDATE_PAYMENT = (
    "UPDATE channels SET seq = ?, total = ?, payer_sig = ?, acked_seq = ?, acked_total = ?"
    " WHERE channel_id = ?"
)
# Journal entries no remembered row stands for, folded by the journal's own rule: each
# pair only ever grows, so an entry wins only where its seq (or acked_seq) is higher.
_MERGE_PAYMENT = (
    "UPDATE channels SET seq = ?, total = ?, payer_sig = ?"
    " WHERE channel_id = ? AND seq < ? AND compacted = 0"
)
_MERGE_ACK = (
    "UPDATE channels SET acked_seq = ?, acked_total = ?"
    " WHERE channel_id = ? AND acked_seq < ? AND compacted = 0"
)
_COMPACT = (
    "UPDATE channels SET payer_sig = x'', refund_sig = x'', funding_raw = NULL,"
    " close_raw = NULL, compacted = 1 WHERE channel_id = ?"
)


def _row(record: Record, service: str) -> tuple[object, ...]:
    t = record.terms
    return (
        t.channel_id,
        record.role.value,
        record.state.value,
        record.peer_id,
        service,
        t.payer_key,
        t.payee_key,
        t.capacity,
        t.close_fee,
        t.refund_fee,
        t.expiry_height,
        t.funding_txid,
        t.funding_vout,
        t.payer_payout,
        t.payee_payout,
        record.seq,
        record.total,
        record.payer_sig,
        record.acked_seq,
        record.acked_total,
        record.refund_sig,
        record.close_txid,
        record.paid_on_chain,
        record.refused,
    )


def _record(row: Sequence[Any]) -> tuple[Record, str]:
    (
        cid,
        role,
        state,
        peer,
        service,
        pk1,
        pk2,
        cap,
        cfee,
        rfee,
        expiry,
        ftxid,
        fvout,
        out1,
        out2,
        seq,
        total,
        psig,
        aseq,
        atotal,
        rsig,
        ctxid,
        paid,
        refused,
    ) = row
    terms = Terms(
        channel_id=bytes(cid),
        payer_key=bytes(pk1),
        payee_key=bytes(pk2),
        capacity=int(cap),
        close_fee=int(cfee),
        refund_fee=int(rfee),
        expiry_height=int(expiry),
        funding_txid=str(ftxid),
        funding_vout=int(fvout),
        payer_payout=bytes(out1),
        payee_payout=bytes(out2),
    )
    record = Record(
        role=Role(role),
        state=State(state),
        terms=terms,
        peer_id=str(peer),
        seq=int(seq),
        total=int(total),
        payer_sig=bytes(psig),
        acked_seq=int(aseq),
        acked_total=int(atotal),
        refund_sig=bytes(rsig),
        close_txid=str(ctxid),
        paid_on_chain=None if paid is None else int(paid),
        refused=str(refused),
    )
    return record, str(service)


class ChannelStore:
    """Persist and reload channel records."""

    def __init__(
        self,
        store: Store,
        *,
        journal: bool = True,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Register the channel schema in `store`.

        With `journal` (the default), payments and acknowledgements are appended to
        the payment journal beside the database (`journal_path`) and folded into the
        table whenever the journal has grown past `checkpoint_bytes`. `clock` (wall
        time) dates a channel's first final row (`compact`).
        """
        self._store = store
        self._clock = clock
        store.register(CHANNEL_SCHEMA)
        # The row each channel has on disk (table or journal) as of our last write. This
        # store is the only writer of a channel's row (one manager owns an agent's channels).
        self._written: dict[object, tuple[object, ...]] = {}
        self._journal = (
            Journal(journal_path(store.path), sync=store.synchronous == "FULL") if journal else None
        )
        self._checkpoint_bytes = checkpoint_bytes
        self._journaled: set[object] = set()  # channels whose latest row is in the journal
        # The journaled latest of channels forgotten since (`forget_written`: few, a
        # final channel's last full row is in the table): the next checkpoint folds them.
        self._stray: dict[bytes, Hot] = {}

    def save(self, records: Iterable[tuple[Record, str]]) -> None:
        """Write (record, service) pairs durably, all or (on an error) none of the table
        rows; raw txs are kept.

        A record that differs from what this store last wrote only by a payment or an
        acknowledgement (the hot path) is appended to the payment journal (without one:
        a narrow UPDATE of those columns); any other change is a row of the table.
        """
        pairs = [(record, _row(record, service)) for record, service in records]
        full: list[tuple[object, ...]] = []
        hot: list[tuple[Record, tuple[object, ...]]] = []
        for record, row in pairs:
            old = self._written.get(row[0])
            if old and old[:_PAY_FROM] == row[:_PAY_FROM] and old[_PAY_TO:] == row[_PAY_TO:]:
                hot.append((record, row))
            else:
                full.append(row)
        journal = self._journal
        if journal is None:
            self._write_table(full, [row for _, row in hot])
        elif journal.size() >= self._checkpoint_bytes:
            # Fold the journal into the table with this batch, then empty it.
            folded, merged = self._unfolded()
            self._write_table(full, [*folded, *(row for _, row in hot)], merged)
            self._cleared()
        else:
            entries = [(record, row, Hot.of(record)) for record, row in hot]
            table = [row for _, row, h in entries if not h.fits()]
            self._write_table(full, table)
            appended = [(record, row, h) for record, row, h in entries if h.fits()]
            if appended:
                try:
                    journal.append([(r.terms.channel_id, h) for r, _, h in appended])
                except OSError as exc:
                    raise StoreError(f"{journal.path}: cannot append ({exc})") from None
                for _, row, _ in appended:
                    self._written[row[0]] = row
                    self._journaled.add(row[0])

    def _write_table(
        self,
        full: list[tuple[object, ...]],
        hot: list[tuple[object, ...]],
        merged: dict[bytes, Hot] | None = None,
    ) -> None:
        """Upsert `full` rows, narrow-update `hot` ones and fold `merged` journal
        entries in, in one transaction."""
        if not (full or hot or merged):
            return
        now = self._clock()
        with self._store.write() as db:
            if full:
                dated = [(*r, now if r[2] in _FINAL_VALUES else None) for r in full]
                db.executemany(_UPSERT, dated)
            if hot:
                db.executemany(_UPDATE_PAYMENT, [(*r[_PAY_FROM:_PAY_TO], r[0]) for r in hot])
            if merged:
                _merge(db, merged)
        for row in (*full, *hot):
            self._written[row[0]] = row
            self._journaled.discard(row[0])  # its journal entries are folded or older

    def _unfolded(self) -> tuple[list[tuple[object, ...]], dict[bytes, Hot]]:
        """What the journal holds that the table may not: the rows this store journaled,
        and the entries no remembered row stands for (an earlier run's, or of channels
        forgotten since). Raises `StoreError`."""
        leftover: dict[bytes, Hot] = {}
        if self._journal is not None:
            try:
                leftover = self._journal.leftover()
            except OSError as exc:
                raise StoreError(f"{self._journal.path}: cannot read ({exc})") from None
        folded = [self._written[cid] for cid in self._journaled]
        return folded, {**leftover, **self._stray}

    def _cleared(self) -> None:
        """Empty the journal once the table holds all of it (`_unfolded`). A journal
        that cannot be truncated is kept: replaying it changes nothing."""
        if self._journal is not None:
            try:
                self._journal.clear()
            except OSError as exc:
                raise StoreError(f"{self._journal.path}: cannot truncate ({exc})") from None
        self._journaled.clear()
        self._stray.clear()

    def close(self) -> None:
        """Close the journal file (the database is the caller's)."""
        if self._journal is not None:
            self._journal.close()

    def save_raw(
        self, channel_id: bytes, *, funding: bytes | None = None, close: bytes | None = None
    ) -> None:
        """Record a funding or close transaction (before it is broadcast)."""
        with self._store.write() as db:
            if funding is not None:
                db.execute(
                    "UPDATE channels SET funding_raw = ? WHERE channel_id = ?",
                    (funding, channel_id),
                )
            if close is not None:
                db.execute(
                    "UPDATE channels SET close_raw = ? WHERE channel_id = ?", (close, channel_id)
                )

    def seen(self, channel_id: bytes, funding_txid: str, funding_vout: int) -> str | None:
        """Whether a stored channel, in any state, has this id or this funding outpoint:
        what it is (for a refusal), or None. Two indexed lookups, no journal read."""
        with self._store.read() as db:
            row = db.execute(
                "SELECT state FROM channels WHERE channel_id = ?", (channel_id,)
            ).fetchone()
            if row is not None:
                return f"channel id already used (a {row[0]} channel)"
            row = db.execute(
                "SELECT state FROM channels WHERE funding_txid = ? AND funding_vout = ?",
                (funding_txid, funding_vout),
            ).fetchone()
        return None if row is None else f"funding outpoint already used (a {row[0]} channel)"

    def state_of(self, channel_id: bytes) -> State | None:
        """A stored channel's state (None if we never stored it); no journal read."""
        with self._store.read() as db:
            row = db.execute(
                "SELECT state FROM channels WHERE channel_id = ?", (channel_id,)
            ).fetchone()
        return None if row is None else State(str(row[0]))

    def forget_unfunded(self, channel_ids: Sequence[bytes]) -> int:
        """Delete payee proposals that were never funded (expired); returns how many.
        Nothing else is ever deleted: a funded or settled channel stays."""
        with self._store.write() as db:
            cursor = db.executemany(
                "DELETE FROM channels WHERE channel_id = ? AND role = 'payee'"
                " AND state IN ('proposed', 'refund-signed') AND funding_raw IS NULL",
                [(cid,) for cid in channel_ids],
            )
            deleted = int(cursor.rowcount)
        for cid in channel_ids:
            self._written.pop(cid, None)
        return deleted

    def forget_written(self, channel_id: bytes) -> None:
        """Drop what this store remembers of a final channel's last row (its next write,
        if any, is a full row): memory stays bounded by the channels in use. Its latest
        journal entry, if any, is still folded in by the next checkpoint."""
        row = self._written.pop(channel_id, None)
        if channel_id in self._journaled:
            self._journaled.discard(channel_id)
            if row is not None:
                self._stray[channel_id] = _hot(row)

    def compact(self, before: float) -> int:
        """Cut every channel that became final before `before` (wall clock) to a
        tombstone; returns how many. A tombstone keeps the terms, role, peer, service,
        state, totals, close txid and refusal -- enough to refuse its id and funding
        outpoint again (`seen`) and to show its history -- and loses its signatures
        and raw transactions. The journal is folded into the table first and emptied
        (a checkpoint), so it holds nothing of a compacted channel."""
        folded, merged = self._unfolded()
        with self._store.write() as db:
            if folded:
                db.executemany(_UPDATE_PAYMENT, [(*r[_PAY_FROM:_PAY_TO], r[0]) for r in folded])
            _merge(db, merged)
            ids = [
                bytes(row[0])
                for row in db.execute(
                    "SELECT channel_id FROM channels WHERE compacted = 0 AND final_at < ?",
                    (before,),
                )
            ]
            db.executemany(_COMPACT, [(cid,) for cid in ids])
        self._cleared()
        for cid in ids:
            self._written.pop(cid, None)
        return len(ids)

    def find(self, channel_id: bytes) -> StoredChannel | None:
        """One channel by id, whatever its state (None if we never stored it)."""
        with self._store.read() as db:
            row = db.execute(f"{_SELECT} WHERE channel_id = ?", (channel_id,)).fetchone()
        if row is None:
            return None
        return _merged(_stored(row), read_journal(journal_path(self._store.path)))

    def load(self, *, include_final: bool = False) -> list[StoredChannel]:
        """Every channel (by default only those not yet closed, refunded or failed)."""
        with self._store.read() as db:
            return load_channels(db, self._store.path, include_final=include_final)


def load_channels(
    db: sqlite3.Connection, database: Path, *, include_final: bool = False
) -> list[StoredChannel]:
    """`ChannelStore.load` on any connection to the database at `database` -- a
    read-only one too (a stopped agent's store): it only reads, the table and the
    payment journal beside the database."""
    where = "" if include_final else f" WHERE state NOT IN ({_FINAL_SQL})"
    rows = db.execute(f"{_SELECT}{where} ORDER BY rowid").fetchall()
    latest = read_journal(journal_path(database))
    return [_merged(_stored(row), latest) for row in rows]


def ids_with_prefix(db: sqlite3.Connection, prefix: str, limit: int = 10) -> list[bytes]:
    """At most `limit` ids of stored channels whose lowercase hex starts with `prefix`
    (hex digits, any number), in id order: a range scan of the primary key, read-only.

    Ids sort as bytes, so those with the prefix follow one another from the prefix
    padded with zeros."""
    start = bytes.fromhex(prefix + "0" * (len(prefix) % 2))
    found: list[bytes] = []
    cursor = db.execute(
        "SELECT channel_id FROM channels WHERE channel_id >= ? ORDER BY channel_id", (start,)
    )
    for (cid,) in cursor:
        if len(found) >= limit or not bytes(cid).hex().startswith(prefix):
            break
        found.append(bytes(cid))
    cursor.close()
    return found


def journal_path(database: Path) -> Path:
    """Where the payment journal of the database at `database` lives (beside it)."""
    return database.with_name(database.name + "-channels.journal")


def _merged(stored: StoredChannel, latest: dict[bytes, Hot]) -> StoredChannel:
    hot = latest.get(stored.record.terms.channel_id)
    if hot is None:
        return stored
    return replace(stored, record=hot.merged_into(stored.record))


def _stored(row: Sequence[Any]) -> StoredChannel:
    record, service = _record(tuple(row[:-4]))
    final_at, compacted, funding, close = row[-4:]
    return StoredChannel(
        record,
        service,
        None if funding is None else bytes(funding),
        None if close is None else bytes(close),
        None if final_at is None else float(final_at),
        bool(compacted),
    )


def _hot(row: tuple[object, ...]) -> Hot:
    """The hot fields of a row made by `_row`."""
    return Hot(*cast(tuple[int, int, bytes, int, int], row[_PAY_FROM:_PAY_TO]))


def _merge(db: sqlite3.Connection, entries: dict[bytes, Hot]) -> None:
    """Fold journal entries into the table by the journal's rule (never backwards)."""
    db.executemany(
        _MERGE_PAYMENT,
        [(h.seq, h.total, h.payer_sig, cid, h.seq) for cid, h in entries.items()],
    )
    db.executemany(
        _MERGE_ACK,
        [(h.acked_seq, h.acked_total, cid, h.acked_seq) for cid, h in entries.items()],
    )
