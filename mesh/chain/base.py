"""The `Chain` interface every backend implements, and the frozen data it returns.

A `Chain` is what the channel manager, the wallet and anchoring see of the blockchain:
``broadcast``, ``status``, ``merkle_proof``, ``height``, ``utxos`` and ``is_valid_root``
(the last one is what a bsv-sdk `ChainTracker` needs; `mesh.chain.spv.ChainBackedTracker`
wraps any `Chain` as one). Methods are async and Trio-friendly: backends that block
(SQLite, HTTP) run their work in `trio.to_thread`.

This module owns only the interface and its value types; it does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction


class TxState(enum.Enum):
    """Where a transaction stands, as far as the backend knows."""

    UNKNOWN = "unknown"
    PENDING = "pending"  # accepted, not yet in a block
    MINED = "mined"
    REJECTED = "rejected"  # the backend said it will not be mined (ARC only)


@dataclass(frozen=True)
class TxStatus:
    """A transaction's state; block fields are set only when mined."""

    txid: str
    state: TxState
    block_height: int | None = None
    block_hash: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Utxo:
    """An unspent output: where it is, its amount and locking script."""

    txid: str
    vout: int
    satoshis: int
    script: bytes
    block_height: int | None = None


class Chain(Protocol):
    """A view of the blockchain that can take transactions."""

    async def broadcast(self, tx: Transaction) -> str:
        """Submit `tx`; return its txid, or raise `TxRejected` naming the rule.

        Broadcasting a transaction the chain already holds succeeds (idempotent), so a
        restarted agent can re-broadcast what it recorded before a crash.
        """
        ...

    async def status(self, txid: str) -> TxStatus:
        """The state of `txid`."""
        ...

    async def merkle_proof(self, txid: str) -> MerklePath | None:
        """The BUMP proof of a mined transaction, or None when it is not (yet) mined."""
        ...

    async def height(self) -> int:
        """The height of the best block."""
        ...

    async def utxos(self, address: str) -> list[Utxo]:
        """Unspent P2PKH outputs paying `address` (mempool included where known)."""
        ...

    async def is_valid_root(self, merkle_root: str, height: int) -> bool:
        """True when the block at `height` has Merkle root `merkle_root` (display hex)."""
        ...
