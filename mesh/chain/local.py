"""`LocalChain`: the `Chain` interface over a `LocalLedger`, for Trio code.

SQLite calls block (and may wait on another process's write lock for the busy
timeout), so every ledger call runs in `trio.to_thread` behind a one-slot
`CapacityLimiter`: the ledger's connection is used by one thread at a time. Open the
ledger with ``check_same_thread=False`` (`LocalChain.open` does) and do not use it
directly while a `LocalChain` owns it.

`run_miner` mines a block every `interval` seconds of Trio time (so tests drive it with
a mock clock). This module owns only that bridging; all rules live in the ledger.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import trio
from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction

from mesh.chain.base import OutputStatus, TxStatus, Utxo
from mesh.chain.ledger import BlockInfo, Clock, LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.spv import ChainBackedTracker
from mesh.chain.tx import p2pkh_script

T = TypeVar("T")


class LocalChain:
    """A `Chain` backed by the embedded ledger file."""

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    def open(cls, path: Path, *, clock: Clock = time.time) -> LocalChain:
        """Open the ledger at `path` for use from Trio threads."""
        return cls(LocalLedger.open(path, clock=clock, check_same_thread=False))

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def broadcast(self, tx: Transaction) -> str:
        """Submit `tx` to the ledger (see `LocalLedger.submit`)."""
        raw: bytes = tx.serialize()
        return await self._run(self.ledger.submit, raw)

    async def broadcast_raw(self, raw: bytes) -> str:
        """Submit serialised bytes as they are (the ledger parses them exactly)."""
        return await self._run(self.ledger.submit, raw)

    async def status(self, txid: str) -> TxStatus:
        """The transaction's state in the ledger."""
        return await self._run(self.ledger.status, txid)

    async def output(self, txid: str, vout: int) -> OutputStatus:
        """The output's state in the ledger (see `LocalLedger.output`)."""
        return await self._run(self.ledger.output, txid, vout)

    async def raw_tx(self, txid: str) -> bytes | None:
        """The raw bytes of a transaction the ledger holds (None: unknown)."""
        return await self._run(self.ledger.raw_tx, txid)

    async def merkle_proof(self, txid: str) -> MerklePath | None:
        """The BUMP proof of a mined transaction."""
        return await self._run(self.ledger.merkle_proof, txid)

    async def network_id(self) -> str:
        """The ledger's genesis block hash."""
        return await self._run(self.ledger.genesis_hash)

    async def height(self) -> int:
        """The ledger's best height."""
        return await self._run(self.ledger.height)

    async def utxos(self, address: str) -> list[Utxo]:
        """Unspent P2PKH outputs paying `address`."""
        return await self._run(self.ledger.utxos, p2pkh_script(address))

    async def policy(self) -> Policy:
        """The ledger's policy (fixed when the ledger file was created)."""
        return self.ledger.policy

    async def is_valid_root(self, merkle_root: str, height: int) -> bool:
        """True when the ledger's block at `height` has this Merkle root."""
        return await self._run(self.ledger.is_valid_root, merkle_root, height)

    async def mine(self, count: int = 1) -> list[BlockInfo]:
        """Mine `count` blocks now."""
        return await self._run(self.ledger.mine, count)

    def tracker(self) -> ChainBackedTracker:
        """A bsv-sdk `ChainTracker` over this chain, for `MerklePath.verify` and SPV."""
        return ChainBackedTracker(self)

    async def run_miner(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Mine one block every `interval` seconds until cancelled."""
        if interval <= 0:
            raise ValueError("the mining interval must be positive")
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self._run(self.ledger.mine)

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()
