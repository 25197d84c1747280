"""The local ledger's tables and the SQL that reads and writes them.

`mesh.chain.ledger.LocalLedger` decides *when* to run these; this module owns *what*
runs: the ``ledger`` schema, recording an accepted transaction and its spendable
outputs, looking up and classifying the outputs a transaction spends (missing, spent
in a block, or spent by an earlier unmined transaction), keeping valid non-final
transactions aside (``Policy.nonfinal = "hold"``), building and inserting a block
(coinbase, Merkle tree, header with regtest proof of work), the median time past and
the supply accounting. Every function takes the connection of a transaction the
caller already holds; none opens, commits or sleeps. (docs/ARCHITECTURE.md §5)

Only ``OP_FALSE OP_RETURN`` outputs are data (`is_data_script`): they are not recorded
and their value counts as burned. A bare ``OP_RETURN`` output is recorded like any
other, spendable output. (A ledger written before that rule may hold bare-OP_RETURN
outputs counted as burned and not recorded; its accounting stays balanced, and those
outputs stay unspendable there.)
"""

from __future__ import annotations

import sqlite3
import statistics
from dataclasses import dataclass
from typing import Any

from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.chain import rules
from mesh.chain.errors import LedgerError, TxRejected
from mesh.chain.merkle import display, internal, merkle_levels, mine_header
from mesh.chain.rules import Prevout, Tip
from mesh.chain.tx import (
    NULL_INDEX,
    NULL_TXID,
    OP_FALSE,
    OP_RETURN,
    SEQUENCE_FINAL,
    Outpoint,
    is_data_script,
    parse_exact,
    push,
    txid_of,
)
from mesh.store import Schema

LEDGER_SCHEMA = Schema(
    "ledger",
    (
        """
        CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE blocks (
            height INTEGER PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            header BLOB NOT NULL,
            merkle_root TEXT NOT NULL,
            time INTEGER NOT NULL,
            tx_count INTEGER NOT NULL
        );
        CREATE TABLE txs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            txid TEXT NOT NULL UNIQUE,
            raw BLOB NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('tx', 'mint', 'coinbase')),
            fee INTEGER NOT NULL,
            value_out INTEGER NOT NULL,
            burned INTEGER NOT NULL,
            accepted_at REAL NOT NULL,
            block_height INTEGER REFERENCES blocks (height),
            block_index INTEGER
        );
        CREATE INDEX txs_unmined ON txs (seq) WHERE block_height IS NULL;
        CREATE INDEX txs_by_block ON txs (block_height, block_index);
        CREATE TABLE outputs (
            txid TEXT NOT NULL,
            vout INTEGER NOT NULL,
            satoshis INTEGER NOT NULL,
            script BLOB NOT NULL,
            spent_by TEXT,
            PRIMARY KEY (txid, vout)
        ) WITHOUT ROWID;
        CREATE INDEX outputs_unspent_by_script ON outputs (script) WHERE spent_by IS NULL;
        """,
        # 2: valid non-final transactions kept aside, and the outputs each would spend
        """
        CREATE TABLE held (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            txid TEXT NOT NULL UNIQUE,
            raw BLOB NOT NULL,
            held_at REAL NOT NULL
        );
        CREATE TABLE held_spends (
            txid TEXT NOT NULL,
            vout INTEGER NOT NULL,
            held_by TEXT NOT NULL REFERENCES held (txid),
            PRIMARY KEY (txid, vout)
        ) WITHOUT ROWID;
        CREATE INDEX held_spends_by ON held_spends (held_by);
        """,
    ),
)


MTP_BLOCKS = 11


@dataclass(frozen=True)
class BlockInfo:
    """A block of the ledger: its place, hashes (display hex), time and size."""

    height: int
    hash: str
    merkle_root: str
    time: int
    tx_count: int


@dataclass(frozen=True)
class Balance:
    """The supply accounting: what was minted, paid in fees, burned, and is unspent."""

    minted: int
    fees: int
    burned: int
    unspent: int
    unspent_outputs: int

    @property
    def balanced(self) -> bool:
        """True when no satoshi was created or lost: unspent = minted - fees - burned."""
        return self.unspent == self.minted - self.fees - self.burned


