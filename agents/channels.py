"""The channel manager: drives payer and payee channel cores over sessions and a chain.

This is the shell around `mesh.channel`: it opens channels on demand, funds them from
the wallet, moves channel frames over the node's sessions, persists every state before
it sends or acknowledges it, broadcasts funding, closes and refunds, watches expiry,
and reloads everything after a restart. It is built in three layers: `ChannelBase`
(`agents.channel_base`: shared state, queries, sending), `ChannelSettlement`
(`agents.settlement`: closing, releasing, refunds, the expiry watcher) and
`ChannelManager` here (opening, paying, the channel frames, resuming).

Durability (docs/ARCHITECTURE.md §7), by group commit (`agents.group_commit`): state changes mark
their channel dirty; the payer's `ChannelPay` frames wait for the commit that makes
their state durable, and the payee's cumulative `ChannelAck`s (and payment callbacks)
are issued only for what a commit wrote. Where a batch is known to be complete -- a
payment with nothing else in flight, the last payment of a burst the node delivered --
the task at hand commits inline. Anything irreversible -- a funding or close
transaction -- is recorded before it is broadcast and its outcome after.

A payee answers bad input with a `ChannelError` naming the rule and no state change;
a peer that keeps doing it loses its session. A payer whose funding the payee refuses
(`FUNDING_REFUSALS`) records the channel ``refused`` and never offers that funding
again: the refund at the expiry takes its coins back.
"""

from __future__ import annotations

import functools
import logging
import secrets

import trio

from agents.channel_base import UNFUNDED, funding_outpoint, funding_problem
from agents.channel_config import (
    AckedCallback,
    ChannelConfig,
    ChannelFailure,
    ChannelStatistics,
    FundingRefused,
    PaidCallback,
    expiry_problem,
    is_txid,
    offer_problem,
)
from agents.logs import log_context
from agents.settlement import ChannelSettlement, close_request
from mesh.chain.errors import ChainError, ChainUnavailable, TxRejected
from mesh.chain.tx import parse_exact, txid_of
from mesh.channel.frames import (
    ChannelAck,
    ChannelClose,
    ChannelClosed,
    ChannelError,
    ChannelFunded,
    ChannelOpen,
    ChannelPay,
    ChannelPays,
    ChannelRefundSigned,
    ChannelRelease,
)
from mesh.channel.keys import ChannelKeyError, derive_channel_keys, keys_for, terms_binding
from mesh.channel.pays import latest_payment
from mesh.channel.state import (
    ChannelStateError,
    Payee,
    Payer,
    PaymentRejected,
    Record,
    Role,
    State,
)
from mesh.channel.txs import Terms, multisig_script
from mesh.health import STORAGE_ERRORS, describe
from mesh.identity import parse_peer_id
from mesh.wire import Frame

log = logging.getLogger("agents.channels")
CHANNEL_FRAMES = (
    ChannelOpen,
    ChannelRefundSigned,
    ChannelFunded,
    ChannelPay,
    ChannelPays,
    ChannelAck,
    ChannelClose,
    ChannelRelease,
    ChannelClosed,
    ChannelError,
)
FUNDING_REFUSALS = frozenset({"funding", "not-open", "unknown-channel"})
"""A payee's answers to `ChannelFunded` that no resend can change: the funding is not
acceptable in its chain view, or it holds the channel no longer (failed, forgotten,
released: `agents.channel_base`).
(A chain that did not answer it is ``chain-unavailable``: the funding is offered again.)"""
REFUSAL_CHARS = 240
"""How much of a payee's refusal a payer keeps (the peer's text, stored and shown)."""


