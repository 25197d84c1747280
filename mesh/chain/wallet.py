"""The agent's wallet: its own coins, coin selection, change, signing, reservations.

Keys: each receive or change address is P2PKH to a BRC-42 child of the identity key
(`KeyDeriver`, protocol ``m2mesh wallet`` at security level 2, key id = the index,
counterparty *self*), so the identity key itself never appears on chain (docs/ARCHITECTURE.md §4.1)
and every key can be re-derived from the identity alone.

A *labelled* key has the label as its key id instead (`payout_address`): its address is
known without a row, so handing one out costs nothing -- a payee names every channel it
is offered a payout this way, and a stranger's thousand unfunded proposals add no key
and no chain lookup. Only `adopt`, once something is to be received there, makes it one
of the wallet's keys (a row with its label, looked for and spendable like any other).

Spending is two-phase so that a crash never loses track of a coin (docs/ARCHITECTURE.md §7):

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

Running for months costs what the first day did: a sync asks the chain only about
`watch_addresses` (change of a broadcast transaction is booked by `mark_broadcast`,
never looked for), `prune` deletes spent history past a retention horizon, and the
cache of derived keys is a bounded LRU.

Wallet methods block on SQLite; from Trio call them through `trio.to_thread` and open
the store with ``check_same_thread=False``. This module never broadcasts anything, and
never deletes a coin that is available or reserved, nor a draft that is still pending.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput
from bsv.wallet.key_deriver import Counterparty, CounterpartyType, KeyDeriver, Protocol

from mesh.chain import rules
from mesh.chain.base import Utxo
from mesh.chain.coins import (
    WALLET_SCHEMA,
    Coin,
    Draft,
    WalletBalance,
    select_coins,
)
from mesh.chain.errors import TxRejected, WalletError
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import SEQUENCE_FINAL, Outpoint, txid_of
from mesh.identity import Identity
from mesh.store import Store

WALLET_PROTOCOL = "m2mesh wallet"
WALLET_SECURITY_LEVEL = 2
KEY_CACHE_SIZE = 256  # derived keys kept in memory, least recently used out first
WATCH_WAITING = 16  # newest receive keys not seen funded: watched every pass
WATCH_PENDING = 8  # change keys of built, unbroadcast drafts: watched every pass
WATCH_SWEEP = 4  # older receive keys watched per pass, in turn
SPENT_RETENTION = 24 * 3600.0
"""How long `prune` keeps a spent coin by default: long past any block that could undo
its spend."""


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
        self._keys: OrderedDict[int, PrivateKey] = OrderedDict()  # keys with a row (LRU)
        self._swept = -1  # the last receive key index the watch set's sweep visited
        self._fee_key: PrivateKey | None = None
        self.policy = policy or Policy()
        self._clock = clock
        store.register(WALLET_SCHEMA)

    # ---------------------------------------------------------------- keys

    def private_key(self, index: int) -> PrivateKey:
        """The BRC-42 key number `index` (derived from the identity, cached): key id
        str(index), or the label of an adopted key."""
        key = self._keys.pop(index, None)  # (pop and put back: safe if another thread evicts)
        if key is None:
            rows = self._store.query("SELECT label FROM wallet_keys WHERE idx = ?", (index,))
            key = self._derive(str(index) if not rows or rows[0][0] is None else str(rows[0][0]))
            if not rows:  # a key that has a row never changes; one without may be adopted
                return key
        self._keys[index] = key
        if len(self._keys) > KEY_CACHE_SIZE:
            self._keys.popitem(last=False)
        return key

    def address(self, index: int) -> str:
        """The P2PKH address of key `index`."""
        address: str = self.private_key(index).address()
        return address

    def new_address(self) -> str:
        """Allocate the next key and return its address."""
        with self._store.write() as db:
            return self._allocate_key(db, "receive")[1]

    def addresses(self) -> list[str]:
        """Every address with a key row, oldest first: receive keys (adopted ones too) and
        change keys `prune` left. Grows with history: a sync uses `watch_addresses`."""
        with self._store.read() as db:
            return [str(r[0]) for r in db.execute("SELECT address FROM wallet_keys ORDER BY idx")]

    def watch_addresses(self) -> list[str]:
        """The addresses a sync pass asks the chain about: a bounded set, however long
        the history (empty only while there is no receive key).

        The newest receive keys (`new_address`, `adopt`) not seen funded yet; the change
        keys of built, unbroadcast drafts (one broadcast just before a crash is never
        marked); and the next few older receive keys in turn -- each call moves this
        sweep on -- so that a late or second payment to any receive key is found too.
        """
        with self._store.read() as db:
            rows = db.execute(
                "SELECT idx, address FROM wallet_keys WHERE role = 'receive' AND funded = 0"
                " ORDER BY idx DESC LIMIT ?",
                (WATCH_WAITING,),
            ).fetchall()
            rows += db.execute(
                "SELECT k.idx, k.address FROM wallet_txs AS t"
                " JOIN wallet_keys AS k ON k.idx = t.change_key"
                " WHERE t.state = 'built' ORDER BY t.created_at DESC LIMIT ?",
                (WATCH_PENDING,),
            ).fetchall()
            sweep = "SELECT idx, address FROM wallet_keys WHERE role = 'receive' AND idx {} ?"
            sweep += " ORDER BY idx LIMIT ?"
            swept = db.execute(sweep.format(">"), (self._swept, WATCH_SWEEP)).fetchall()
            if len(swept) < WATCH_SWEEP:  # past the newest: on from the oldest
                more = WATCH_SWEEP - len(swept)
                swept += db.execute(sweep.format("<="), (self._swept, more)).fetchall()
        if swept:
            self._swept = int(swept[-1][0])
        return list(dict.fromkeys(str(address) for _, address in rows + swept))

    def payout_address(self, label: str) -> str:
        """The address of the key labelled `label`: pure, no row is written and nothing
        looks for coins there until `adopt(label)`."""
        address: str = self._derive(_key_id(label)).address()
        return address

    def adopt(self, label: str) -> int:
        """Make the key labelled `label` one of ours (its coins are looked for, taken by
        `add_utxos` and spendable); return its index. Idempotent."""
        key_id = _key_id(label)
        known = self._store.query("SELECT idx FROM wallet_keys WHERE label = ?", (label,))
        if known:  # (a close tried again: no write lock for nothing)
            return int(str(known[0][0]))
        with self._store.write() as db:
            row = db.execute("SELECT idx FROM wallet_keys WHERE label = ?", (label,)).fetchone()
            if row is not None:
                return int(row[0])
            return self._allocate_key(db, "receive", key_id)[0]

    def _allocate_key(
        self, conn: sqlite3.Connection, role: str, label: str | None = None
    ) -> tuple[int, str]:
        # The next index after the newest row: `prune` never deletes the newest key, so
        # no index (and no address) is ever handed out twice.
        (last,) = conn.execute("SELECT COALESCE(MAX(idx), -1) FROM wallet_keys").fetchone()
        index = int(last) + 1
        address: str = self._derive(str(index) if label is None else label).address()
        script: bytes = P2PKH().lock(address).serialize()
        conn.execute(
            "INSERT INTO wallet_keys (idx, script, address, role, label) VALUES (?, ?, ?, ?, ?)",
            (index, script, address, role, label),
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
            for utxo in utxos:
                if utxo.satoshis <= 0:
                    continue
                row = db.execute(
                    "SELECT idx FROM wallet_keys WHERE script = ?", (bytes(utxo.script),)
                ).fetchone()
                if row is None:
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO wallet_coins (txid, vout, satoshis, key_idx, state)"
                    " VALUES (?, ?, ?, ?, 'available')",
                    (utxo.txid, utxo.vout, utxo.satoshis, int(row[0])),
                )
                added += cursor.rowcount
                db.execute("UPDATE wallet_keys SET funded = 1 WHERE idx = ?", (int(row[0]),))
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
            change_key = self._allocate_key(db, "change")[0] if change else None
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
        now = self._clock()
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
                "UPDATE wallet_coins SET state = 'spent', spent_by = ?, spent_at = ?,"
                " reserved_until = NULL WHERE reservation = ? AND state = 'reserved'",
                (txid, now, reservation),
            )
            if change_vout is not None:
                tx = Transaction.from_hex(bytes(raw))
                value = int(tx.outputs[int(change_vout)].satoshis)
                db.execute(
                    "INSERT OR IGNORE INTO wallet_coins (txid, vout, satoshis, key_idx, state)"
                    " VALUES (?, ?, ?, ?, 'available')",
                    (txid, int(change_vout), value, int(change_key)),
                )
                db.execute("UPDATE wallet_keys SET funded = 1 WHERE idx = ?", (int(change_key),))
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

    def prune(self, before: float | None = None) -> int:
        """Delete what only history needs; return how many rows went.

        Spent coins whose spend was recorded before `before` (wall-clock; by default now
        less `SPENT_RETENTION`), the broadcast transactions that spent them, drafts
        abandoned before `before`, and the change keys none of what stays needs (never
        the newest key: the next index follows it). Available and reserved coins, built
        drafts and receive keys always stay, so the balance is what it was.
        """
        cutoff = self._clock() - SPENT_RETENTION if before is None else before
        with self._store.write() as db:
            gone = db.execute(
                "SELECT spent_by, key_idx FROM wallet_coins WHERE state = 'spent' AND spent_at < ?"
                " UNION ALL SELECT txid, change_key FROM wallet_txs"
                " WHERE state = 'abandoned' AND created_at < ?",
                (cutoff, cutoff),
            ).fetchall()
            deleted = db.execute(
                "DELETE FROM wallet_coins WHERE state = 'spent' AND spent_at < ?", (cutoff,)
            ).rowcount
            deleted += db.executemany(
                "DELETE FROM wallet_txs WHERE txid = ? AND state IN ('broadcast', 'abandoned')",
                [(txid,) for txid in {str(r[0]) for r in gone}],
            ).rowcount
            keys = {int(r[1]) for r in gone if r[1] is not None}
            deleted += db.executemany(
                "DELETE FROM wallet_keys WHERE idx = ?1 AND role = 'change'"
                " AND idx < (SELECT MAX(idx) FROM wallet_keys)"
                " AND NOT EXISTS (SELECT 1 FROM wallet_coins WHERE key_idx = ?1)"
                " AND NOT EXISTS"
                " (SELECT 1 FROM wallet_txs WHERE state = 'built' AND change_key = ?1)",
                [(k,) for k in sorted(keys)],
            ).rowcount
        return int(deleted)

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