def spent_outputs(db: sqlite3.Connection, tx: Transaction) -> dict[Outpoint, Prevout]:
    """Look up every output `tx` spends; reject missing or already spent ones."""
    found: dict[Outpoint, Prevout] = {}
    for outpoint in rules.outpoints(tx):
        row = db.execute(
            "SELECT o.satoshis, o.script, o.spent_by, s.block_height FROM outputs o"
            " LEFT JOIN txs s ON s.txid = o.spent_by WHERE o.txid = ? AND o.vout = ?",
            (outpoint.txid, outpoint.vout),
        ).fetchone()
        if row is None:
            raise TxRejected("missing-input", f"{outpoint} does not exist (or is unspendable)")
        satoshis, script, spent_by, spender_height = row
        if spent_by is not None and spender_height is not None:
            raise TxRejected(
                "spent-input", f"{outpoint} was spent by {spent_by}, mined at {spender_height}"
            )
        if spent_by is not None:
            raise TxRejected(
                "double-spend", f"{outpoint} is already spent by {spent_by} (first seen wins)"
            )
        found[outpoint] = Prevout(int(satoshis), bytes(script))
    return found


def record(
    db: sqlite3.Connection,
    txid: str,
    raw: bytes,
    tx: Transaction,
    kind: str,
    fee: int,
    now: float,
    block: tuple[int, int] | None = None,
) -> None:
    """Insert an accepted transaction and its spendable outputs."""
    outputs = [
        (i, int(o.satoshis), bytes(o.locking_script.serialize())) for i, o in enumerate(tx.outputs)
    ]
    burned = sum(value for _, value, script in outputs if is_data_script(script))
    db.execute(
        "INSERT INTO txs (txid, raw, kind, fee, value_out, burned, accepted_at,"
        " block_height, block_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            txid,
            raw,
            kind,
            fee,
            sum(value for _, value, _ in outputs),
            burned,
            now,
            None if block is None else block[0],
            None if block is None else block[1],
        ),
    )
    db.executemany(
        "INSERT INTO outputs (txid, vout, satoshis, script) VALUES (?, ?, ?, ?)",
        [(txid, i, value, script) for i, value, script in outputs if not is_data_script(script)],
    )


def accept(
    db: sqlite3.Connection, txid: str, raw: bytes, tx: Transaction, fee: int, now: float
) -> None:
    """Record a transaction that passed every rule into the mempool and spend its inputs.

    A held transaction that spends any of the same outputs can never be valid now; it
    is dropped (SV Node: a final transaction evicts a conflicting non-final one).
    """
    spent = rules.outpoints(tx)
    record(db, txid, raw, tx, "tx", fee, now)
    db.executemany(
        "UPDATE outputs SET spent_by = ? WHERE txid = ? AND vout = ?",
        [(txid, o.txid, o.vout) for o in spent],
    )
    losers = {
        str(r[0])
        for o in spent
        for r in db.execute(
            "SELECT held_by FROM held_spends WHERE txid = ? AND vout = ?", (o.txid, o.vout)
        ).fetchall()
    }
    for loser in losers:
        drop_held(db, loser)


def is_held(db: sqlite3.Connection, txid: str) -> bool:
    """Whether `txid` is a held (valid, non-final) transaction."""
    return db.execute("SELECT 1 FROM held WHERE txid = ?", (txid,)).fetchone() is not None


def hold(db: sqlite3.Connection, txid: str, raw: bytes, tx: Transaction, now: float) -> None:
    """Keep a valid non-final transaction aside; its inputs stay unspent in the UTXO set.

    Two held transactions may not spend the same output: the first seen is kept and
    the later one rejected (``double-spend``). SV Node would let the later one replace
    it under its non-final replacement rules; this ledger does not model replacement.
    """
    for o in rules.outpoints(tx):
        row = db.execute(
            "SELECT held_by FROM held_spends WHERE txid = ? AND vout = ?", (o.txid, o.vout)
        ).fetchone()
        if row is not None:
            raise TxRejected(
                "double-spend", f"{o} is already spent by held non-final {row[0]} (first seen)"
            )
    db.execute("INSERT INTO held (txid, raw, held_at) VALUES (?, ?, ?)", (txid, raw, now))
    db.executemany(
        "INSERT INTO held_spends (txid, vout, held_by) VALUES (?, ?, ?)",
        [(o.txid, o.vout, txid) for o in rules.outpoints(tx)],
    )


