"""Channel records in the agent's SQLite store.

Owns the ``channels`` table, the payment journal beside it (`mesh.channel.journal`:
payments and acknowledgements, folded into the table every MiB) and the mapping
between a `Record` and its row. One `save` call writes any number of records -- the
table's in one transaction, the journal's in one append (group commit); the channel
manager calls it before it sends or acknowledges anything (DESIGN §7).
Blocking SQLite: one caller at a time (the manager serialises every use of the store).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    """A record as stored, with the service it pays for and the raw transactions."""

    record: Record
    service: str
    funding_raw: bytes | None
    close_raw: bytes | None


_UPSERT = (
    f"INSERT INTO channels ({_COLUMNS}) VALUES ({', '.join('?' * len(_COLUMNS.split(',')))})"
    " ON CONFLICT (channel_id) DO UPDATE SET "
    + ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _COLUMNS.split(",")[1:])
)
_SELECT = f"SELECT {_COLUMNS}, funding_raw, close_raw FROM channels"
"""Every stored column of a channel, in the order `_stored` reads them."""
_PAY_FROM, _PAY_TO = 15, 20
"""`_row[_PAY_FROM:_PAY_TO]` is seq, total, payer_sig, acked_seq, acked_total: all that a
payment or an acknowledgement changes."""
_UPDATE_PAYMENT = (
    "UPDATE channels SET seq = ?, total = ?, payer_sig = ?, acked_seq = ?, acked_total = ?"
    " WHERE channel_id = ?"
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
        self, store: Store, *, journal: bool = True, checkpoint_bytes: int = CHECKPOINT_BYTES
    ) -> None:
        """Register the channel schema in `store`.

        With `journal` (the default), payments and acknowledgements are appended to
        the payment journal beside the database (`journal_path`) and folded into the
        table whenever the journal has grown past `checkpoint_bytes`.
        """
        self._store = store
        store.register(CHANNEL_SCHEMA)
        # The row each channel has on disk (table or journal) as of our last write. This
        # store is the only writer of a channel's row (one manager owns an agent's channels).
        self._written: dict[object, tuple[object, ...]] = {}
        self._journal = (
            Journal(journal_path(store.path), sync=store.synchronous == "FULL") if journal else None
        )
        self._checkpoint_bytes = checkpoint_bytes
        self._journaled: set[object] = set()  # channels whose latest row is in the journal

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
            folded = [self._written[cid] for cid in self._journaled]
            self._write_table(full, [*folded, *(row for _, row in hot)])
            try:
                journal.clear()
            except OSError as exc:  # kept: replaying it changes nothing
                raise StoreError(f"{journal.path}: cannot truncate ({exc})") from None
            self._journaled.clear()
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

    def _write_table(self, full: list[tuple[object, ...]], hot: list[tuple[object, ...]]) -> None:
        """Upsert `full` rows and narrow-update `hot` ones in one transaction."""
        if not (full or hot):
            return
        with self._store.write() as db:
            if full:
                db.executemany(_UPSERT, full)
            if hot:
                db.executemany(_UPDATE_PAYMENT, [(*r[_PAY_FROM:_PAY_TO], r[0]) for r in hot])
        for row in (*full, *hot):
            self._written[row[0]] = row

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
        if any, is a full row): memory stays bounded by the channels in use."""
        self._written.pop(channel_id, None)
        self._journaled.discard(channel_id)

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
            rows = db.execute(f"{_SELECT} ORDER BY rowid").fetchall()
        latest = read_journal(journal_path(self._store.path))
        stored = [_merged(_stored(row), latest) for row in rows]
        return [s for s in stored if include_final or s.record.state not in FINAL_STATES]


def journal_path(database: Path) -> Path:
    """Where the payment journal of the database at `database` lives (beside it)."""
    return database.with_name(database.name + "-channels.journal")


def _merged(stored: StoredChannel, latest: dict[bytes, Hot]) -> StoredChannel:
    hot = latest.get(stored.record.terms.channel_id)
    if hot is None:
        return stored
    return replace(stored, record=hot.merged_into(stored.record))


def _stored(row: Sequence[Any]) -> StoredChannel:
    record, service = _record(tuple(row[:-2]))
    funding, close = row[-2], row[-1]
    return StoredChannel(
        record,
        service,
        None if funding is None else bytes(funding),
        None if close is None else bytes(close),
    )
