"""`LocalLedger`: an embedded BSV ledger in one SQLite file that many processes share.

This is the default chain on a single host (docs/ARCHITECTURE.md §5). It owns the ledger's
behaviour: accepting transactions, mining blocks, the faucet, proofs and the export,
and when each runs under which lock. The rules live in `mesh.chain.rules` (pure); the
tables and the SQL on them in `mesh.chain.ledger_db`.

How several processes stay consistent: every submission takes SQLite's write lock
(`BEGIN IMMEDIATE`) before it reads the outputs it spends, so "is this output unspent?"
and "mark it spent" happen atomically across processes; the first transaction to get
the lock wins and a later conflicting one is rejected (`double-spend`, first seen wins).
Parsing and context-free checks run before the lock, script validation inside it (it
needs the outputs and is fast next to the lock hand-over).

Decisions:
- Coins come from `faucet`: a *mint* transaction (null input, like a coinbase) paying
  the requested output, accepted into the mempool and spendable at once. The sum of all
  mints is the supply, so ``sum(unspent) == minted - fees - burned`` always holds.
- Every block starts with a coinbase whose only output is a 0-sat ``OP_FALSE OP_RETURN``
  (fees are burned), and whose script carries the height and this ledger's random id,
  so two ledgers never share a block.
- A block takes the whole mempool in first-seen order (parents always precede
  children). Headers link, carry real Merkle roots and meet regtest proof of work.
- ``synchronous=NORMAL``: a killed process loses nothing; a power cut may lose the last
  commits, like a node's mempool. Resubmitting a known transaction succeeds.
- A valid transaction that is not final yet is rejected (``non-final``, Teranode's way)
  unless ``Policy.nonfinal == "hold"`` (SV Node's non-final mempool): then it is kept
  aside -- not in the mempool, its inputs unspent, its outputs nowhere -- and after
  each mined block every held transaction final for the next block enters the mempool.
  A final transaction spending the same output first evicts it.

It must never: accept a transaction without running every rule, mine a transaction
twice, or hold the write lock across anything but SQLite and script checks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bsv.merkle_path import MerklePath
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_output import TransactionOutput

from mesh.chain import rules
from mesh.chain.base import OutputState, OutputStatus, TxState, TxStatus, Utxo
from mesh.chain.errors import LedgerError, TxRejected
from mesh.chain.ledger_db import (
    LEDGER_SCHEMA,
    Balance,
    BlockInfo,
    accept,
    block_info,
    drop_held,
    held_txs,
    hold,
    insert_block,
    is_held,
    median_time_past,
    null_input,
    read_balance,
    record,
    spent_outputs,
    tip,
    tip_block,
)
from mesh.chain.merkle import BlockHeader, internal, merkle_levels, merkle_path
from mesh.chain.rules import MAX_MONEY, Policy
from mesh.chain.tx import Outpoint, is_data_script, parse_exact, push, txid_of
from mesh.store import Store

__all__ = ["LEDGER_SCHEMA", "Balance", "BlockInfo", "Clock", "LocalLedger", "Summary"]

Clock = Callable[[], float]
_LEVELS_CACHE = 64
_MAX_VOUT = 0xFFFFFFFF  # an outpoint's index is 4 bytes; larger ones cannot exist


@dataclass(frozen=True)
class Summary:
    """What `mesh ledger show` prints."""

    path: str
    ledger_id: str
    height: int
    tip: str
    mempool: int
    transactions: int
    fee_rate: int
    balance: Balance


class LocalLedger:
    """An embedded BSV ledger in an SQLite file. Use `create` or `open`."""

    def __init__(self, store: Store, *, clock: Clock = time.time) -> None:
        self._store = store
        self._clock = clock
        self._levels: OrderedDict[int, list[list[bytes]]] = OrderedDict()
        with store.read() as db:
            meta = dict(db.execute("SELECT key, value FROM ledger_meta").fetchall())
        if "ledger_id" not in meta:
            raise LedgerError(f"{store.path}: not initialised (run `mesh ledger init`)")
        self.ledger_id = bytes.fromhex(str(meta["ledger_id"]))
        self.policy = Policy(**json.loads(str(meta["policy"])))

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        policy: Policy | None = None,
        clock: Clock = time.time,
        check_same_thread: bool = True,
    ) -> LocalLedger:
        """Create a new ledger file with its genesis block; refuse an existing ledger."""
        store = Store(path, synchronous="NORMAL", check_same_thread=check_same_thread)
        try:
            store.register(LEDGER_SCHEMA)
            with store.write() as db:
                if db.execute("SELECT 1 FROM blocks").fetchone():
                    raise LedgerError(f"{path} is already a ledger; refusing to re-initialise it")
                ledger_id = os.urandom(16)
                chosen = policy or Policy()
                db.executemany(
                    "INSERT INTO ledger_meta (key, value) VALUES (?, ?)",
                    [("ledger_id", ledger_id.hex()), ("policy", json.dumps(asdict(chosen)))],
                )
                insert_block(db, ledger_id, 0, bytes(32), int(clock()), [])
            return cls(store, clock=clock)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(
        cls, path: Path, *, clock: Clock = time.time, check_same_thread: bool = True
    ) -> LocalLedger:
        """Open an existing ledger file (upgrading its schema if this code is newer)."""
        if not path.exists():
            raise LedgerError(f"{path}: no ledger here (create one with `mesh ledger init`)")
        store = Store(path, synchronous="NORMAL", check_same_thread=check_same_thread)
        try:
            if store.version(LEDGER_SCHEMA.component) == 0:
                raise LedgerError(f"{path} is not an m2mesh ledger")
            store.register(LEDGER_SCHEMA)
            return cls(store, clock=clock)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the database connection."""
        self._store.close()

    def __enter__(self) -> LocalLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._store.path

    # ---------------------------------------------------------------- transactions

    def submit(self, raw: bytes) -> str:
        """Accept a serialised transaction into the mempool; return its txid.

        Raises `TxRejected` naming the broken rule. Submitting a transaction the ledger
        already has (or holds) returns its txid without change. Under
        ``Policy.nonfinal == "hold"`` a valid non-final transaction is held, not
        rejected: its status stays UNKNOWN until it enters the mempool (`held`).
        """
        tx = parse_exact(raw)
        txid = txid_of(raw)
        try:
            rules.check_structure(tx, len(raw), self.policy)
            with self._store.write() as db:
                if db.execute("SELECT 1 FROM txs WHERE txid = ?", (txid,)).fetchone():
                    return txid
                if is_held(db, txid):
                    return txid
                prevouts = spent_outputs(db, tx)
                now, next_block = self._clock(), tip(db)
                if self.policy.nonfinal == "hold" and not rules.is_final(
                    tx, next_block, self.policy
                ):
                    rules.check_valid_but_finality(tx, len(raw), prevouts, self.policy)
                    hold(db, txid, raw, tx, now)
                    return txid
                fee = rules.check_transaction(tx, len(raw), prevouts, next_block, self.policy)
                accept(db, txid, raw, tx, fee, now)
        except TxRejected as exc:
            raise TxRejected(exc.rule, exc.detail, txid) from None
        return txid

    def held(self) -> list[str]:
        """The txids of held non-final transactions, first held first (``nonfinal="hold"``)."""
        with self._store.read() as db:
            return [txid for txid, _ in held_txs(db)]

    def faucet(self, script: bytes, satoshis: int) -> Outpoint:
        """Mint `satoshis` new test coins to `script`; return the new output.

        The mint transaction is in the mempool at once (spendable now, mined with the
        next block).
        """
        if not 0 < satoshis <= MAX_MONEY:
            raise LedgerError(f"a faucet amount is 1..{MAX_MONEY} sat, not {satoshis}")
        if is_data_script(script):
            raise LedgerError("the faucet pays spendable scripts only")
        tag = push(b"m2mesh mint") + push(os.urandom(16))
        mint = Transaction(
            [null_input(tag)], [TransactionOutput(Script(script), satoshis)], version=1
        )
        raw: bytes = mint.serialize()
        txid = txid_of(raw)
        with self._store.write() as db:
            record(db, txid, raw, mint, "mint", 0, self._clock())
        return Outpoint(txid, 0)

    # ---------------------------------------------------------------- blocks

    def mine(self, count: int = 1, *, now: float | None = None) -> list[BlockInfo]:
        """Mine `count` blocks; the first takes the whole mempool. Returns them.

        Block time is `now` (default: the injected clock), raised if needed to one
        second past the median time past so block times stay valid. After each block,
        held transactions final for the next one join the mempool (``nonfinal="hold"``).
        """
        if count < 1:
            raise LedgerError(f"mine at least one block, not {count}")
        when = int(self._clock() if now is None else now)
        mined: list[tuple[BlockInfo, list[list[bytes]]]] = []
        with self._store.write() as db:
            for _ in range(count):
                tip = tip_block(db)
                mempool = [
                    str(r[0])
                    for r in db.execute(
                        "SELECT txid FROM txs WHERE block_height IS NULL ORDER BY seq"
                    ).fetchall()
                ]
                time_ = max(when, median_time_past(db) + 1)
                mined.append(
                    insert_block(
                        db, self.ledger_id, tip.height + 1, internal(tip.hash), time_, mempool
                    )
                )
                self._admit_held(db)
        for block, levels in mined:  # only after commit: a rolled-back block never existed
            self._remember(block.height, levels)
        return [block for block, _ in mined]

    def _admit_held(self, db: sqlite3.Connection) -> None:
        """Move every held transaction final for the next block into the mempool.

        It is checked again in full against the new tip; one that no longer passes
        (an input spent meanwhile) is dropped, one still non-final stays held.
        """
        now = self._clock()
        for txid, raw in held_txs(db):
            tx = parse_exact(raw)
            tip_now = tip(db)
            if not rules.is_final(tx, tip_now, self.policy):
                continue
            drop_held(db, txid)
            try:
                prevouts = spent_outputs(db, tx)
                fee = rules.check_transaction(tx, len(raw), prevouts, tip_now, self.policy)
            except TxRejected:
                continue
            accept(db, txid, raw, tx, fee, now)

    def genesis_hash(self) -> str:
        """This ledger's genesis block hash (display hex): its network id, its own --
        two ledgers are two networks, as testnet and mainnet are."""
        block = self.block(0)
        if block is None:
            raise LedgerError(f"{self.path}: no genesis block")
        return block.hash

    def height(self) -> int:
        """The height of the best block."""
        with self._store.read() as db:
            return tip_block(db).height

    def block(self, height: int) -> BlockInfo | None:
        """The block at `height`, if mined."""
        with self._store.read() as db:
            row = db.execute(
                "SELECT height, hash, merkle_root, time, tx_count FROM blocks WHERE height = ?",
                (height,),
            ).fetchone()
        return None if row is None else block_info(row)

    def headers(self) -> list[BlockHeader]:
        """The whole header chain, genesis first."""
        with self._store.read() as db:
            rows = db.execute("SELECT header FROM blocks ORDER BY height").fetchall()
        return [BlockHeader.parse(bytes(r[0])) for r in rows]

    def is_valid_root(self, merkle_root: str, height: int) -> bool:
        """True when the block at `height` has this Merkle root (display hex)."""
        block = self.block(height)
        return block is not None and block.merkle_root == merkle_root.lower()

    # ---------------------------------------------------------------- queries

    def status(self, txid: str) -> TxStatus:
        """Pending, mined (with its block) or unknown."""
        with self._store.read() as db:
            row = db.execute(
                "SELECT t.block_height, b.hash FROM txs t"
                " LEFT JOIN blocks b ON b.height = t.block_height WHERE t.txid = ?",
                (txid,),
            ).fetchone()
        if row is None:
            return TxStatus(txid, TxState.UNKNOWN)
        if row[0] is None:
            return TxStatus(txid, TxState.PENDING)
        return TxStatus(txid, TxState.MINED, int(row[0]), str(row[1]))

    def output(self, txid: str, vout: int) -> OutputStatus:
        """Output `vout` of an accepted transaction (mempool included), and who spends it.

        Data (``OP_FALSE OP_RETURN``) outputs are not recorded, so they are UNKNOWN like
        an unknown txid or an index out of range.
        """
        if not 0 <= vout <= _MAX_VOUT:
            return OutputStatus(txid, vout, OutputState.UNKNOWN)
        with self._store.read() as db:
            row = db.execute(
                "SELECT satoshis, script, spent_by FROM outputs WHERE txid = ? AND vout = ?",
                (txid, vout),
            ).fetchone()
        if row is None:
            return OutputStatus(txid, vout, OutputState.UNKNOWN)
        satoshis, script, spent_by = int(row[0]), bytes(row[1]), row[2]
        if spent_by is None:
            return OutputStatus(txid, vout, OutputState.UNSPENT, satoshis, script)
        return OutputStatus(txid, vout, OutputState.SPENT, satoshis, script, str(spent_by))

    def raw_tx(self, txid: str) -> bytes | None:
        """The serialised transaction, if the ledger holds it."""
        with self._store.read() as db:
            row = db.execute("SELECT raw FROM txs WHERE txid = ?", (txid,)).fetchone()
        return None if row is None else bytes(row[0])

    def merkle_proof(self, txid: str) -> MerklePath | None:
        """The BUMP proof of a mined transaction; None if unknown, unmined, or alone
        in its block (a coinbase of an otherwise empty block; see `mesh.chain.merkle`)."""
        with self._store.read() as db:
            row = db.execute(
                "SELECT block_height, block_index FROM txs WHERE txid = ?", (txid,)
            ).fetchone()
            if row is None or row[0] is None:
                return None
            height, index = int(row[0]), int(row[1])
            levels = self._levels.get(height)
            if levels is None:
                leaves = db.execute(
                    "SELECT txid FROM txs WHERE block_height = ? ORDER BY block_index", (height,)
                ).fetchall()
                levels = merkle_levels([internal(str(r[0])) for r in leaves])
                self._remember(height, levels)
        if len(levels) == 1:
            return None
        return merkle_path(levels, index, height)

    def utxos(self, script: bytes) -> list[Utxo]:
        """Unspent outputs locked by exactly `script`, oldest first, mempool included."""
        with self._store.read() as db:
            rows = db.execute(
                "SELECT o.txid, o.vout, o.satoshis, o.script, t.block_height FROM outputs o"
                " JOIN txs t ON t.txid = o.txid"
                " WHERE o.script = ? AND o.spent_by IS NULL ORDER BY t.seq, o.vout",
                (script,),
            ).fetchall()
        return [
            Utxo(str(r[0]), int(r[1]), int(r[2]), bytes(r[3]), None if r[4] is None else int(r[4]))
            for r in rows
        ]

    def balance(self) -> Balance:
        """Supply accounting over the whole ledger, from one consistent snapshot."""
        with self._store.read() as db:
            return read_balance(db)

    def summary(self) -> Summary:
        """Height, tip, mempool size, policy and balance."""
        with self._store.read() as db:
            tip = tip_block(db)
            mempool, total = db.execute(
                "SELECT COUNT(*) FILTER (WHERE block_height IS NULL), COUNT(*) FROM txs"
            ).fetchone()
            balance = read_balance(db)
        return Summary(
            path=str(self.path),
            ledger_id=self.ledger_id.hex(),
            height=tip.height,
            tip=tip.hash,
            mempool=int(mempool),
            transactions=int(total),
            fee_rate=self.policy.fee_rate,
            balance=balance,
        )

    def export(self) -> dict[str, Any]:
        """Every block and every transaction, as `mesh ledger export --json` prints it.

        ``{"height": H, "blocks": [{"height", "hash", "merkle_root", "txids"}],
        "transactions": [{"txid", "hex", "block_height"}]}``, transactions in first-seen
        order, ``block_height`` null while unmined.
        """
        with self._store.read() as db:
            blocks = [
                block_info(r)
                for r in db.execute(
                    "SELECT height, hash, merkle_root, time, tx_count FROM blocks ORDER BY height"
                ).fetchall()
            ]
            members: dict[int, list[str]] = {b.height: [] for b in blocks}
            for height, txid in db.execute(
                "SELECT block_height, txid FROM txs WHERE block_height IS NOT NULL"
                " ORDER BY block_height, block_index"
            ).fetchall():
                members[int(height)].append(str(txid))
            txs = [
                {
                    "txid": str(txid),
                    "hex": bytes(raw).hex(),
                    "block_height": None if height is None else int(height),
                }
                for txid, raw, height in db.execute(
                    "SELECT txid, raw, block_height FROM txs ORDER BY seq"
                ).fetchall()
            ]
        return {
            "height": blocks[-1].height,
            "blocks": [
                {
                    "height": b.height,
                    "hash": b.hash,
                    "merkle_root": b.merkle_root,
                    "txids": members[b.height],
                }
                for b in blocks
            ],
            "transactions": txs,
        }

    def _remember(self, height: int, levels: list[list[bytes]]) -> None:
        self._levels[height] = levels
        self._levels.move_to_end(height)
        while len(self._levels) > _LEVELS_CACHE:
            self._levels.popitem(last=False)