class ChannelManager(ChannelSettlement):
    """Every channel of one agent, both roles: opening, paying, the channel frames and
    resuming after a restart here; closing in `ChannelSettlement`, shared state and
    plumbing in `ChannelBase`."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the committer, reload stored channels, then watch expiry, forget
        expired proposals and compact settled channels."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commits.run)
            await self._reload()
            nursery.start_soon(self._watcher)
            nursery.start_soon(self._forget_proposals)
            nursery.start_soon(self._compact_settled)
            task_status.started()

    async def _reload(self) -> None:
        # A payer killed while opening -- after reserving the funding's coins, before
        # storing the channel or while failing it -- left coins reserved that nothing
        # else would release. A failed channel's funding never went out.
        for reservation in await self._thread(self.wallet.reservations):
            if not is_txid(reservation):  # not a channel's id
                continue
            state = await self._thread(self._channels.state_of, bytes.fromhex(reservation))
            if state is None or state is State.FAILED:
                freed = await self._write(self.wallet.release, reservation)
                log.info("released %d coins an unfinished open had reserved", freed)
        # Settled channels stay in the store and are not loaded into memory.
        stored = await self._thread(self._channels.load)
        now = trio.current_time()
        for item in stored:
            record = item.record
            cid = record.terms.channel_id
            peer = parse_peer_id(record.peer_id)
            try:
                keys = keys_for(self.identity, peer, record.terms, record.role)
            except ChannelKeyError:
                log.exception("not reloading channel %s", cid.hex()[:16])
                continue
            end: Payer | Payee = (
                Payer(record, keys.own) if record.role is Role.PAYER else Payee(record, keys.own)
            )
            self._ends[cid] = end
            if record.state is State.OPEN and isinstance(end, Payer):
                self._unconfirmed.add(cid)
            if isinstance(end, Payee) and record.state in UNFUNDED:
                self.admission.add(record.peer_id, cid, now)  # a fresh lifetime
            self._service[cid] = item.service
            if item.funding_raw is not None:
                self._funding[cid] = item.funding_raw
            log.info(
                "reloaded %s channel %s in state %s",
                record.role.value,
                cid.hex()[:16],
                record.state.value,
            )
            if record.state is State.REFUND_SIGNED and isinstance(end, Payer):
                if cid in self._funding:
                    await self._broadcast_funding(end)  # idempotent if it went out
                else:  # crashed before recording the funding: it never went out
                    end.event("fail")
                    await self._commits.flush(cid)
                    await self._write(self.wallet.release, cid.hex())
            if record.state is State.CLOSING and isinstance(end, Payee):
                raw = item.close_raw
                if raw is None:  # crashed after recording CLOSING, before the close tx
                    raw = end.closing_tx()
                    await self._write(functools.partial(self._channels.save_raw, cid, close=raw))
                await self._finish_close(end, raw)

    # ------------------------------------------------------------------ payer side

    async def open(self, peer_id: str, service: str, capacity: int, lifetime_blocks: int) -> bytes:
        """Open a funded channel to `peer_id`; returns its id once the payee says open."""
        if not self.health.healthy:
            raise ChannelFailure(f"storage fault: {self.health.reason()}")
        foreign = await self._foreign(peer_id)
        if foreign is not None:
            raise ChannelFailure(f"not opening a channel to {peer_id[:16]}…: {foreign[1]}")
        channel_id = secrets.token_bytes(32)
        with log_context(peer=peer_id, channel=channel_id.hex(), service=service):
            expiry = await self.chain.height() + lifetime_blocks
            payer_payout = await self._write(self._new_payout)
            c = self.config
            binding = terms_binding(capacity, c.close_fee, c.refund_fee, expiry, payer_payout)
            keys = derive_channel_keys(
                self.identity, parse_peer_id(peer_id), channel_id, Role.PAYER, binding
            )
            funding_script = multisig_script(keys.payer_key, keys.payee_key)
            try:
                draft = await self._thread(
                    lambda: self.wallet.fund(
                        [(funding_script, capacity)], reservation=channel_id.hex()
                    )
                )
            except STORAGE_ERRORS as exc:
                self.health.fault("channel-records", exc)
                raise ChannelFailure(f"storage fault: {describe(exc)}") from None
            replies_send, replies = trio.open_memory_channel[Frame](4)
            self._replies[channel_id] = replies_send
            try:
                await self._send(
                    peer_id,
                    ChannelOpen(
                        channel_id,
                        service,
                        capacity,
                        self.config.close_fee,
                        self.config.refund_fee,
                        expiry,
                        draft.txid,
                        0,
                        payer_payout,
                    ),
                )
                with trio.fail_after(self.config.open_timeout):
                    reply = await replies.receive()
                    if not isinstance(reply, ChannelRefundSigned):
                        raise ChannelFailure(f"payee refused the channel: {_describe(reply)}")
                    terms = Terms(
                        channel_id,
                        keys.payer_key,
                        keys.payee_key,
                        capacity,
                        self.config.close_fee,
                        self.config.refund_fee,
                        expiry,
                        draft.txid,
                        0,
                        payer_payout,
                        reply.payee_payout,
                    )
                    payer = Payer(Record(Role.PAYER, State.PROPOSED, terms, peer_id), keys.own)
                    payer.accept_refund_signature(reply.signature)
                    # Record the refund and the signed funding before it can reach the chain.
                    self._ends[channel_id] = payer
                    self._service[channel_id] = service
                    self._funding[channel_id] = draft.raw
                    await self._commits.flush(channel_id)
                    await self._write(
                        lambda: self._channels.save_raw(channel_id, funding=draft.raw)
                    )
                    await self._broadcast_funding(payer)
                    ack = await replies.receive()
                    if isinstance(ack, ChannelError) and await self._funding_refused(payer, ack):
                        raise FundingRefused(f"payee refused the funding: {_describe(ack)}")
                    if not (isinstance(ack, ChannelAck) and ack.seq == 0):
                        raise ChannelFailure(f"payee did not open the channel: {_describe(ack)}")
                    payer.event("opened")
                    await self._commits.flush(channel_id)
            except (trio.TooSlowError, ChannelFailure, PaymentRejected, ChainError) as exc:
                await self._abandon_open(channel_id, draft.txid)
                failure = FundingRefused if isinstance(exc, FundingRefused) else ChannelFailure
                raise failure(f"opening a channel to {peer_id[:16]}…: {exc}") from None
            finally:
                del self._replies[channel_id]
            log.info(
                "channel %s to %s open: %d sat until height %d",
                channel_id.hex()[:16],
                peer_id[:16],
                capacity,
                expiry,
            )
            return channel_id

    async def _abandon_open(self, channel_id: bytes, funding_txid: str) -> None:
        end = self._ends.get(channel_id)
        if end is not None and end.state is not State.PROPOSED:
            if end.state is State.REFUND_SIGNED:
                end.event("fail")
                await self._commits.flush(channel_id)
                await self._write(self.wallet.abandon, funding_txid)
            return  # funded: the refund (or a later close) settles it
        self._release(channel_id)
        await self._write(self.wallet.release, channel_id.hex())

    async def _broadcast_funding(self, payer: Payer) -> None:
        cid = payer.terms.channel_id
        raw = self._funding[cid]
        await self.chain.broadcast(parse_exact(raw))
        await self._write(self.wallet.mark_broadcast, payer.terms.funding_txid)
        payer.event("funding-accepted")
        await self._commits.flush(cid)
        await self._send(payer.record().peer_id, ChannelFunded(cid, raw))

    async def _funding_refused(self, payer: Payer, error: ChannelError) -> bool:
        """Whether `error` is the payee's refusal of our funding (a funded channel is
        offered nothing else); if so the channel is recorded ``refused``, and neither
        resent (`peer_connected`) nor paid on: the refund at the expiry settles it."""
        if payer.state is not State.FUNDED or error.code not in FUNDING_REFUSALS:
            return False
        payer.refuse_funding(f"{error.code}: {error.reason}"[:REFUSAL_CHARS])
        await self._commits.flush(payer.terms.channel_id)
        log.warning(
            "channel %s: the payee refused the funding (%s: %s); refund at height %d",
            payer.terms.channel_id.hex()[:16],
            error.code,
            error.reason,
            payer.terms.expiry_height,
        )
        return True

    async def pay(self, channel_id: bytes, amount: int) -> Record:
        """Sign and send a payment of `amount` more; waits while the window is full.

        Returns the signed record; the frame goes out once it is persisted. Every call
        is a cancel point; it yields to other tasks once per batch it sends (or while
        it waits), not per payment: a scheduler pass (~9 us on a slow machine) is a
        large part of the ~60 us of Python around each payment's signature.
        """
        payer = self._end(channel_id)
        if not isinstance(payer, Payer):
            raise ChannelFailure("only the payer pays on a channel")
        waited = False
        while channel_id in self._unconfirmed or _window_full(payer.record(), self.config.window):
            await self._ack_event(channel_id).wait()  # the committer sends the rest
            waited = True
        record = payer.pay(amount)
        self._counts["payments_signed"] += 1
        self._counts["sat_paid"] += amount
        self._commits.send_after_commit(record.peer_id, latest_payment(record))
        if record.seq - record.acked_seq == 1 or self._commits.waiting() >= self._pay_batch:
            # A lone payment, or a batch's worth signed: persist and send from here,
            # sparing them the hand-off to the committer, then let the acks in.
            self._commits.mark(channel_id, wake=False)
            if not await self._commits.commit_inline():
                self._commits.wake()
            elif _window_full(payer.record(), self.config.window):
                # Sent, and the next payment must wait for an ack: sign it meanwhile.
                payer.presign(amount)
            if not waited:
                await trio.lowlevel.checkpoint()
        else:
            # The committer sends this with the rest of its batch once we yield: at the
            # next full batch, or when the window is full, or the caller waits.
            self._commits.mark(channel_id)
            if not waited:
                await trio.lowlevel.checkpoint_if_cancelled()
        return record

    async def wait_acked(self, channel_id: bytes, seq: int | None = None) -> Record:
        """Wait until the payee acknowledged `seq` (default: everything signed)."""
        payer = self._end(channel_id)
        target = payer.record().seq if seq is None else seq
        while payer.record().acked_seq < target:
            if payer.state in (State.CLOSED, State.REFUNDED, State.FAILED, State.REFUSED):
                raise ChannelFailure(f"channel is {payer.state.value}")
            await self._ack_event(channel_id).wait()
        return payer.record()

    # ------------------------------------------------------------------ frames

    async def handle(self, peer_id: str, frame: Frame, last: bool = True) -> bool:
        """Handle a channel frame from `peer_id`; False when it is not one.

        `last`: no frame waits behind this one (the node's end-of-burst signal,
        `mesh.net.inbox.Handler`); payments commit there, in the task at hand. A
        caller that cannot tell leaves it True: each payment commits as it comes."""
        if not isinstance(frame, CHANNEL_FRAMES):
            return False
        with log_context(peer=peer_id, channel=frame.channel_id):
            reply_to = self._replies.get(frame.channel_id)
            if reply_to is not None and isinstance(frame, ChannelRefundSigned | ChannelError):
                reply_to.send_nowait(frame)
                return True
            if isinstance(frame, ChannelPays):
                await self._on_pays(peer_id, frame, last)
            elif isinstance(frame, ChannelPay):
                one = ChannelPays(frame.channel_id, frame.seq, (frame.total,), (frame.signature,))
                await self._on_pays(peer_id, one, last)
            elif isinstance(frame, ChannelAck):
                self._on_ack(peer_id, frame)
            elif isinstance(frame, ChannelOpen):
                await self._on_open(peer_id, frame)
            elif isinstance(frame, ChannelFunded):
                await self._on_funded(peer_id, frame)
            elif isinstance(frame, ChannelClose | ChannelRelease):
                await self._on_close_request(peer_id, frame)
            elif isinstance(frame, ChannelClosed):
                await self._on_closed(peer_id, frame)
            elif isinstance(frame, ChannelError):
                log.warning(
                    "peer %s: channel %s error %s: %s",
                    peer_id[:16],
                    frame.channel_id.hex()[:16],
                    frame.code,
                    frame.reason,
                )
                payer = self._owned(peer_id, frame.channel_id)
                if isinstance(payer, Payer):  # (a resent funding's refusal: no open waits)
                    await self._funding_refused(payer, frame)
            return True

    async def _on_open(self, peer_id: str, frame: ChannelOpen) -> None:
        cid = frame.channel_id
        if not self.health.healthy:  # no new business; not the peer's fault
            reason = f"storage fault here: {self.health.reason()}"
            await self._reject(peer_id, cid, "storage", reason, strike=False)
            return
        # A peer of another network (its chain cannot see our coins, nor ours its
        # coins) never reaches a channel, even if a session exists.
        problem = await self._foreign(peer_id)
        # Terms no transaction can carry first (each named), then the bounds, then what
        # costs a lookup: the height, the ids in use, the store.
        if problem is None:
            problem = offer_problem(self.config, frame)
        if problem is None:
            problem = self.admission.check(peer_id, trio.current_time())
        if problem is None:
            problem = expiry_problem(self.config, frame, await self.chain.height())
        if problem is None:
            problem = await self._reused(cid, frame.funding_txid, frame.funding_vout)
        if problem is not None:
            await self._reject(peer_id, cid, *problem)
            return
        binding = terms_binding(
            frame.capacity,
            frame.close_fee,
            frame.refund_fee,
            frame.expiry_height,
            frame.payer_payout,
        )
        keys = derive_channel_keys(self.identity, parse_peer_id(peer_id), cid, Role.PAYEE, binding)
        payee_payout = self._payee_payout(cid)
        terms = Terms(
            cid,
            keys.payer_key,
            keys.payee_key,
            frame.capacity,
            frame.close_fee,
            frame.refund_fee,
            frame.expiry_height,
            frame.funding_txid,
            frame.funding_vout,
            frame.payer_payout,
            payee_payout,
        )
        payee = Payee(Record(Role.PAYEE, State.PROPOSED, terms, peer_id), keys.own)
        _, signature = payee.sign_refund()
        self._ends[cid] = payee
        self._service[cid] = frame.service
        self.admission.add(peer_id, cid, trio.current_time())
        await self._commits.flush(cid)
        await self._send(peer_id, ChannelRefundSigned(cid, signature, payee_payout))

    async def _on_funded(self, peer_id: str, frame: ChannelFunded) -> None:
        cid = frame.channel_id
        payee = self._owned(peer_id, cid)
        if not isinstance(payee, Payee):
            await self._reject(peer_id, cid, "unknown-channel", "no such channel")
            return
        if payee.state is State.OPEN:
            await self._send(peer_id, ChannelAck(cid, 0, 0, b""))  # a resend
            return
        if payee.state is not State.REFUND_SIGNED:
            await self._reject(peer_id, cid, "not-open", f"channel is {payee.state.value}")
            return
        terms = payee.terms
        try:
            tx = parse_exact(frame.funding_tx)
            if txid_of(frame.funding_tx) != terms.funding_txid:
                raise TxRejected("funding", "txid differs from the agreed outpoint")
            out = tx.outputs[terms.funding_vout]
            if out.satoshis != terms.capacity or out.locking_script.serialize() != (
                terms.funding_script
            ):
                raise TxRejected("funding", "output does not pay the capacity to the 2-of-2")
            await self.chain.broadcast(tx)  # idempotent: the chain holds it after this
            # What we serve against is the output in our own chain view, not the tx:
            # a funding the payer already spent (say, by the refund) is worth nothing.
            problem = funding_problem(await self.chain.output(*funding_outpoint(terms)), terms)
            if problem is not None:
                raise TxRejected("funding-spent", problem)
        except ChainUnavailable as exc:  # no verdict on the funding: not a refusal
            await self._reject(peer_id, cid, "chain-unavailable", str(exc), strike=False)
            return
        except (TxRejected, IndexError, ChainError) as exc:
            if isinstance(exc, TxRejected) and exc.rule == "funding-spent":
                payee.event("fail")  # the outpoint can never be served: final, kept
                self.admission.settled(cid)
                await self._commits.flush(cid)
            await self._reject(peer_id, cid, "funding", str(exc))
            return
        payee.event("funding-accepted")
        self.admission.settled(cid)
        await self._commits.flush(cid)
        await self._send(peer_id, ChannelAck(cid, 0, 0, b""))

    async def _on_pays(self, peer_id: str, frame: ChannelPays, last: bool) -> None:
        """One payment or a run of them (`ChannelPay` comes here as a run of one)."""
        cid = frame.channel_id
        payee = self._owned(peer_id, cid)
        if not isinstance(payee, Payee):
            await self._reject(peer_id, cid, "unknown-channel", "no such channel")
            return
        before = payee.record().total
        fresh, rejection = payee.accept_payments(frame.seq, frame.totals, frame.signatures)
        self._counts["payments_accepted"] += fresh
        self._counts["sat_earned"] += payee.record().total - before
        if fresh or rejection is None:
            if not fresh:  # a resend after a reconnect: acknowledge it again once durable
                self._commits.reack([cid])
            if last:
                # The last payment of the burst the node delivered: a natural group
                # commit. Persist and acknowledge here, without waking the committer.
                self._commits.mark(cid, wake=False)
                if not await self._commits.commit_inline():
                    self._commits.wake()
            else:
                self._commits.mark(cid)
        if rejection is not None:
            await self._reject(peer_id, cid, rejection.code, rejection.reason)

    def _on_ack(self, peer_id: str, frame: ChannelAck) -> None:
        payer = self._owned(peer_id, frame.channel_id)
        if not isinstance(payer, Payer):
            return
        if frame.channel_id in self._unconfirmed and frame.seq == 0:
            # After our restart: the payee holds no payment; pay from the state we hold.
            self._confirmed(peer_id, payer)
            self._notify_ack(frame.channel_id)
            return
        if frame.seq == 0:
            reply_to = self._replies.get(frame.channel_id)
            if reply_to is not None:
                reply_to.send_nowait(frame)
            elif payer.state is State.FUNDED:  # restarted after funding: open it now
                payer.event("opened")
                self._commits.mark(frame.channel_id)
                self._notify_ack(frame.channel_id)
            return
        before = payer.record().seq
        try:
            record = payer.accept_ack(frame.seq, frame.total, frame.signature)
        except PaymentRejected as exc:
            log.warning("peer %s: %s", peer_id[:16], exc)
            return
        if record.seq != before:  # our latest writes were lost: persist what we took back
            log.warning(
                "channel %s: took back seq %d (total %d) from the payee's ack",
                frame.channel_id.hex()[:16],
                record.seq,
                record.total,
            )
            self._commits.mark(frame.channel_id)
        # Not persisted at once: the ack is the payee's promise, ours to remember lazily.
        self._counts["acks_received"] += 1
        if frame.channel_id in self._unconfirmed:  # (an ack refused above leaves it shut)
            self._confirmed(peer_id, payer)
        self._notify_ack(frame.channel_id)
        if self.on_acked is not None:  # in our numbering (a taken-back state's differs)
            self.on_acked(frame.channel_id, record.acked_seq)

    # ------------------------------------------------------------------ resume

    def _confirmed(self, peer_id: str, payer: Payer) -> None:
        """The payee's first good ack since our restart: pay on from the state we now
        hold, resending its payment if the payee has not acknowledged it (the caller
        wakes the payments waiting)."""
        cid = payer.terms.channel_id
        self._unconfirmed.discard(cid)
        record = payer.record()
        if record.seq > record.acked_seq:
            self._commits.send_after_commit(peer_id, latest_payment(record))
            self._commits.mark(cid)

    async def peer_connected(self, peer_id: str) -> None:
        """A (new) session with `peer_id`: resend what may have been lost."""
        for cid, end in list(self._ends.items()):
            record = end.record()
            if record.peer_id != peer_id:
                continue
            if isinstance(end, Payer):
                if record.state is State.FUNDED and cid in self._funding:
                    await self._send(peer_id, ChannelFunded(cid, self._funding[cid]))
                elif cid in self._unconfirmed:
                    pass  # the payee's ack first: it may hold a later state (see _confirmed)
                elif record.state in (State.OPEN, State.CLOSING) and record.seq > record.acked_seq:
                    await self._send(peer_id, latest_payment(record))
                if record.state is State.CLOSING:  # the request may have been lost
                    await self._send(peer_id, close_request(end))
            elif record.state in (State.OPEN, State.CLOSING) and record.seq:
                self._commits.reack([cid])  # acked once it is surely durable
                self._commits.mark(cid)
            elif record.state is State.OPEN:  # nothing paid yet: say so (a restarted
                await self._send(peer_id, ChannelAck(cid, 0, 0, b""))  # payer waits for it)
            elif record.state is State.CLOSED and record.close_txid:
                # Closed while the payer was away (watcher, restart): it may not know.
                await self._send(peer_id, ChannelClosed(cid, record.close_txid, record.total))


def _window_full(record: Record, window: int) -> bool:
    return record.seq - record.acked_seq >= window


def _describe(frame: Frame) -> str:
    if isinstance(frame, ChannelError):
        return f"{frame.code}: {frame.reason}"
    return type(frame).__name__


__all__ = [
    "AckedCallback",
    "ChannelConfig",
    "ChannelFailure",
    "ChannelManager",
    "ChannelStateError",
    "ChannelStatistics",
    "FundingRefused",
    "PaidCallback",
]
