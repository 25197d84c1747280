"""The agent's wallet: its own coins, coin selection, change, signing, reservations.

Keys: each receive or change address is P2PKH to a BRC-42 child of the identity key
(`KeyDeriver`, protocol ``m2mesh wallet`` at security level 2, key id = the index,
counterparty *self*), so the identity key itself never appears on chain (DESIGN §4.1)
and every key can be re-derived from the identity alone.

A *labelled* key has the label as its key id instead (`payout_address`): its address is
known without a row, so handing one out costs nothing -- a payee names every channel it
is offered a payout this way, and a stranger's thousand unfunded proposals add no key
and no chain lookup. Only `adopt`, once something is to be received there, makes it one
of the wallet's keys (a row with its label, looked for and spendable like any other).

Spending is two-phase so that a crash never loses track of a coin (DESIGN §7):

1. `fund` selects coins and marks them *reserved* under a caller-chosen reservation id
   inside one SQLite write transaction — two concurrent `fund` calls (threads or
   processes) can never pick the same coin — then builds, signs and checks the
   transaction with bsv-sdk's interpreter and records it as *built*.
2. The caller persists what it needs, broadcasts, and calls `mark_broadcast` (coins become
   spent, change becomes available) or `abandon` (coins return).

Coin selection: the smallest single coin that covers amount + fee, else largest coins
first until covered. Change below 1 sat is left to the fee. Fees come from the explicit
bsv-sdk `SatoshisPerKilobyte` model of the given `Policy` (never the SDK default, which
makes HTTP calls), with the policy's minimum.

Wallet methods block on SQLite; from Trio call them through `trio.to_thread` and open
the store with ``check_same_thread=False``. This module never broadcasts anything.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput
from bsv.wallet.key_deriver import Counterparty, CounterpartyType, KeyDeriver, Protocol

from mesh.chain import rules
from mesh.chain.base import Utxo
from mesh.chain.errors import InsufficientFunds, TxRejected, WalletError
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import SEQUENCE_FINAL, Outpoint, txid_of
from mesh.identity import Identity
from mesh.store import Schema, Store

WALLET_PROTOCOL = "m2mesh wallet"
WALLET_SECURITY_LEVEL = 2
DUST_LIMIT = 1

WALLET_SCHEMA = Schema(
    "wallet",
    (
        """
        CREATE TABLE wallet_keys (
            idx INTEGER PRIMARY KEY,
            script BLOB NOT NULL UNIQUE,
            address TEXT NOT NULL
        );
        CREATE TABLE wallet_coins (
            txid TEXT NOT NULL,
            vout INTEGER NOT NULL,
            satoshis INTEGER NOT NULL CHECK (satoshis > 0),
            key_idx INTEGER NOT NULL REFERENCES wallet_keys (idx),
            state TEXT NOT NULL CHECK (state IN ('available', 'reserved', 'spent')),
            reservation TEXT,
            reserved_until REAL,
            spent_by TEXT,
            PRIMARY KEY (txid, vout)
        ) WITHOUT ROWID;
        CREATE INDEX wallet_coins_by_state ON wallet_coins (state, satoshis);
        CREATE TABLE wallet_txs (
            txid TEXT PRIMARY KEY,
            raw BLOB NOT NULL,
            reservation TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('built', 'broadcast', 'abandoned')),
            change_vout INTEGER,
            change_key INTEGER,
            created_at REAL NOT NULL
        );
        """,
        # Labelled keys (`Wallet.adopt`): the key id is the label, not the index.
        """
        ALTER TABLE wallet_keys ADD COLUMN label TEXT;
        CREATE UNIQUE INDEX wallet_keys_by_label ON wallet_keys (label);
        """,
    ),
)


@dataclass(frozen=True)
class Coin:
    """A wallet coin: the outpoint, its amount and the index of the key that owns it."""

    txid: str
    vout: int
    satoshis: int
    key_index: int

    @property
    def outpoint(self) -> Outpoint:
        """Where the coin is."""
        return Outpoint(self.txid, self.vout)


@dataclass(frozen=True)
class Draft:
    """A signed, checked, unbroadcast transaction and the coins reserved for it."""

    txid: str
    raw: bytes
    fee: int
    reservation: str
    coins: tuple[Coin, ...]
    change: Coin | None


@dataclass(frozen=True)
class WalletBalance:
    """Satoshis by state."""

    available: int
    reserved: int


def select_coins(
    available: Sequence[Coin], target: int, fee_for: Callable[[int, bool], int]
) -> tuple[list[Coin], int, int]:
    """Choose coins for `target` sat; return (coins, fee, change).

    `fee_for(n_inputs, with_change)` is the fee of the transaction those choices make.
    Pure, so the policy is testable on its own.
    """
    ordered = sorted(available, key=lambda c: (-c.satoshis, c.txid, c.vout))
    singles = [c for c in ordered if c.satoshis >= target + fee_for(1, False)]
    if singles:
        chosen = [singles[-1]]
    else:
        chosen, total = [], 0
        for coin in ordered:
            chosen.append(coin)
            total += coin.satoshis
            if total >= target + fee_for(len(chosen), False):
                break
        else:
            raise InsufficientFunds(target + fee_for(max(1, len(chosen)), False), total)
    total = sum(c.satoshis for c in chosen)
    fee_with_change = fee_for(len(chosen), True)
    change = total - target - fee_with_change
    if change >= DUST_LIMIT:
        return chosen, fee_with_change, change
    return chosen, total - target, 0


class Wallet:
    """The agent's coins in its store, spendable by keys derived from its identity."""

    def __init__(
        self,
        store: Store,
        identity: Identity,
        *,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._deriver = KeyDeriver(identity.key)
        self._keys: dict[int, PrivateKey] = {}  # keys that have a row, by index
        self._fee_key: PrivateKey | None = None
        self.policy = policy or Policy()
        self._clock = clock
        store.register(WALLET_SCHEMA)

    # ---------------------------------------------------------------- keys

    def private_key(self, index: int) -> PrivateKey:
        """The BRC-42 key number `index` (derived from the identity, cached): key id
        str(index), or the label of an adopted key."""
        key = self._keys.get(index)
        if key is not None:
            return key
        rows = self._store.query("SELECT label FROM wallet_keys WHERE idx = ?", (index,))
        label = rows[0][0] if rows else None
        key = self._derive(str(index) if label is None else str(label))
        if rows:  # a key that has a row never changes; one without may still be adopted
            self._keys[index] = key
        return key

    def address(self, index: int) -> str:
        """The P2PKH address of key `index`."""
        address: str = self.private_key(index).address()
        return address

    def new_address(self) -> str:
        """Allocate the next key and return its address."""
        with self._store.write() as db:
            return self._allocate_key(db)[1]

    def addresses(self) -> list[str]:
        """Every address handed out so far (adopted labelled keys included)."""
        with self._store.read() as db:
            return [str(r[0]) for r in db.execute("SELECT address FROM wallet_keys ORDER BY idx")]

    def payout_address(self, label: str) -> str:
        """The address of the key labelled `label`: pure, no row is written and nothing
        looks for coins there until `adopt(label)`."""
        address: str = self._derive(_key_id(label)).address()
        return address

    def adopt(self, label: str) -> int:
        """Make the key labelled `label` one of ours (its coins are looked for, taken by
        `add_utxos` and spendable); return its index. Idempotent."""
        key = self._derive(_key_id(label))
        known = self._store.query("SELECT idx FROM wallet_keys WHERE label = ?", (label,))
        if known:  # (a close tried again: no write lock for nothing)
            return int(str(known[0][0]))
        address: str = key.address()
        script: bytes = P2PKH().lock(address).serialize()
        with self._store.write() as db:
            row = db.execute("SELECT idx FROM wallet_keys WHERE label = ?", (label,)).fetchone()
            if row is not None:
                return int(row[0])
            (last,) = db.execute("SELECT COALESCE(MAX(idx), -1) FROM wallet_keys").fetchone()
            index = int(last) + 1
            db.execute(
                "INSERT INTO wallet_keys (idx, script, address, label) VALUES (?, ?, ?, ?)",
                (index, script, address, label),
            )
        self._keys[index] = key
        return index

    def _allocate_key(self, conn: sqlite3.Connection) -> tuple[int, str]:
        (last,) = conn.execute("SELECT COALESCE(MAX(idx), -1) FROM wallet_keys").fetchone()
        index = int(last) + 1
        key = self._derive(str(index))
        address: str = key.address()
        script: bytes = P2PKH().lock(address).serialize()
        conn.execute(
            "INSERT INTO wallet_keys (idx, script, address) VALUES (?, ?, ?)",
            (index, script, address),
        )
        return index, address

    def _derive(self, key_id: str) -> PrivateKey:
        key: PrivateKey = self._deriver.derive_private_key(
            Protocol(WALLET_SECURITY_LEVEL, WALLET_PROTOCOL),
            key_id,
            Counterparty(CounterpartyType.SELF),
        )
        return key

    # ---------------------------------------------------------------- coins

    def add_utxos(self, utxos: Iterable[Utxo]) -> int:
        """Record the outputs that pay one of our keys; return how many were new.

        Coins already known keep their state, so a chain that still lists a coin we
        have spent cannot resurrect it.
        """
        added = 0
        with self._store.write() as db:
            keys = {bytes(s): int(i) for i, s in db.execute("SELECT idx, script FROM wallet_keys")}
            for utxo in utxos:
                index = keys.get(utxo.script)
                if index is None or utxo.satoshis <= 0:
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO wallet_coins (txid, vout, satoshis, key_idx, state)"
                    " VALUES (?, ?, ?, ?, 'available')",
                    (utxo.txid, utxo.vout, utxo.satoshis, index),
                )
                added += cursor.rowcount
        return added

    def coins(self, state: str = "available") -> list[Coin]:
        """Coins in `state` (available, reserved or spent)."""
        with self._store.read() as db:
            rows = db.execute(
                "SELECT txid, vout, satoshis, key_idx FROM wallet_coins WHERE state = ?"
                " ORDER BY txid, vout",
                (state,),
            ).fetchall()
        return [Coin(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def balance(self) -> WalletBalance:
        """Available and reserved satoshis."""
        with self._store.read() as db:
            rows = dict(
                db.execute(
                    "SELECT state, COALESCE(SUM(satoshis), 0) FROM wallet_coins GROUP BY state"
                ).fetchall()
            )
        return WalletBalance(int(rows.get("available", 0)), int(rows.get("reserved", 0)))

    # ---------------------------------------------------------------- spending

    def fund(
        self,
        outputs: Sequence[tuple[bytes, int]],
        *,
        reservation: str,
        ttl: float | None = None,
    ) -> Draft:
        """Build and sign a transaction paying `outputs` (locking script, satoshis).

        Reserves the chosen coins under `reservation` atomically, adds change to a fresh
        key, signs, checks every input with bsv-sdk's interpreter and records the draft.
        Raises `InsufficientFunds` when the available coins do not cover amount + fee.
        With `ttl`, `release_expired` may free the coins after `ttl` seconds.
        """
        if not outputs or any(value <= 0 for _, value in outputs):
            raise WalletError("fund needs outputs of at least 1 satoshi each")
        target = sum(value for _, value in outputs)
        now = self._clock()
        with self._store.write() as db:
            if db.execute(
                "SELECT 1 FROM wallet_coins WHERE reservation = ? UNION ALL"
                " SELECT 1 FROM wallet_txs WHERE reservation = ? AND state != 'abandoned'",
                (reservation, reservation),
            ).fetchone():
                raise WalletError(f"reservation {reservation!r} is already in use")
            available = [
                Coin(str(r[0]), int(r[1]), int(r[2]), int(r[3]))
                for r in db.execute(
                    "SELECT txid, vout, satoshis, key_idx FROM wallet_coins"
                    " WHERE state = 'available'"
                ).fetchall()
            ]
            chosen, fee, change = select_coins(
                available, target, lambda n, with_change: self._fee(n, outputs, with_change)
            )
            db.executemany(
                "UPDATE wallet_coins SET state = 'reserved', reservation = ?, reserved_until = ?"
                " WHERE txid = ? AND vout = ? AND state = 'available'",
                [(reservation, None if ttl is None else now + ttl, c.txid, c.vout) for c in chosen],
            )
            change_key = self._allocate_key(db)[0] if change else None
        try:
            tx = self._sign(chosen, outputs, change, change_key)
        except BaseException:
            self.release(reservation)
            raise
        raw: bytes = tx.serialize()
        txid = txid_of(raw)
        change_coin = (
            Coin(txid, len(outputs), change, change_key) if change_key is not None else None
        )
        with self._store.write() as db:
            db.execute(
                "INSERT INTO wallet_txs (txid, raw, reservation, state, change_vout, change_key,"
                " created_at) VALUES (?, ?, ?, 'built', ?, ?, ?)",
                (
                    txid,
                    raw,
                    reservation,
                    None if change_coin is None else change_coin.vout,
                    change_key,
                    now,
                ),
            )
        return Draft(txid, raw, fee, reservation, tuple(chosen), change_coin)

    def mark_broadcast(self, txid: str) -> None:
        """The draft `txid` was broadcast: its coins are spent, its change is ours."""
        with self._store.write() as db:
            row = db.execute(
                "SELECT reservation, state, change_vout, change_key, raw FROM wallet_txs"
                " WHERE txid = ?",
                (txid,),
            ).fetchone()
            if row is None:
                raise WalletError(f"no wallet transaction {txid}")
            reservation, state, change_vout, change_key, raw = row
            if state == "broadcast":
                return
            if state != "built":
                raise WalletError(f"wallet transaction {txid} is {state}, not built")
            db.execute(
                "UPDATE wallet_coins SET state = 'spent', spent_by = ?, reserved_until = NULL"
                " WHERE reservation = ? AND state = 'reserved'",
                (txid, reservation),
            )
            if change_vout is not None:
                tx = Transaction.from_hex(bytes(raw))
                value = int(tx.outputs[int(change_vout)].satoshis)
                db.execute(
                    "INSERT OR IGNORE INTO wallet_coins (txid, vout, satoshis, key_idx, state)"
                    " VALUES (?, ?, ?, ?, 'available')",
                    (txid, int(change_vout), value, int(change_key)),
                )
            db.execute("UPDATE wallet_txs SET state = 'broadcast' WHERE txid = ?", (txid,))

    def abandon(self, txid: str) -> None:
        """Give up on the draft `txid` (never broadcast): its coins become available."""
        with self._store.write() as db:
            row = db.execute(
                "SELECT reservation, state FROM wallet_txs WHERE txid = ?", (txid,)
            ).fetchone()
            if row is None:
                raise WalletError(f"no wallet transaction {txid}")
            if row[1] == "broadcast":
                raise WalletError(f"{txid} was broadcast; it cannot be abandoned")
            _free(db, str(row[0]))

    def release(self, reservation: str) -> int:
        """Free every coin held by `reservation` (abandoning its draft); return the count."""
        with self._store.write() as db:
            return _free(db, reservation)

    def reservations(self) -> set[str]:
        """Every reservation id that holds coins now."""
        with self._store.read() as db:
            rows = db.execute(
                "SELECT DISTINCT reservation FROM wallet_coins WHERE state = 'reserved'"
            ).fetchall()
        return {str(r[0]) for r in rows}

    def release_expired(self, now: float | None = None) -> int:
        """Free reservations whose ttl has passed; return how many coins came back."""
        moment = self._clock() if now is None else now
        with self._store.write() as db:
            expired = [
                str(r[0])
                for r in db.execute(
                    "SELECT DISTINCT reservation FROM wallet_coins WHERE state = 'reserved'"
                    " AND reserved_until IS NOT NULL AND reserved_until <= ?",
                    (moment,),
                ).fetchall()
            ]
            return sum(_free(db, reservation) for reservation in expired)

    # ---------------------------------------------------------------- internals

    def _fee(self, inputs: int, outputs: Sequence[tuple[bytes, int]], with_change: bool) -> int:
        """The model's fee for a P2PKH-input transaction of this shape."""
        # Any key will do for the size (this runs inside `fund`'s write transaction).
        fee_key = self._fee_key
        if fee_key is None:
            fee_key = self._fee_key = self._derive("0")
        template = P2PKH().unlock(fee_key)
        trial = Transaction(
            [
                TransactionInput(
                    source_txid="00" * 32, source_output_index=i, unlocking_script_template=template
                )
                for i in range(inputs)
            ],
            [TransactionOutput(Script(script), value) for script, value in outputs],
        )
        if with_change:
            trial.add_output(TransactionOutput(P2PKH().lock(fee_key.address()), 1))
        estimate = int(self.policy.fee_model().compute_fee(trial))
        return max(self.policy.min_fee, estimate)

    def _sign(
        self,
        coins: Sequence[Coin],
        outputs: Sequence[tuple[bytes, int]],
        change: int,
        change_key: int | None,
    ) -> Transaction:
        inputs = []
        prevouts: dict[Outpoint, Prevout] = {}
        for coin in coins:
            key = self.private_key(coin.key_index)
            locking = P2PKH().lock(key.address())
            inp = TransactionInput(
                source_txid=coin.txid,
                source_output_index=coin.vout,
                unlocking_script_template=P2PKH().unlock(key),
                sequence=SEQUENCE_FINAL,
            )
            inp.satoshis = coin.satoshis
            inp.locking_script = locking
            inputs.append(inp)
            prevouts[coin.outpoint] = Prevout(coin.satoshis, bytes(locking.serialize()))
        outs = [TransactionOutput(Script(script), value) for script, value in outputs]
        if change_key is not None:
            outs.append(TransactionOutput(P2PKH().lock(self.address(change_key)), change))
        tx = Transaction(inputs, outs, version=1, locktime=0)
        tx.sign()
        try:
            rules.check_scripts(tx, prevouts)
        except TxRejected as exc:
            raise WalletError(f"built a transaction that fails its own check: {exc}") from exc
        return tx


def _key_id(label: str) -> str:
    """A labelled key's key id: the label, which must not be one an index already names."""
    if not label or label.isdigit() or len(label) > 800:
        raise WalletError(f"a key label must be 1..800 characters, not all digits: {label!r}")
    return label


def _free(db: sqlite3.Connection, reservation: str) -> int:
    cursor = db.execute(
        "UPDATE wallet_coins SET state = 'available', reservation = NULL, reserved_until = NULL"
        " WHERE reservation = ? AND state = 'reserved'",
        (reservation,),
    )
    db.execute(
        "UPDATE wallet_txs SET state = 'abandoned' WHERE reservation = ? AND state = 'built'",
        (reservation,),
    )
    return int(cursor.rowcount)
