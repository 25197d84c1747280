"""What the wallet holds, as data: its SQLite schema, coins, drafts, balances, and coin
selection (pure). The wallet that reads and writes them is `mesh.chain.wallet`.
(docs/ARCHITECTURE.md §5, §7)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.chain.errors import InsufficientFunds
from mesh.chain.tx import Outpoint
from mesh.store import Schema

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
        # What the watch set and `prune` need, kept on the rows they read so that neither
        # depends on history: a key's role, whether a coin to it was seen; a spend's time.
        """
        ALTER TABLE wallet_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'receive'
            CHECK (role IN ('receive', 'change'));
        ALTER TABLE wallet_keys ADD COLUMN funded INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE wallet_coins ADD COLUMN spent_at REAL;
        UPDATE wallet_keys SET role = 'change'
            WHERE idx IN (SELECT change_key FROM wallet_txs WHERE change_key IS NOT NULL);
        UPDATE wallet_keys SET funded = 1 WHERE idx IN (SELECT key_idx FROM wallet_coins);
        UPDATE wallet_coins
            SET spent_at = (SELECT created_at FROM wallet_txs WHERE txid = spent_by)
            WHERE state = 'spent';
        CREATE INDEX wallet_keys_receiving ON wallet_keys (idx) WHERE role = 'receive';
        CREATE INDEX wallet_keys_waiting ON wallet_keys (idx)
            WHERE role = 'receive' AND funded = 0;
        CREATE INDEX wallet_coins_by_key ON wallet_coins (key_idx);
        CREATE INDEX wallet_txs_by_state ON wallet_txs (state, created_at);
        CREATE INDEX wallet_txs_by_reservation ON wallet_txs (reservation);
        CREATE INDEX wallet_coins_by_reservation ON wallet_coins (reservation)
            WHERE reservation IS NOT NULL;
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


__all__ = ["DUST_LIMIT", "WALLET_SCHEMA", "Coin", "Draft", "WalletBalance", "select_coins"]
