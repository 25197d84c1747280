"""The machine's side of escrowed work orders: accept an offer by signing its refund,
see the escrow funded, hand the buyer the meter statement of the part's tool time, and
collect the payment on the inspector's PASS.

Every step saves the order's row before the frame or transaction it makes possible
leaves (`agents.workflows.store`): the acceptance before `EscrowAccepted`, the signed
release before it is broadcast. A start resumes what a stop left: a saved release is
broadcast again, an escrow whose funding never came is let go at its refund height,
and one settled by anybody is marked so. (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from agents.profile_workflows import EscrowSpec
from agents.services.frames import ServiceOrder
from agents.workflows.context import WorkContext, log
from agents.workflows.store import Saved, summary
from mesh.chain.tx import txid_of
from mesh.errors import RemoteProtocolError
from mesh.health import STORAGE_ERRORS
from mesh.wire import decode, encode
from mesh.workflow.escrow import EscrowError
from mesh.workflow.frames import (
    EscrowFunded,
    EscrowOffer,
    EscrowRefused,
    Verdict,
    WorkRecord,
)
from mesh.workflow.orders import FINAL, MachineOrder, OrderState, terms_of
from mesh.workflow.verdict import open_verdict

ROLE = "machine"
REQUEST_PREFIX = "work-order:"
"""A tool-time order for a work order says so in its request: ``work-order:<id hex>``."""
WATCH_SECONDS = 2.0
Then = Callable[[], Awaitable[None]]
MAX_UNFUNDED = 4
"""Accepted orders of one buyer that may wait for their funding at once (an offer
costs the machine a wallet key and a row until its refund height)."""


class MachineWork:
    """The work orders this agent takes as the machine."""

    def __init__(self, ctx: WorkContext, spec: EscrowSpec | None) -> None:
        self.ctx = ctx
        self.spec = spec
        self._retry: dict[bytes, tuple[Saved, Then | None]] = {}
        """Rows whose save failed, newest version per order, with what each allows."""

    # ------------------------------------------------------------------ frames

    async def handle(self, peer_id: str, frame: object) -> bool:
        """Handle a work-order frame addressed to the machine; False when not one."""
        if isinstance(frame, EscrowOffer):
            await self._offer(peer_id, frame)
        elif isinstance(frame, EscrowFunded) and frame.machine == self.ctx.peer_id:
            await self._funded(peer_id, frame)
        elif isinstance(frame, Verdict) and await self._row(frame.order_id) is not None:
            await self._verdict(peer_id, frame)
        else:
            return False
        return True

    async def _row(self, order_id: bytes) -> Saved | None:
        return await self.ctx.db(self.ctx.orders.get, order_id, ROLE)

    async def _refuse(self, peer_id: str, order_id: bytes, code: str, reason: str) -> None:
        log.info("work order %s from %s refused: %s", order_id.hex()[:8], peer_id[:16], reason)
        await self.ctx.send(peer_id, EscrowRefused(order_id, code, reason))

    async def _offer(self, buyer: str, offer: EscrowOffer) -> None:
        ctx = self.ctx
        saved = await self._row(offer.order_id)
        if saved is not None:  # asked again (our answer was lost): the same answer
            if saved.data["buyer"] == buyer and saved.data["offer"] == encode(offer):
                await ctx.send(buyer, decode(saved.data["accepted"]))
            return
        if self.spec is None:
            await self._refuse(buyer, offer.order_id, "no-escrow", "no escrowed work here")
            return
        if offer.amount < self.spec.min_payment:
            await self._refuse(buyer, offer.order_id, "amount",
                               f"a payment below {self.spec.min_payment} sat")  # fmt: skip
            return
        if buyer == offer.inspector:
            await self._refuse(buyer, offer.order_id, "inspector", "the buyer inspects itself")
            return
        rows = await ctx.db(ctx.orders.unfinished)
        waiting = sum(r.role == ROLE and r.state == "accepted" and r.data["buyer"] == buyer
                      for r in rows)  # fmt: skip
        if waiting >= MAX_UNFUNDED:  # each costs a wallet key and a row: bounded
            await self._refuse(buyer, offer.order_id, "busy",
                               f"{waiting} accepted orders of yours wait for funding")  # fmt: skip
            return
        try:
            payout = await ctx.payout(offer.order_id)
            height = await ctx.chain.height()
            policy = await ctx.chain.policy()
            _, accepted = MachineOrder.accept(
                ctx.identity.key, buyer, offer, payout, height, self.spec.inspectors, policy
            )
        except (EscrowError, ValueError) as exc:
            rule = exc.rule if isinstance(exc, EscrowError) else "offer"
            await self._refuse(buyer, offer.order_id, rule, str(exc))
            return
        data = {"buyer": buyer, "offer": encode(offer), "payout": payout,
                "accepted": encode(accepted)}  # fmt: skip
        log.info("work order %s: part %s for %s accepted (%d sat in escrow)",
                 offer.order_id.hex()[:8], offer.part, buyer[:16], offer.amount)  # fmt: skip
        await self._save(Saved(offer.order_id, ROLE, "", offer.part, "accepted", data),
                         lambda: ctx.send(buyer, accepted))  # fmt: skip

    def _order(self, saved: Saved) -> MachineOrder:
        offer = decode(saved.data["offer"])
        assert isinstance(offer, EscrowOffer)
        terms = terms_of(offer.order_id, saved.data["buyer"], self.ctx.peer_id, offer.inspector,
                         offer.amount, offer.fee, offer.refund_height, offer.buyer_payout,
                         saved.data["payout"], offer.funding_txid)  # fmt: skip
        verdict = decode(saved.data["verdict"]) if saved.data.get("verdict") else None
        assert verdict is None or isinstance(verdict, Verdict)
        return MachineOrder(self.ctx.identity.key, saved.data["buyer"], terms, offer.part,
                            offer.inspector, OrderState(saved.state), verdict)  # fmt: skip

    async def _funded(self, buyer: str, frame: EscrowFunded) -> None:
        saved = await self._row(frame.order_id)
        if saved is None or saved.data["buyer"] != buyer or saved.state != "accepted":
            return  # (again, or not ours: nothing to do)
        order = self._order(saved)
        if txid_of(frame.funding_tx) != order.terms.funding_txid:
            await self._refuse(buyer, frame.order_id, "funding", "not the funding we signed for")
            return
        found = None
        for _ in range(10):  # just broadcast: the chain may need a moment
            found = await self.ctx.funding_output(order.terms.funding_txid)
            if found is not None:
                break
            await trio.sleep(0.2)
        try:
            if found is None:
                raise EscrowError("funding", "the funding is not on chain")
            order.funded(frame, *found)
        except EscrowError as exc:
            await self._refuse(buyer, frame.order_id, exc.rule, str(exc))
            return
        saved.state = order.state.value
        await self._save(saved)
        log.info("work order %s: escrow funded, %d sat", frame.order_id.hex()[:8], found[1])

    async def _verdict(self, peer_id: str, frame: Verdict) -> None:
        saved = await self._row(frame.order_id)
        if saved is None or saved.state != "funded":
            return
        order = self._order(saved)
        if peer_id != order.inspector:
            return
        try:
            body = open_verdict(frame.record, frame.record_signature, order.inspector)
            release = order.judged(frame, body)
        except RemoteProtocolError as exc:
            log.warning("work order %s: verdict refused: %s", frame.order_id.hex()[:8], exc)
            return
        saved.state = order.state.value
        saved.data["verdict"] = encode(frame)
        if release is not None:
            saved.data["release"] = release
        log.info("work order %s: part %s %s", frame.order_id.hex()[:8], order.part,
                 "PASSED" if frame.passed else "FAILED")  # fmt: skip
        await self._save(saved, lambda: self._settle(saved, order))  # then the release

    async def _settle(self, saved: Saved, order: MachineOrder) -> None:
        """Broadcast a saved release; mark the row done once the escrow is spent."""
        release = saved.data.get("release")
        if release and saved.state == "passed":
            await self.ctx.broadcast(release, f"release of work order {saved.order_id.hex()[:8]}")
        spender = await self.ctx.spender(order.terms.funding_txid)
        if spender is None:
            height = await self.ctx.chain.height()
            if saved.state == "accepted" and height >= order.terms.refund_height:
                saved.state, saved.done = "abandoned", True  # never funded
                await self.ctx.save(saved)
            return
        saved.data["settlement"] = spender
        if spender == (txid_of(release) if release else None):
            saved.state = "released"
        elif OrderState(saved.state) not in FINAL:
            saved.state = "settled"  # (by the buyer: its release, return or refund)
        saved.done = True
        await self.ctx.save(saved)

    # ------------------------------------------------------------------ tool time

    async def statement(self, buyer: str, order: ServiceOrder, body: bytes, sig: bytes) -> None:
        """The provider logged the final meter statement of a tool-time order: one for
        a work order goes to its buyer, for the part's passport."""
        request = order.request.decode(errors="replace")
        if not request.startswith(REQUEST_PREFIX):
            return
        try:
            order_id = bytes.fromhex(request.removeprefix(REQUEST_PREFIX))
        except ValueError:
            return
        saved = await self._row(order_id)
        if saved is None or saved.data["buyer"] != buyer:
            return
        saved.data["statements"] = [*saved.data.get("statements", []), [body, sig]]
        await self._save(saved, lambda: self.ctx.send(buyer, WorkRecord(order_id, body, sig)))

    async def _save(self, saved: Saved, then: Then | None = None) -> None:
        """Save a row, then do what it allows (`then`). A write that fails (a full
        disk) is tried again by `run` every `WATCH_SECONDS`, `then` only after it
        worked; the caller's frame ends here (the error propagates)."""
        try:
            await self.ctx.save(saved)
        except STORAGE_ERRORS:
            self._retry[saved.order_id] = (saved, then)
            raise
        self._retry.pop(saved.order_id, None)
        if then is not None:
            await then()

    async def _saved_late(self) -> None:
        """Try again the saves that failed, in order; each one's `then` once it worked."""
        for order_id, (saved, then) in list(self._retry.items()):
            if self._retry.get(order_id) == (saved, then):
                await self._save(saved, then)

    # ------------------------------------------------------------------ watch

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume and watch the unfinished orders (release again, mark settled)."""
        task_status.started()
        while True:
            try:
                await self._saved_late()
                rows = await self.ctx.db(self.ctx.orders.unfinished)
                for saved in rows:
                    if saved.role == ROLE:
                        await self._settle(saved, self._order(saved))
            except STORAGE_ERRORS:  # (counted by `save`): at the next pass
                pass
            await trio.sleep(WATCH_SECONDS)

    def status(self, rows: list[Saved]) -> list[dict[str, object]]:
        """The machine's orders for `mesh status`."""
        return [summary(s, s.data["buyer"]) for s in rows if s.role == ROLE]


__all__ = ["REQUEST_PREFIX", "MachineWork"]
