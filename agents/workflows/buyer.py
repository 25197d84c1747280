"""The buyer's side of escrowed work orders: for each part of a ``[[workflows]]``
entry, lock its completion payment in escrow, have the machine make it (tool time
bought over a channel, as any want), have the inspector judge it, and see the payment
go the way the verdict says -- or come back at the refund height.

One part, step by step (the row is saved before what it makes possible):

1. the funding is built (not broadcast) to the 2-of-3; saved as *offered*; the offer
   goes to the machine;
2. the machine's refund signature is checked; saved as *accepted*; only then is the
   funding broadcast (from here the buyer can always get its coins back), saved as
   *funded*, and the machine and the inspector told;
3. tool time for the part is bought from that machine (its orders say
   ``work-order:<id>``; the machine's meter statement comes back for the passport);
4. the inspector is asked to inspect until its verdict comes; saved as *passed* or
   *failed*; on FAIL the buyer broadcasts the return; on PASS the machine collects,
   and if it does not within `RELEASE_GRACE` seconds the buyer broadcasts the release
   to the machine itself;
5. with no verdict by the refund height, the refund the machine signed in step 2;
6. once the settlement is mined, its proof and the funding's are kept: the part's
   passport (`agents.passport_cli`) can be exported.

A start resumes every unfinished row from where it was saved: an offer never accepted
is abandoned (its coins freed), an accepted funding broadcast again, a job finished,
an inspection asked for again. (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio

from agents.buying import WantProgress
from agents.profile import WantSpec
from agents.profile_workflows import WorkflowSpec
from agents.workflows.context import WorkContext, log, reservation
from agents.workflows.machine import REQUEST_PREFIX
from agents.workflows.store import Saved, buyer_summary
from mesh.anchoring.errors import RecordError, RecordRejected
from mesh.anchoring.record import SignedRecord, open_record
from mesh.certs.certificate import Certificate, CertificateError
from mesh.chain.base import TxState
from mesh.chain.errors import ChainError, WalletError
from mesh.chain.tx import parse_exact, txid_of
from mesh.errors import RemoteProtocolError
from mesh.health import STORAGE_ERRORS
from mesh.wire import Frame, decode, encode
from mesh.workflow.escrow import EscrowError
from mesh.workflow.frames import (
    EscrowAccepted,
    EscrowOffer,
    EscrowRefused,
    InspectPart,
    Verdict,
    WorkRecord,
)
from mesh.workflow.orders import BuyerOrder, OrderState, service_order_prefix
from mesh.workflow.verdict import open_verdict

ROLE = "buyer"
ACCEPT_SECONDS = 15.0
"""How long a machine has to accept an offer before the buyer abandons it."""
OFFER_AGAIN_SECONDS = 2.0
"""How often an offer not yet answered is sent again."""
ASK_SECONDS = 3.0
"""How often the inspector is asked again while no verdict came."""
RELEASE_GRACE = 6.0
"""Seconds after a PASS before the buyer releases the payment to the machine itself."""
MAX_READINGS = 20
"""Process readings named in one part's passport at most."""
SETTLED = {"released", "returned", "refunded"}

Buy = Callable[[WantProgress, str], Awaitable[None]]
"""buy(progress, machine): buy a want from that provider only, until done or stopped."""
Offers = Callable[[WantSpec], tuple[str, int] | None]
"""(seller, price) of the cheapest usable offer of a want (`Purchases.best_offer`)."""
Keep = Callable[[SignedRecord], None]
"""Keep a verified record of a peer in the buyer's archive (receipts follow)."""
Require = Callable[[str, str], Awaitable[Certificate | None]]
"""require(peer, requirement): the certificate a peer proved it by (`Proofs.require`);
raises `CertificateError` when it did not."""
Proven = Callable[[bytes, str, int], bool]
"""proven(producer, stream, seq): whether a kept record has its producer's receipt."""
INBOX = 64
"""Frames one live order holds unread; more from its peers are dropped."""


@dataclass
class _Live:
    """A part being worked on: its row and the frames that arrive for it."""

    saved: Saved
    order: BuyerOrder
    spec: WorkflowSpec
    inbox: trio.MemorySendChannel[Frame]
    frames: trio.MemoryReceiveChannel[Frame]
    readings: list[list[object]] = field(default_factory=list)