def held_txs(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
    """Every held transaction (txid, raw), first held first."""
    rows = db.execute("SELECT txid, raw FROM held ORDER BY seq").fetchall()
    return [(str(r[0]), bytes(r[1])) for r in rows]


def drop_held(db: sqlite3.Connection, txid: str) -> None:
    """Forget a held transaction and the outputs it would spend."""
    db.execute("DELETE FROM held_spends WHERE held_by = ?", (txid,))
    db.execute("DELETE FROM held WHERE txid = ?", (txid,))


def null_input(script_sig: bytes) -> TransactionInput:
    return TransactionInput(
        source_txid=NULL_TXID,
        source_output_index=NULL_INDEX,
        unlocking_script=Script(script_sig),
        sequence=SEQUENCE_FINAL,
    )


def coinbase_tx(ledger_id: bytes, height: int) -> bytes:
    sig = push(height.to_bytes(4, "little")) + push(ledger_id)
    burn = Script(bytes([OP_FALSE, OP_RETURN]) + push(b"m2mesh"))
    raw: bytes = Transaction([null_input(sig)], [TransactionOutput(burn, 0)], version=1).serialize()
    return raw


def insert_block(
    db: sqlite3.Connection,
    ledger_id: bytes,
    height: int,
    prev_hash: bytes,
    when: int,
    mempool: list[str],
) -> tuple[BlockInfo, list[list[bytes]]]:
    coinbase = coinbase_tx(ledger_id, height)
    coinbase_txid = txid_of(coinbase)
    txids = [coinbase_txid, *mempool]
    levels = merkle_levels([internal(t) for t in txids])
    header = mine_header(prev_hash, levels[-1][0], when)
    block = BlockInfo(height, header.hash_hex, display(levels[-1][0]), when, len(txids))
    db.execute(
        "INSERT INTO blocks (height, hash, header, merkle_root, time, tx_count)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (height, block.hash, header.serialize(), block.merkle_root, when, len(txids)),
    )
    record(db, coinbase_txid, coinbase, parse_exact(coinbase), "coinbase", 0, when, (height, 0))
    db.executemany(
        "UPDATE txs SET block_height = ?, block_index = ? WHERE txid = ?",
        [(height, index, txid) for index, txid in enumerate(mempool, start=1)],
    )
    return block, levels


def block_info(row: Any) -> BlockInfo:
    return BlockInfo(int(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]))


def tip_block(db: sqlite3.Connection) -> BlockInfo:
    row = db.execute(
        "SELECT height, hash, merkle_root, time, tx_count FROM blocks ORDER BY height DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise LedgerError("the ledger has no genesis block")
    return block_info(row)


def median_time_past(db: sqlite3.Connection) -> int:
    times = [
        int(r[0])
        for r in db.execute(
            "SELECT time FROM blocks ORDER BY height DESC LIMIT ?", (MTP_BLOCKS,)
        ).fetchall()
    ]
    return int(statistics.median_low(times)) if times else 0


def tip(db: sqlite3.Connection) -> Tip:
    return Tip(next_height=tip_block(db).height + 1, median_time_past=median_time_past(db))


def read_balance(db: sqlite3.Connection) -> Balance:
    minted, fees, burned = db.execute(
        "SELECT COALESCE(SUM(value_out) FILTER (WHERE kind = 'mint'), 0),"
        " COALESCE(SUM(fee), 0), COALESCE(SUM(burned), 0) FROM txs"
    ).fetchone()
    unspent, count = db.execute(
        "SELECT COALESCE(SUM(satoshis), 0), COUNT(*) FROM outputs WHERE spent_by IS NULL"
    ).fetchone()
    return Balance(int(minted), int(fees), int(burned), int(unspent), int(count))
