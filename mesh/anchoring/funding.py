"""The store and wallet side of an anchoring cycle: what `Anchorer` runs in a worker
thread, each method one SQLite transaction on the agent's store (the wallet's writes
nested in it). No Trio, no chain: the shell broadcasts between these calls.

A cycle is one commit (`step`): book the anchors broadcast since the last commit (the
wallet's coins spent, its change ours; their batches ``broadcast``), drop drafts the chain
refused, plan the batches just cut, and fund and record one anchor transaction with an
output per planned batch (at most `MAX_OUTPUTS`). A confirm pass that finds blocks is one
more (`mark_mined`): it books what no cycle booked yet, and marks the blocks found. It must
never record a draft without its coins reserved in the same transaction, or mark a batch
mined before it is booked. (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from mesh.anchoring.batch import PendingBatch
from mesh.anchoring.payload import AnchorPayload
from mesh.anchoring.store import AnchorStore, BatchInfo
from mesh.chain.errors import WalletError
from mesh.chain.wallet import Wallet

MAX_OUTPUTS = 32
"""Batches one anchor transaction carries at most (one output each)."""


def next_group(waiting: list[BatchInfo]) -> list[BatchInfo]:
    """What to anchor next of the batches waiting (in id order): the built ones that
    share the first built one's transaction, else every planned one."""
    built = [b for b in waiting if b.state == "built"]
    if built:
        return [b for b in built if b.txid == built[0].txid]
    return [b for b in waiting if b.state == "planned"]


class AnchorBooks:
    """The writes of an agent's anchoring cycles (see the module docstring)."""

    def __init__(
        self,
        records: AnchorStore,
        wallet: Wallet,
        agent: bytes,
        clock: Callable[[], float],
        anchor_satoshis: int,
    ) -> None:
        self.records = records
        self.wallet = wallet
        self.agent = agent
        self.clock = clock
        self.anchor_satoshis = anchor_satoshis

    def step(
        self,
        unbooked: list[BatchInfo],
        rejected: list[BatchInfo],
        to_plan: list[tuple[PendingBatch, bytes]],
        group: list[BatchInfo],
    ) -> tuple[list[BatchInfo], list[BatchInfo], WalletError | None]:
        """Worker thread, one transaction: book the anchors the chain accepted, drop the
        `rejected` drafts, plan the batches cut, and fund and record one anchor
        transaction for the planned `group` and the batches planned now (a built
        `group` is returned as it is). A funding that fails leaves the rest to commit.
        Returns the batches planned, the group and that failure."""
        with self.records.write():
            self.book(unbooked)
            for txid in dict.fromkeys(b.txid for b in rejected if b.txid is not None):
                self.wallet.abandon(txid)
            for refused in rejected:
                self.records.clear_draft(refused.id)
            planned = self.records.plan_batches(self.agent, to_plan, self.clock())
            if not group or group[0].state == "planned":
                group = (group + planned)[:MAX_OUTPUTS]
            if not group or group[0].state != "planned":
                return planned, group, None
            try:
                return planned, self.fund(group), None
            except WalletError as exc:
                return planned, group, exc

    def fund(self, group: list[BatchInfo]) -> list[BatchInfo]:
        """Worker thread, inside `step`'s transaction: one anchor transaction for the
        planned `group`, an output per batch (its fee booked on the first)."""
        # A crash between funding and recording the draft, before they shared a
        # transaction, left coins reserved: free them first.
        for batch in group:
            self.wallet.release(batch.reservation)
        outputs = [
            (
                AnchorPayload(b.agent, b.stream, b.first_seq, b.last_seq, b.root).script(),
                self.anchor_satoshis,
            )
            for b in group
        ]
        draft = self.wallet.fund(outputs, reservation=group[0].reservation)
        built = []
        for i, batch in enumerate(group):
            fee = draft.fee if i == 0 else 0
            self.records.record_draft(batch.id, draft.txid, draft.raw, fee)
            built.append(replace(batch, state="built", txid=draft.txid, raw=draft.raw, fee=fee))
        return built

    def book(self, unbooked: list[BatchInfo]) -> None:
        """Worker thread, inside a write: record broadcast anchors (idempotent)."""
        for txid in dict.fromkeys(b.txid for b in unbooked if b.txid is not None):
            self.wallet.mark_broadcast(txid)
        for done in unbooked:
            self.records.mark_broadcast(done.id)

    def book_now(self, unbooked: list[BatchInfo]) -> None:
        """Worker thread: `book` in a transaction of its own."""
        with self.records.write():
            self.book(unbooked)

    def mark_mined(
        self, unbooked: list[BatchInfo], mined: list[tuple[int, int, str, bytes]]
    ) -> None:
        """Worker thread: record the broadcasts not booked yet and the blocks of mined
        anchors, in one transaction."""
        with self.records.write():
            self.book(unbooked)
            for batch_id, height, block_hash, bump in mined:
                self.records.mark_mined(batch_id, height, block_hash, bump)


__all__ = ["MAX_OUTPUTS", "AnchorBooks", "next_group"]