class BuyerWork:
    """The work orders this agent places as the buyer."""

    def __init__(
        self,
        ctx: WorkContext,
        specs: tuple[WorkflowSpec, ...],
        buy: Buy,
        offers: Offers,
        keep: Keep,
        proven: Proven,
        require: Require,
    ) -> None:
        self.ctx = ctx
        self.specs = {s.id: s for s in specs}
        self._buy = buy
        self._offers = offers
        self._keep = keep
        self._proven = proven
        self._require = require
        self._live: dict[bytes, _Live] = {}
        self._nursery: trio.Nursery | None = None
        self.settled: set[str] = set()
        """Parts whose escrow is settled and proven (from the store, then as they go)."""
        self.failures: dict[str, str] = {}
        """workflow id -> why its last part could not be ordered (status)."""

    # ------------------------------------------------------------------ frames

    async def handle(self, peer_id: str, frame: object) -> bool:
        """Route a frame of one of our live orders to it; False when it is none."""
        order_id = getattr(frame, "order_id", None)
        live = self._live.get(order_id) if isinstance(order_id, bytes) else None
        if live is None or not isinstance(
            frame, EscrowAccepted | EscrowRefused | Verdict | WorkRecord
        ):
            return False
        sender = live.order.offer.inspector if isinstance(frame, Verdict) else live.order.machine
        if isinstance(frame, EscrowRefused):
            sender = peer_id if peer_id in (live.order.machine, live.order.offer.inspector) else ""
        if peer_id != sender:
            return True  # not from whom it must come: dropped
        if isinstance(frame, WorkRecord):
            await self._work_record(live, frame)
        else:
            try:
                live.inbox.send_nowait(frame)
            except trio.WouldBlock:  # a peer repeating itself: its extra frames go
                log.info("work order for %s: frame dropped (%d unread)", live.saved.part, INBOX)
        return True

    def saw_reading(self, signed: SignedRecord) -> None:
        """A reading kept while parts are made: named in their passports."""
        for live in self._live.values():
            stream = f"readings/{live.spec.readings}" if live.spec.readings else None
            job = live.saved.data.get("job") == "running"
            if stream == signed.stream and job and len(live.readings) < MAX_READINGS:
                live.readings.append([signed.agent.hex(), signed.stream, signed.seq])

    async def _work_record(self, live: _Live, frame: WorkRecord) -> None:
        try:
            signed = open_record(frame.record, frame.record_signature)
        except RecordError as exc:
            log.warning("work order %s: a bad record from the machine: %s",
                        frame.order_id.hex()[:8], exc)  # fmt: skip
            return
        if signed.agent.hex() != live.order.machine or signed.stream != "meters":
            return
        try:
            self._keep(signed)
        except RecordRejected as exc:
            log.warning("work order %s: record not kept: %s", frame.order_id.hex()[:8], exc)
            return
        ref = [signed.agent.hex(), signed.stream, signed.seq]
        records = live.saved.data.setdefault("records", [])
        if ref not in records:
            records.append(ref)
            await self.ctx.save(live.saved)

    # ------------------------------------------------------------------ run

    async def run(self, stop: trio.Event) -> None:
        """Make every part of every workflow in turn (each from what the store says of
        it), and finish the orders of workflows the profile no longer has."""
        self.settled = await self.ctx.db(self.ctx.orders.settled_parts)
        rows = [r for r in await self.ctx.db(self.ctx.orders.unfinished) if r.role == ROLE]
        await self._free_orphans({reservation(r.order_id) for r in rows})
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for spec in self.specs.values():
                nursery.start_soon(self._workflow, spec, stop)
            for saved in rows:
                if saved.workflow not in self.specs:
                    nursery.start_soon(self._resume, saved, stop)

    async def _free_orphans(self, kept: set[str]) -> None:
        """Free the coins of escrow fundings built for no order left to carry on (a stop
        between building the funding and saving the offer): nothing was broadcast."""
        held = await self.ctx.db(self.ctx.wallet.reservations)
        for orphan in sorted(r for r in held if r.startswith("escrow-") and r not in kept):
            freed = await self.ctx.db(self.ctx.wallet.release, orphan)
            log.info("work orders: %d coin(s) of an unsent escrow funding freed", freed)

    async def _workflow(self, spec: WorkflowSpec, stop: trio.Event) -> None:
        """The parts in turn. Each try starts from what the store holds of the part, so a
        stop, a crash or a failed write never makes a step run on what was not saved."""
        for part in spec.parts:
            while not stop.is_set():
                try:
                    if await self._part(spec, part, stop):
                        break
                except STORAGE_ERRORS:  # (counted by `save`): from the store again
                    for order_id in [k for k, v in self._live.items() if v.saved.part == part]:
                        del self._live[order_id]
                with trio.move_on_after(2.0):
                    await stop.wait()

    async def _part(self, spec: WorkflowSpec, part: str, stop: trio.Event) -> bool:
        """One try at a part: True once its escrow is settled (its proofs may still
        come, beside the next part)."""
        rows = await self.ctx.db(self.ctx.orders.of_part, part)
        for saved in rows:
            if saved.state in SETTLED:
                if not saved.done and saved.order_id not in self._live:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._prove, self._restore(saved))
                return True
        unfinished = [r for r in rows if not r.done]
        if unfinished:
            return await self._resume(unfinished[0], stop)
        live = await self._offer(spec, part, stop)
        if live is None:
            return False
        await self._carry(live, stop)
        return True

    async def _resume(self, saved: Saved, stop: trio.Event) -> bool:
        """Carry a saved order on to its settlement (True); an offer never accepted is
        abandoned instead (False)."""
        live = self._restore(saved)
        if saved.state == "offered":  # never accepted: nothing was broadcast
            await self._abandon(live, "not accepted before a restart")
            return False
        await self._carry(live, stop)
        return True

    def _restore(self, saved: Saved) -> _Live:
        """A saved order, live again."""
        spec = self.specs.get(saved.workflow)
        if spec is None:  # no more in the profile: inspected as far as it was made
            spec = _left_over(saved)
            saved.data["job"] = "made"
        offer = decode(saved.data["offer"])
        assert isinstance(offer, EscrowOffer)
        verdict = decode(saved.data["verdict"]) if saved.data.get("verdict") else None
        assert verdict is None or isinstance(verdict, Verdict)
        order = BuyerOrder.restore(
            self.ctx.identity.key, offer, saved.data["machine"], OrderState(saved.state),
            saved.data.get("payout", b""), saved.data.get("refund_sig", b""), verdict,
        )  # fmt: skip
        return self._open(saved, order, spec)

    def _open(self, saved: Saved, order: BuyerOrder, spec: WorkflowSpec) -> _Live:
        send, receive = trio.open_memory_channel[Frame](INBOX)
        live = self._live[saved.order_id] = _Live(saved, order, spec, send, receive)
        return live

    # ------------------------------------------------------------------ steps

    async def _offer(self, spec: WorkflowSpec, part: str, stop: trio.Event) -> _Live | None:
        """Steps 1-2: offer, accepted, funded. None when no machine took it."""
        ctx = self.ctx
        machine = await self._machine(spec, stop)
        if machine is None:
            return None
        certificates: dict[str, str] = {}
        for role, peer, name in (("inspector", spec.inspector, spec.require),
                                 ("machine", machine, spec.machine_require)):  # fmt: skip
            if not name:  # else the peer proves it before any coin moves
                continue
            try:
                certificate = await self._require(peer, name)
            except CertificateError as exc:
                self.failures[spec.id] = f"part {part}: the {role} is unproven: {exc}"
                log.warning("workflow %s: %s", spec.id, self.failures[spec.id])
                return None
            if certificate is not None:
                certificates[f"{role}_certificate"] = json.dumps(certificate.to_json())
        order_id = secrets.token_bytes(16)
        payout = await ctx.payout(order_id)
        height = await ctx.chain.height()
        offer = EscrowOffer(order_id, part, spec.inspector, spec.payment, spec.fee,
                            height + spec.refund_blocks, payout, "00" * 32)  # fmt: skip
        order = BuyerOrder(ctx.identity.key, offer, machine)
        try:
            draft = await ctx.db(
                lambda: ctx.wallet.fund(
                    [(order.script(), spec.payment)], reservation=reservation(order_id)
                )
            )
        except WalletError as exc:
            self.failures[spec.id] = f"part {part}: cannot fund the escrow: {exc}"
            log.warning("workflow %s: %s", spec.id, self.failures[spec.id])
            return None
        order.offer = replace(offer, funding_txid=draft.txid)
        data = {"offer": encode(order.offer), "buyer": ctx.peer_id, "machine": machine,
                "funding": draft.raw}  # fmt: skip
        data.update(certificates)
        saved = Saved(order_id, ROLE, spec.id, part, "offered", data)
        try:
            await ctx.save(saved)
        except STORAGE_ERRORS:  # no row: its coins go back (or at the next start)
            with contextlib.suppress(*STORAGE_ERRORS):
                await ctx.db(ctx.wallet.release, reservation(order_id))
            raise
        live = self._open(saved, order, spec)
        accepted = None
        with trio.move_on_after(ACCEPT_SECONDS):
            while accepted is None:
                # Sent again now and then: a machine that was still starting, or a frame
                # lost with a session, answers the same offer the same way.
                await ctx.send(machine, order.offer)
                with trio.move_on_after(OFFER_AGAIN_SECONDS):
                    frame = await live.frames.receive()
                    if isinstance(frame, EscrowRefused):
                        await self._abandon(live, f"refused: {frame.reason} ({frame.code})")
                        return None
                    if isinstance(frame, EscrowAccepted):
                        accepted = frame
        if accepted is None:
            await self._abandon(live, "the machine did not accept in time")
            return None
        frame = accepted
        try:
            order.accepted(frame)
        except EscrowError as exc:
            await self._abandon(live, f"acceptance refused: {exc}")
            return None
        saved.state = "accepted"
        saved.data.update(payout=frame.machine_payout, refund_sig=frame.refund_signature)
        await ctx.save(saved)  # the refund signature is ours before any coin moves
        await self._fund(live)
        return live

    async def _machine(self, spec: WorkflowSpec, stop: trio.Event) -> str | None:
        """The cheapest machine selling `spec.service`, while the inspector is there."""
        want = self._want(spec, b"")
        while not stop.is_set():
            found = self._offers(want.want) if self.ctx.connected(spec.inspector) else None
            if found is not None:
                self.failures.pop(spec.id, None)
                return found[0]
            self.failures[spec.id] = "waiting for a machine and the inspector"
            with trio.move_on_after(0.5):
                await stop.wait()
        return None

    async def _abandon(self, live: _Live, why: str) -> None:
        saved = live.saved
        try:
            await self.ctx.db(self.ctx.wallet.release, reservation(saved.order_id))
        except WalletError as exc:
            log.warning("work order %s: %s", saved.order_id.hex()[:8], exc)
        saved.state, saved.done = "abandoned", True
        saved.data["why"] = why
        await self.ctx.save(saved)
        self._live.pop(saved.order_id, None)
        self.failures[live.spec.id] = f"part {saved.part}: {why}"
        log.info("work order %s for part %s abandoned: %s", saved.order_id.hex()[:8],
                 saved.part, why)  # fmt: skip

    async def _fund(self, live: _Live) -> None:
        """Broadcast the funding (again, after a restart: the same transaction), then
        tell the machine and the inspector."""
        ctx, saved, order = self.ctx, live.saved, live.order
        raw = saved.data["funding"]
        txid = txid_of(raw)
        sent = await ctx.broadcast(raw, f"escrow funding {txid[:16]}")
        if sent is None and (await ctx.chain.status(txid)).state is TxState.UNKNOWN:
            return  # not on chain: tried again at the next pass (`_carry`)
        try:
            await ctx.db(ctx.wallet.mark_broadcast, txid)
        except WalletError as exc:
            log.warning("escrow funding %s: %s", txid[:16], exc)
        if saved.state == "accepted":
            announce = order.funded(raw)
            saved.state = "funded"
            saved.data["announce"] = encode(announce)
            await ctx.save(saved)
        announce_frame = decode(saved.data["announce"])
        for peer in (order.machine, order.offer.inspector):
            await ctx.send(peer, announce_frame)
        log.info("work order %s: part %s, %d sat in escrow (refund at height %d)",
                 saved.order_id.hex()[:8], saved.part, order.offer.amount,
                 order.offer.refund_height)  # fmt: skip

    async def _carry(self, live: _Live, stop: trio.Event) -> None:
        """Steps 3-5 for an accepted order, from wherever it stands, until its escrow
        is settled; step 6 (the proofs, once mined) goes on beside the next part."""
        saved = live.saved
        if saved.state == "accepted":  # the funding did not go out yet
            await self._fund(live)
        if saved.state == "funded" and saved.data.get("job") != "made":
            async with trio.open_nursery() as nursery:  # never past the refund height
                nursery.start_soon(self._until_refund, live, nursery.cancel_scope)
                await self._job(live, stop)
                nursery.cancel_scope.cancel()
        while saved.state not in SETTLED and not saved.done:
            await self._step(live)
            if saved.state in SETTLED or saved.done:
                break
            # Waiting for a verdict: ask again now and then; after one, look soon.
            with trio.move_on_after(ASK_SECONDS if saved.state == "funded" else 0.5):
                frame = await live.frames.receive()
                if isinstance(frame, Verdict):
                    await self._verdict(live, frame)
        assert self._nursery is not None
        self._nursery.start_soon(self._prove, live)

    async def _prove(self, live: _Live) -> None:
        """Step 6: keep the funding's and the settlement's proofs once mined."""
        try:
            while not live.saved.done:
                with contextlib.suppress(*STORAGE_ERRORS):  # (counted by `save`): again
                    await self._step(live)
                if not live.saved.done:
                    await trio.sleep(1.0)
        finally:
            self._live.pop(live.saved.order_id, None)

    async def _job(self, live: _Live, stop: trio.Event) -> None:
        """Step 3: buy the part's tool time from the machine."""
        saved, spec = live.saved, live.spec
        done = int(saved.data.get("units", 0))
        saved.data["job"] = "running"
        progress = self._want(spec, saved.order_id, spec.units - done)
        try:
            await self._buy(progress, live.order.machine)
        finally:
            saved.data["units"] = done + progress.delivered
            saved.data["paid"] = int(saved.data.get("paid", 0)) + progress.paid
            saved.data["job"] = "made" if saved.data["units"] >= spec.units else "stopped"
            saved.data["readings"] = [*saved.data.get("readings", []), *live.readings]
            live.readings.clear()
            with trio.CancelScope(shield=True):
                await self.ctx.save(saved)

    async def _until_refund(self, live: _Live, scope: trio.CancelScope) -> None:
        """End the job when the refund height comes: the coins go back then."""
        while await self.ctx.chain.height() < live.order.offer.refund_height:
            await trio.sleep(1.0)
        log.warning("work order %s: the part was not made by the refund height",
                    live.saved.order_id.hex()[:8])  # fmt: skip
        scope.cancel()

    def _want(self, spec: WorkflowSpec, order_id: bytes, units: int = 0) -> WantProgress:
        want = WantSpec(spec.service, spec.max_price, units or spec.units,
                        (units or spec.units) * spec.max_price, 1, spec.kind, spec.tick,
                        f"{REQUEST_PREFIX}{order_id.hex()}",
                        order_prefix=service_order_prefix(order_id))  # fmt: skip
        return WantProgress(want)

    async def _step(self, live: _Live) -> None:
        """One pass: ask for the verdict, settle what it allows, refund at the height,
        keep the proofs once mined."""
        ctx, saved, order = self.ctx, live.saved, live.order
        oid = saved.order_id.hex()[:8]
        funding = order.offer.funding_txid
        try:
            spender = await ctx.spender(funding)
            if spender is None and saved.state in SETTLED:
                return  # (our settlement not on chain yet)
            if spender is not None and saved.state not in SETTLED:
                saved.state = await self._way(live, spender)
                saved.data["settlement"] = spender
                await ctx.save(saved)
                log.info("work order %s: escrow %s", oid, saved.state)
            if spender is not None:
                await self._proofs(saved, funding, spender)
                return
            if saved.state == "accepted":  # its funding did not go out yet
                await self._fund(live)
            if saved.state == "funded" and saved.data.get("job") == "made":
                # The funding again (a stop or a lost frame may have kept it from
                # them; each takes it once), then the request to inspect.
                announce = decode(saved.data["announce"])
                for peer in (order.machine, order.offer.inspector):
                    await ctx.send(peer, announce)
                await ctx.send(order.offer.inspector, InspectPart(saved.order_id))
            if saved.state == "failed":
                await ctx.broadcast(saved.data["settle"], f"return of work order {oid}")
            elif saved.state == "passed":  # the machine collects; if it does not, we do
                if time.time() - float(saved.data.get("passed_at", 0.0)) > RELEASE_GRACE:
                    await ctx.broadcast(saved.data["settle"], f"release of work order {oid}")
                return  # (a PASS is the machine's money: never refunded by us)
            height = await ctx.chain.height()
            if height >= order.offer.refund_height:
                await ctx.broadcast(order.refund(), f"refund of work order {oid}")
        except ChainError as exc:
            log.warning("work order %s: the chain did not answer: %s", oid, exc)

    async def _way(self, live: _Live, spender: str) -> str:
        """Which way the escrow went, from the spending transaction's output."""
        raw = await self.ctx.chain.raw_tx(spender)
        terms = live.order.terms
        if raw is None or terms is None:
            return "settled"
        tx = parse_exact(raw)
        if tx.outputs and tx.outputs[0].locking_script.serialize() == terms.machine_payout:
            return "released"
        return "refunded" if tx.locktime else "returned"

    async def _verdict(self, live: _Live, frame: Verdict) -> None:
        saved, order = live.saved, live.order
        if saved.state != "funded":
            return
        try:
            body = open_verdict(frame.record, frame.record_signature, order.offer.inspector)
            returned = order.judged(frame, body)
            signed = open_record(frame.record, frame.record_signature)
        except (RemoteProtocolError, RecordError) as exc:
            log.warning("work order %s: verdict refused: %s", saved.order_id.hex()[:8], exc)
            return
        try:
            self._keep(signed)
        except RecordRejected as exc:
            log.warning("work order %s: verdict not kept: %s", saved.order_id.hex()[:8], exc)
        saved.state = order.state.value
        saved.data["verdict"] = encode(frame)
        saved.data["settle"] = returned if returned is not None else order.release()
        saved.data["passed_at"] = time.time()
        ref = [signed.agent.hex(), signed.stream, signed.seq]
        saved.data["records"] = [*saved.data.get("records", []), ref]
        await self.ctx.save(saved)  # before the return goes out
        values = ", ".join(f"{k} {v}" for k, v in body.values)
        log.info("work order %s: part %s %s (%s)", saved.order_id.hex()[:8], saved.part,
                 "PASSED" if frame.passed else "FAILED", values)  # fmt: skip

    async def _proofs(self, saved: Saved, funding: str, settlement: str) -> None:
        """Step 6: keep the funding's and the settlement's proofs once mined; done
        once the verdict and the meter statement have their producers' receipts too
        (the passport can be exported)."""
        mined_now = False
        for name, txid in (("funding_mined", funding), ("settlement_mined", settlement)):
            if name not in saved.data:
                mined = await self.ctx.mined(txid)
                if mined is None:
                    break
                saved.data[name] = mined.to_document()
                mined_now = True
        records = saved.data.get("records", [])  # the verdict, the meter statement
        proven = all(self._proven(bytes.fromhex(a), st, sq) for a, st, sq in records)
        if not (proven and "settlement_mined" in saved.data):
            if mined_now:
                await self.ctx.save(saved)  # (what is mined is kept meanwhile)
            return
        saved.done = True
        await self.ctx.save(saved)
        self.settled.add(saved.part)

    def parts_open(self) -> int:
        """Parts of the profile's workflows not yet settled and proven."""
        return sum(part not in self.settled for s in self.specs.values() for part in s.parts)

    def status(self, rows: list[Saved]) -> list[dict[str, object]]:
        """The buyer's orders for `mesh status` (newest first)."""
        return [buyer_summary(s) for s in rows if s.role == ROLE]


def _left_over(saved: Saved) -> WorkflowSpec:
    """A stand-in spec for an order of a workflow the profile no longer has: it is
    carried to its end (its part is made no further than it was)."""
    offer = decode(saved.data["offer"])
    assert isinstance(offer, EscrowOffer)
    units = int(saved.data.get("units", 0))
    return WorkflowSpec(saved.workflow, "", units, 1, (saved.part,), offer.amount, offer.fee,
                        offer.inspector)  # fmt: skip


__all__ = ["BuyerWork"]
