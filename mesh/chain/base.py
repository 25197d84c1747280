"""The `Chain` interface every backend implements, and the frozen data it returns.

A `Chain` is what the channel manager, the wallet and anchoring see of the blockchain:
``broadcast``, ``status``, ``output``, ``merkle_proof``, ``height``, ``utxos`` and
``is_valid_root`` (the last one is what a bsv-sdk `ChainTracker` needs;
`mesh.chain.spv.ChainBackedTracker` wraps any `Chain` as one). Methods are async and
Trio-friendly: backends that block (SQLite, HTTP) run their work in `trio.to_thread`.

This module owns only the interface and its value types; it does no I/O.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction

from mesh.chain.rules import Policy


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


class OutputState(enum.Enum):
    """Whether an output exists in the backend's view and is still unspent."""

    UNKNOWN = "unknown"  # the view holds no such output (or it is an unspendable data output)
    UNSPENT = "unspent"
    SPENT = "spent"  # spent by an accepted transaction, mined or in the mempool


@dataclass(frozen=True)
class OutputStatus:
    """One output as the backend sees it; amount and script are set unless UNKNOWN.

    `spent_by` is the spending transaction's id when the output is SPENT and the backend
    says which transaction spends it.
    """

    txid: str
    vout: int
    state: OutputState
    satoshis: int | None = None
    script: bytes | None = None
    spent_by: str | None = None


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

    async def output(self, txid: str, vout: int) -> OutputStatus:
        """Output `vout` of `txid`: UNKNOWN, UNSPENT or SPENT, with its amount and script.

        The mempool counts: an output of an unmined transaction exists, and an output
        spent only by an unmined transaction is SPENT. A payee checks a channel's funding
        output with this before serving and until the channel closes. An output the view
        does not hold (unknown txid, vout out of range, data output) is UNKNOWN, never an
        error; only transport trouble raises (`ChainUnavailable`).
        """
        ...

    async def network_id(self) -> str:
        """The network this chain is, named by its genesis block hash (display hex):
        agents on different networks never talk (`mesh.session.ForeignPeer`)."""
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

    async def policy(self) -> Policy:
        """The network's transaction policy as this chain's miners publish it: fee rate,
        minimum fee, size limits (a fee below it is refused at a channel's open)."""
        ...


class AgentChain(Chain, Protocol):
    """What an agent runs on: a `Chain` that also hands out a transaction's bytes and
    takes raw bytes (escrows, passports), and is closed when the agent stops.
    `LocalChain` (a ledger file) and `ArcChain` (the network) are both one."""

    async def raw_tx(self, txid: str) -> bytes | None:
        """The serialised transaction `txid`, None when this view does not hold it."""
        ...

    async def broadcast_raw(self, raw: bytes) -> str:
        """`broadcast` for a serialised transaction."""
        ...

    def close(self) -> None:
        """Release what the view holds (a file, connections)."""
        ...
