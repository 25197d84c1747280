"""What the three work-order shells share: the agent's keys, wallet, chain, store and
sessions, and the few chain questions they all ask. (docs/ARCHITECTURE.md §4)"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from agents.workflows.store import Saved, WorkOrderStore
from mesh.anchoring.proof import single_tx_bump
from mesh.chain.base import AgentChain, OutputState, TxState
from mesh.chain.errors import ChainError, TxRejected
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.health import STORAGE_ERRORS, StorageHealth
from mesh.identity import Identity
from mesh.wire import Frame
from mesh.workflow.passport import MinedTx

log = logging.getLogger("agents.workflows")
COMPONENT = "work orders"
T = TypeVar("T")

Send = Callable[[str, Frame], Awaitable[None]]
LogRecord = Callable[[str, bytes, str | None], Awaitable[tuple[bytes, bytes]]]
"""log_record(stream, payload, audience) -> (record body, signature)."""


def payout_label(order_id: bytes) -> str:
    """The wallet label of our payout key in one work order (buyer or machine)."""
    return f"escrow-payout-{order_id.hex()}"


def reservation(order_id: bytes) -> str:
    """The wallet reservation of a buyer's escrow funding."""
    return f"escrow-{order_id.hex()}"


@dataclass
class WorkContext:
    """The agent's parts a work-order shell uses."""

    identity: Identity
    wallet: Wallet
    chain: AgentChain
    orders: WorkOrderStore
    send: Send
    limiter: trio.CapacityLimiter
    connected: Callable[[str], bool]
    """Whether we hold a session with a peer now."""
    health: StorageHealth
    """The agent's storage health: a failed save is a fault, the next good one ends it."""

    @property
    def peer_id(self) -> str:
        """Our peer id."""
        return self.identity.peer_id

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in a worker thread, one at a time."""
        return await trio.to_thread.run_sync(lambda: fn(*args), limiter=self.limiter)

    async def save(self, saved: Saved) -> None:
        """Write a work order's row (before what it makes possible is sent). A failed
        write raises (one of `STORAGE_ERRORS`) and is counted as the storage's fault:
        the caller goes no further, and takes the row from the store again later."""
        try:
            await self.db(self.orders.save, saved)
        except STORAGE_ERRORS as exc:
            self.health.fault(COMPONENT, exc)
            raise
        self.health.ok(COMPONENT)

    async def payout(self, order_id: bytes) -> bytes:
        """Our payout script for this order, its key adopted by the wallet first (its
        coins are looked for from now on)."""
        label = payout_label(order_id)
        await self.db(self.wallet.adopt, label)
        return p2pkh_script(self.wallet.payout_address(label))

    async def broadcast(self, raw: bytes, what: str) -> str | None:
        """Broadcast `raw`; its txid, or None when the chain refused it or did not
        answer (logged: the caller looks at the escrow output to learn what happened)."""
        try:
            return await self.chain.broadcast_raw(raw)
        except TxRejected as exc:
            log.info("%s not accepted: %s", what, exc.detail)
        except ChainError as exc:
            log.warning("%s: the chain did not answer (%s)", what, exc)
        return None

    async def spender(self, txid: str, vout: int = 0) -> str | None:
        """What spent an escrow output, if anything has."""
        out = await self.chain.output(txid, vout)
        return out.spent_by if out.state is OutputState.SPENT else None

    async def funding_output(self, txid: str) -> tuple[bytes, int] | None:
        """(script, satoshis) of an unspent escrow funding output, if the chain has it."""
        out = await self.chain.output(txid, 0)
        if out.state is not OutputState.UNSPENT or out.script is None:
            return None
        return out.script, out.satoshis or 0

    async def mined(self, txid: str) -> MinedTx | None:
        """A mined transaction with its BUMP, or None while it is not mined."""
        status = await self.chain.status(txid)
        if status.state is not TxState.MINED or not status.block_hash:
            return None
        bump = await self.chain.merkle_proof(txid)
        raw = await self.chain.raw_tx(txid)
        if bump is None or raw is None:
            return None
        return MinedTx(raw, status.block_height or 0, status.block_hash, single_tx_bump(bump, txid))


__all__ = ["LogRecord", "Send", "WorkContext", "log", "payout_label", "reservation"]
