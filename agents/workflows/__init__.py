"""Escrowed work orders in the agent: one party's shell per role over the pure
conversation of `mesh.workflow` -- the buyer that orders parts (`BuyerWork`), the
machine that makes them (`MachineWork`), the inspector that judges them
(`InspectorWork`) -- sharing one store of work orders (`WorkOrderStore`).
(docs/ARCHITECTURE.md §4)"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from agents.profile import Profile
from agents.services.frames import ServiceOrder
from agents.workflows.buyer import Buy, BuyerWork, Keep, Offers, Proven, Require
from agents.workflows.context import LogRecord, WorkContext
from agents.workflows.inspector import InspectionError, InspectorWork
from agents.workflows.machine import MachineWork
from agents.workflows.store import Saved, WorkOrderStore
from mesh.anchoring.record import SignedRecord
from mesh.health import STORAGE_ERRORS
from mesh.workflow.frames import Verdict


class Workflows:
    """Every role this agent plays in work orders, behind one frame handler."""

    def __init__(
        self,
        ctx: WorkContext,
        profile: Profile,
        *,
        buy: Buy,
        offers: Offers,
        keep: Keep,
        proven: Proven,
        require: Require,
        log_record: LogRecord,
    ) -> None:
        self.ctx = ctx
        self.buyer = BuyerWork(ctx, profile.workflows, buy, offers, keep, proven, require)
        self.machine = MachineWork(ctx, profile.escrow)
        self.inspector = InspectorWork(ctx, profile.inspection, log_record)
        self._rows: list[Saved] = []

    async def run(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Resume and run every role (buying parts stops at `stop`)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.machine.run)
            nursery.start_soon(self.buyer.run, stop)
            nursery.start_soon(self._keep_status)
            task_status.started()

    async def handle(self, peer_id: str, frame: object) -> bool:
        """Handle a work-order frame; False when it is none. A verdict is the buyer's
        when the order is one of its live ones, else the machine's."""
        try:
            if isinstance(frame, Verdict):
                return await self.buyer.handle(peer_id, frame) or await self.machine.handle(
                    peer_id, frame
                )
            return (
                await self.buyer.handle(peer_id, frame)
                or await self.machine.handle(peer_id, frame)
                or await self.inspector.handle(peer_id, frame)
            )
        except STORAGE_ERRORS:  # (counted by `save`) nothing was sent: the peer asks again
            return True

    def saw_reading(self, signed: SignedRecord) -> None:
        """A kept reading (named in the passports of parts being made)."""
        self.buyer.saw_reading(signed)

    async def statement(self, buyer: str, order: ServiceOrder, body: bytes, sig: bytes) -> None:
        """A final meter statement the provider logged (one of a work order goes to
        its buyer)."""
        with contextlib.suppress(*STORAGE_ERRORS):  # (saved and sent later: `MachineWork`)
            await self.machine.statement(buyer, order, body, sig)

    async def _keep_status(self) -> None:
        while True:
            with contextlib.suppress(*STORAGE_ERRORS):  # (shown as it was meanwhile)
                self._rows = await self.ctx.db(self.ctx.orders.recent, 50)
            await trio.sleep(1.0)

    def status(self) -> dict[str, Any]:
        """Recent work orders of every role, and why the buyer's last part waits."""
        rows = self._rows
        return {
            "orders": [
                *self.buyer.status(rows),
                *self.machine.status(rows),
                *self.inspector.status(rows),
            ],
            "waiting": dict(self.buyer.failures),
            "parts_open": self.buyer.parts_open(),
        }


__all__ = ["InspectionError", "WorkContext", "WorkOrderStore", "Workflows"]
