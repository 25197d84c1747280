"""The channel manager: drives payer and payee channel cores over sessions and a chain.

This is the shell around `mesh.channel`: it opens channels on demand, funds them from
the wallet, moves channel frames over the node's sessions, persists every state before
it sends or acknowledges it, broadcasts funding, closes and refunds, watches expiry,
and reloads everything after a restart.

Durability (DESIGN §7), by group commit (`agents.group_commit`): state changes mark
their channel dirty; the payer's `ChannelPay` frames wait for the commit that makes
their state durable, and the payee's cumulative `ChannelAck`s (and payment callbacks)
are issued only for what a commit wrote. Where a batch is known to be complete -- a
payment with nothing else in flight, the last payment of a burst the node delivered --
the task at hand commits inline. Anything irreversible -- a funding or close
transaction -- is recorded before it is broadcast and its outcome after.

A payee answers bad input with a `ChannelError` naming the rule and no state change;
a peer that keeps doing it loses its session.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from agents.group_commit import GroupCommit
from mesh.chain.base import Chain, Utxo
from mesh.chain.errors import ChainError, TxRejected
from mesh.chain.tx import p2pkh_script, parse_exact, txid_of
from mesh.chain.wallet import Wallet
from mesh.channel.keys import derive_channel_keys
from mesh.channel.pays import fold_payments
from mesh.channel.state import (
    FINAL_STATES,
    ChannelStateError,
    Payee,
    Payer,
    PaymentRejected,
    Record,
    Role,
    State,
)
from mesh.channel.store import ChannelStore
from mesh.channel.txs import Terms, is_p2pkh, multisig_script
from mesh.errors import MeshError
from mesh.identity import Identity, parse_peer_id
from mesh.transport import Node, SessionClosed
from mesh.wire import (
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
    Frame,
)

log = logging.getLogger("agents.channels")
T = TypeVar("T")
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
MAX_LOCKTIME_HEIGHT = 500_000_000
"""nLockTime values from here on are times, not heights: no refund can expire there."""
PaidCallback = Callable[[bytes, str, str, int], None]
"""on_paid(channel_id, peer_id, service, total): a payee's durable new total."""
AckedCallback = Callable[[bytes, int], None]
"""on_acked(channel_id, seq): the payer received the payee's ack up to `seq`."""


@dataclass(frozen=True)
class ChannelStatistics:
    """Counters of a channel manager (a snapshot)."""

    channels: int
    commits: int
    records_committed: int
    commit_seconds: float
    payments_signed: int
    payments_accepted: int
    acks_sent: int
    acks_received: int
    rejections: int


class ChannelFailure(MeshError):
    """A channel could not be opened, paid on or closed; the message says why."""


@dataclass(frozen=True)
class ChannelConfig:
    """Channel policy: windows, fees, lifetimes, limits."""

    window: int = 64
    close_fee: int = 10
    refund_fee: int = 10
    min_close_fee: int = 1
    max_fee: int = 10_000
    min_lifetime_blocks: int = 6
    close_margin_blocks: int = 2
    max_capacity: int = 100_000_000
    open_timeout: float = 15.0
    watch_interval: float = 1.0
    max_violations: int = 3
    commit_gather: int = 16


class ChannelManager:
    """Every channel of one agent, both roles."""

    def __init__(
        self,
        identity: Identity,
        node: Node,
        chain: Chain,
        wallet: Wallet,
        channels: ChannelStore,
        db_limiter: trio.CapacityLimiter,
        config: ChannelConfig | None = None,
        on_paid: PaidCallback | None = None,
    ) -> None:
        """`db_limiter` serialises every use of the SQLite connection shared by the
        wallet and the channel store (it has capacity 1)."""
        self.identity = identity
        self.node = node
        self.chain = chain
        self.wallet = wallet
        self.config = config or ChannelConfig()
        self.on_paid = on_paid
        self.on_acked: AckedCallback | None = None
        self._channels = channels
        self._db = db_limiter
        self._ends: dict[bytes, Payer | Payee] = {}
        self._service: dict[bytes, str] = {}
        self._funding: dict[bytes, bytes] = {}
        self._commits = GroupCommit(
            self._current,
            channels.save,
            self._acknowledge,
            self._send_many,
            db_limiter,
            gather=self.config.commit_gather,
        )
        # A payer sends half a window at a time (at most 64): the payee verifies one
        # batch while the next is signed, and a batch costs one commit, one packet
        # and one scheduler pass instead of one per payment. (A quarter window was
        # ~7 % slower at windows 16 and 64: more packets, commits and acks per payment.)
        self._pay_batch = max(1, min(self.config.window // 2, 64))
        self._acked: dict[bytes, trio.Event] = {}
        self._replies: dict[bytes, trio.MemorySendChannel[Frame]] = {}
        self._violations: dict[str, int] = {}
        self._counts = dict.fromkeys(
            ("payments_signed", "payments_accepted", "acks_received", "rejections"), 0
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the committer, reload stored channels, then watch expiry."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commits.run)
            await self._reload()
            nursery.start_soon(self._watcher)
            task_status.started()

    async def _reload(self) -> None:
        stored = await self._thread(functools.partial(self._channels.load, include_final=True))
        # A payer killed while opening -- after reserving the funding's coins, before
        # storing the channel or while failing it -- left coins reserved that nothing
        # else would release. A failed channel's funding never went out.
        live = {
            item.record.terms.channel_id.hex()
            for item in stored
            if item.record.state is not State.FAILED
        }
        for reservation in await self._thread(self.wallet.reservations):
            if _is_txid(reservation) and reservation not in live:  # a channel's id
                freed = await self._thread(self.wallet.release, reservation)
                log.info("released %d coins an unfinished open had reserved", freed)
        stored = [item for item in stored if item.record.state not in FINAL_STATES]
        for item in stored:
            record = item.record
            keys = derive_channel_keys(
                self.identity,
                parse_peer_id(record.peer_id),
                record.terms.channel_id,
                record.role,
            )
            end: Payer | Payee = (
                Payer(record, keys.own) if record.role is Role.PAYER else Payee(record, keys.own)
            )
            cid = record.terms.channel_id
            self._ends[cid] = end
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
                    await self._thread(self.wallet.release, cid.hex())
            if record.state is State.CLOSING and isinstance(end, Payee):
                raw = item.close_raw
                if raw is None:  # crashed after recording CLOSING, before the close tx
                    raw = end.closing_tx()
                    await self._thread(functools.partial(self._channels.save_raw, cid, close=raw))
                await self._finish_close(end, raw)

    # ------------------------------------------------------------------ queries

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the manager's counters."""
        commits = self._commits.counters
        return ChannelStatistics(
            channels=len(self._ends),
            commits=commits.commits,
            records_committed=commits.records_committed,
            commit_seconds=commits.commit_seconds,
            acks_sent=commits.acks_sent,
            **self._counts,
        )

    def records(self) -> list[tuple[Record, str]]:
        """Every channel this manager holds, with its service."""
        return [(end.record(), self._service[cid]) for cid, end in self._ends.items()]

    def record(self, channel_id: bytes) -> Record:
        """One channel's current record."""
        return self._end(channel_id).record()

    def _end(self, channel_id: bytes) -> Payer | Payee:
        end = self._ends.get(channel_id)
        if end is None:
            raise ChannelFailure(f"no channel {channel_id.hex()}")
        return end

    # ------------------------------------------------------------------ payer side

    async def open(self, peer_id: str, service: str, capacity: int, lifetime_blocks: int) -> bytes:
        """Open a funded channel to `peer_id`; returns its id once the payee says open."""
        channel_id = secrets.token_bytes(32)
        keys = derive_channel_keys(self.identity, parse_peer_id(peer_id), channel_id, Role.PAYER)
        expiry = await self.chain.height() + lifetime_blocks
        payer_payout = await self._thread(self._new_payout)
        funding_script = multisig_script(keys.payer_key, keys.payee_key)
        draft = await self._thread(
            lambda: self.wallet.fund([(funding_script, capacity)], reservation=channel_id.hex())
        )
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
                await self._thread(lambda: self._channels.save_raw(channel_id, funding=draft.raw))
                await self._broadcast_funding(payer)
                ack = await replies.receive()
                if not (isinstance(ack, ChannelAck) and ack.seq == 0):
                    raise ChannelFailure(f"payee did not open the channel: {_describe(ack)}")
                payer.event("opened")
                await self._commits.flush(channel_id)
        except (trio.TooSlowError, ChannelFailure, PaymentRejected, ChainError) as exc:
            await self._abandon_open(channel_id, draft.txid)
            raise ChannelFailure(f"opening a channel to {peer_id[:16]}…: {exc}") from None
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
                await self._thread(self.wallet.abandon, funding_txid)
            return  # funded: the refund (or a later close) settles it
        self._ends.pop(channel_id, None)
        await self._thread(self.wallet.release, channel_id.hex())

    async def _broadcast_funding(self, payer: Payer) -> None:
        cid = payer.terms.channel_id
        raw = self._funding[cid]
        await self.chain.broadcast(parse_exact(raw))
        await self._thread(self.wallet.mark_broadcast, payer.terms.funding_txid)
        payer.event("funding-accepted")
        await self._commits.flush(cid)
        await self._send(payer.record().peer_id, ChannelFunded(cid, raw))

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
        while payer.record().seq - payer.record().acked_seq >= self.config.window:
            await self._ack_event(channel_id).wait()  # the committer sends the rest
            waited = True
        record = payer.pay(amount)
        self._counts["payments_signed"] += 1
        self._commits.send_after_commit(
            record.peer_id, ChannelPay(channel_id, record.seq, record.total, record.payer_sig)
        )
        if record.seq - record.acked_seq == 1 or self._commits.waiting() >= self._pay_batch:
            # A lone payment, or a batch's worth signed: persist and send from here,
            # sparing them the hand-off to the committer, then let the acks in.
            self._commits.mark(channel_id, wake=False)
            if not await self._commits.commit_inline():
                self._commits.wake()
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
            if payer.state in (State.CLOSED, State.REFUNDED, State.FAILED):
                raise ChannelFailure(f"channel is {payer.state.value}")
            await self._ack_event(channel_id).wait()
        return payer.record()

    def _ack_event(self, channel_id: bytes) -> trio.Event:
        event = self._acked.get(channel_id)
        if event is None:
            event = self._acked[channel_id] = trio.Event()
        return event

    def _notify_ack(self, channel_id: bytes) -> None:
        event = self._acked.pop(channel_id, None)
        if event is not None:
            event.set()

    async def close(self, channel_id: bytes) -> Record:
        """Close cooperatively: the payee co-signs the latest state and broadcasts it.

        A channel nothing was paid on is released instead (`ChannelRelease`): the payee
        co-signs our signature on the release, and the coins, less the close fee, come
        back at once rather than with the refund at the expiry.
        """
        end = self._end(channel_id)
        if isinstance(end, Payee):
            await self._close_as_payee(end)
            return end.record()
        if end.state in (State.OPEN, State.FUNDED):  # funded: the payee may hold it open
            end.event("close")
            await self._commits.flush(channel_id)
        await self._send(end.record().peer_id, _close_request(end))
        try:
            with trio.fail_after(self.config.open_timeout):
                while end.state is State.CLOSING:
                    await self._ack_event(channel_id).wait()
        except trio.TooSlowError:  # not TimeoutError: callers expect a ChannelFailure
            raise ChannelFailure(f"channel {channel_id.hex()[:16]} not closed in time") from None
        return end.record()

    # ------------------------------------------------------------------ frames

    async def handle(self, peer_id: str, frame: Frame) -> bool:
        """Handle a channel frame from `peer_id`; False when it is not one."""
        if not isinstance(frame, CHANNEL_FRAMES):
            return False
        reply_to = self._replies.get(frame.channel_id)
        if reply_to is not None and isinstance(frame, ChannelRefundSigned | ChannelError):
            reply_to.send_nowait(frame)
            return True
        if isinstance(frame, ChannelPays):
            await self._on_pays(peer_id, frame)
        elif isinstance(frame, ChannelPay):
            one = ChannelPays(frame.channel_id, frame.seq, (frame.total,), (frame.signature,))
            await self._on_pays(peer_id, one)
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
        return True

    def _owned(self, peer_id: str, channel_id: bytes) -> Payer | Payee | None:
        end = self._ends.get(channel_id)
        return end if end is not None and end.record().peer_id == peer_id else None

    async def _reject(self, peer_id: str, channel_id: bytes, code: str, reason: str) -> None:
        log.warning(
            "peer %s: channel %s rejected (%s): %s",
            peer_id[:16],
            channel_id.hex()[:16],
            code,
            reason,
        )
        self._counts["rejections"] += 1
        await self._send(peer_id, ChannelError(channel_id, code, reason))
        count = self._violations[peer_id] = self._violations.get(peer_id, 0) + 1
        if count >= self.config.max_violations:
            session = self.node.session(peer_id)
            if session is not None:
                await session.aclose("repeated channel violations")

    async def _on_open(self, peer_id: str, frame: ChannelOpen) -> None:
        cid = frame.channel_id
        problem = await self._check_open(frame)
        if cid in self._ends:
            problem = ("duplicate-channel", "channel id already in use")
        if problem is not None:
            await self._reject(peer_id, cid, *problem)
            return
        keys = derive_channel_keys(self.identity, parse_peer_id(peer_id), cid, Role.PAYEE)
        payee_payout = await self._thread(self._new_payout)
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
        await self._commits.flush(cid)
        await self._send(peer_id, ChannelRefundSigned(cid, signature, payee_payout))

    async def _check_open(self, frame: ChannelOpen) -> tuple[str, str] | None:
        c = self.config
        if len(frame.channel_id) != 32:
            return "bad-terms", "channel id must be 32 bytes"
        if not 0 < frame.capacity <= c.max_capacity:
            return "capacity", f"capacity must be 1..{c.max_capacity}"
        if not c.min_close_fee <= frame.close_fee <= c.max_fee:
            return "fee", f"close fee must be {c.min_close_fee}..{c.max_fee}"
        if not 0 <= frame.refund_fee <= c.max_fee or frame.close_fee >= frame.capacity:
            return "fee", "fees out of range"
        if frame.refund_fee >= frame.capacity:
            return "fee", "the refund fee must be below the capacity"
        if not is_p2pkh(frame.payer_payout) or not _is_txid(frame.funding_txid):
            return "bad-terms", "payout must be P2PKH and the funding txid 64 hex digits"
        if not 0 <= frame.funding_vout <= 0xFFFFFFFF:
            return "bad-terms", "funding vout must fit in 32 bits"
        height = await self.chain.height()
        if frame.expiry_height < height + c.min_lifetime_blocks:
            return "expiry", f"expiry {frame.expiry_height} is too soon (height {height})"
        if frame.expiry_height >= MAX_LOCKTIME_HEIGHT:
            return "expiry", f"expiry {frame.expiry_height} is not a block height"
        return None

    async def _on_funded(self, peer_id: str, frame: ChannelFunded) -> None:
        payee = self._owned(peer_id, frame.channel_id)
        if not isinstance(payee, Payee):
            await self._reject(peer_id, frame.channel_id, "unknown-channel", "no such channel")
            return
        if payee.state is State.OPEN:
            await self._send(peer_id, ChannelAck(frame.channel_id, 0, 0, b""))  # a resend
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
            await self.chain.broadcast(tx)  # idempotent; proves the chain accepted it
        except (TxRejected, IndexError, ChainError) as exc:
            await self._reject(peer_id, frame.channel_id, "funding", str(exc))
            return
        payee.event("funding-accepted")
        await self._commits.flush(frame.channel_id)
        await self._send(peer_id, ChannelAck(frame.channel_id, 0, 0, b""))

    async def _on_pays(self, peer_id: str, frame: ChannelPays) -> None:
        """One payment or a run of them (`ChannelPay` comes here as a run of one)."""
        cid = frame.channel_id
        payee = self._owned(peer_id, cid)
        if not isinstance(payee, Payee):
            await self._reject(peer_id, cid, "unknown-channel", "no such channel")
            return
        fresh, rejection = payee.accept_payments(frame.seq, frame.totals, frame.signatures)
        self._counts["payments_accepted"] += fresh
        if fresh or rejection is None:
            if not fresh:  # a resend after a reconnect: acknowledge it again once durable
                self._commits.reack([cid])
            if self.node.queued_frames() == 0:
                # The last payment of the burst the node delivered: a natural group
                # commit. Persist and acknowledge here, without waking the committer.
                self._commits.mark(cid, wake=False)
                if not await self._commits.commit_inline():
                    self._commits.wake()
            else:
                self._commits.mark(cid)
        if rejection is not None:
            await self._reject(peer_id, cid, rejection.code, rejection.reason)

    async def _on_close_request(self, peer_id: str, frame: ChannelClose | ChannelRelease) -> None:
        cid = frame.channel_id
        end = self._owned(peer_id, cid)
        if not isinstance(end, Payee):
            await self._closed_before(peer_id, cid)
        elif end.state is State.CLOSED:
            # Closed while the payer was away (watcher, restart): tell it again.
            record = end.record()
            await self._send(peer_id, ChannelClosed(cid, record.close_txid, record.total))
        elif isinstance(frame, ChannelClose):
            await self._close_as_payee(end)
        elif end.state is not State.CLOSING:  # (closing already: a resend)
            try:
                end.accept_release(frame.signature)
            except PaymentRejected as exc:
                await self._reject(peer_id, cid, exc.code, exc.reason)
                return
            await self._co_sign_and_broadcast(end)

    async def _closed_before(self, peer_id: str, channel_id: bytes) -> None:
        """A close request for a channel we do not hold: one we closed before this
        start (final channels are not reloaded) is answered from the store."""
        stored = await self._thread(self._channels.find, channel_id)
        if stored is None or stored.record.peer_id != peer_id:
            unknown = ChannelError(channel_id, "unknown-channel", "no such channel")
            await self._send(peer_id, unknown)
            return
        record = stored.record
        if record.role is Role.PAYEE and record.state is State.CLOSED:
            await self._send(peer_id, ChannelClosed(channel_id, record.close_txid, record.total))

    def _on_ack(self, peer_id: str, frame: ChannelAck) -> None:
        payer = self._owned(peer_id, frame.channel_id)
        if not isinstance(payer, Payer):
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
        self._notify_ack(frame.channel_id)
        if self.on_acked is not None:
            self.on_acked(frame.channel_id, frame.seq)

    async def _on_closed(self, peer_id: str, frame: ChannelClosed) -> None:
        payer = self._owned(peer_id, frame.channel_id)
        if not isinstance(payer, Payer) or payer.state not in (State.OPEN, State.CLOSING):
            return
        # A payee's word is not a close. Believe it only when the chain holds our part of
        # a close we signed: once marked closed we stop watching, and the refund at the
        # expiry is what protects our coins from a payee that never really closes. With
        # nothing left for us (rest 0) there is nothing to look up: the expiry settles it.
        # Our output is the second of a close, the only one of a release (total 0).
        record = payer.record()
        rest = payer.terms.max_total - frame.total
        vout = 1 if frame.total else 0
        if not (
            record.acked_total <= frame.total <= record.total
            and rest > 0
            and await self._holds(frame.close_txid, vout, rest, payer.terms.payer_payout)
        ):
            log.warning(
                "peer %s claims close %s of channel %s paying %d; the chain does not show it",
                peer_id[:16],
                frame.close_txid,
                frame.channel_id.hex()[:16],
                frame.total,
            )
            return
        payer.mark_closed(frame.close_txid)
        await self._commits.flush(frame.channel_id)
        coin = Utxo(frame.close_txid, vout, rest, payer.terms.payer_payout)
        await self._thread(self.wallet.add_utxos, [coin])
        self._notify_ack(frame.channel_id)

    # ------------------------------------------------------------------ closing

    async def _close_as_payee(self, payee: Payee) -> None:
        if payee.state is not State.OPEN:
            return
        if payee.record().total == 0:
            return  # nothing to claim: the payer releases it, or its refund settles it
        payee.event("close")
        await self._co_sign_and_broadcast(payee)

    async def _co_sign_and_broadcast(self, payee: Payee) -> None:
        """Persist the closing state, record the close tx, then broadcast it."""
        cid = payee.terms.channel_id
        raw = payee.closing_tx()
        await self._commits.flush(cid)
        await self._thread(lambda: self._channels.save_raw(cid, close=raw))
        await self._finish_close(payee, raw)

    async def _finish_close(self, end: Payer | Payee, raw: bytes) -> None:
        cid = end.terms.channel_id
        try:
            txid = await self.chain.broadcast(parse_exact(raw))
        except TxRejected as exc:
            if exc.rule in ("double-spend", "spent-input") and isinstance(end, Payee):
                # Besides our close, only the refund spends the funding: we were away
                # past the expiry and the payer took its coins back.
                end.mark_refunded("")
                await self._commits.flush(cid)
                self._notify_ack(cid)
                log.warning("channel %s was refunded before we closed it", cid.hex()[:16])
            else:  # stays CLOSING; tried again at the next start
                log.warning("close of channel %s not accepted: %s", cid.hex()[:16], exc)
            return
        end.mark_closed(txid)
        await self._commits.flush(cid)
        record = end.record()
        if isinstance(end, Payee):
            if record.total:  # a release pays us nothing
                coin = Utxo(txid, 0, record.total, end.terms.payee_payout)
                await self._thread(self.wallet.add_utxos, [coin])
            await self._send(record.peer_id, ChannelClosed(cid, txid, record.total))
        log.info("channel %s closed by %s: %d sat paid", cid.hex()[:16], txid[:16], record.total)

    async def _watcher(self) -> None:
        while True:
            await trio.sleep(self.config.watch_interval)
            await self.check_expiry(await self.chain.height())

    async def check_expiry(self, height: int) -> None:
        """Close (payee) or refund (payer) every channel whose expiry is near or past."""
        for end in list(self._ends.values()):
            expiry = end.terms.expiry_height
            if isinstance(end, Payee):
                if end.state is State.OPEN and height >= expiry - self.config.close_margin_blocks:
                    log.info("channel %s near expiry: closing", end.terms.channel_id.hex()[:16])
                    await self._close_as_payee(end)
            elif end.state in (State.FUNDED, State.OPEN, State.CLOSING) and height >= expiry:
                await self._refund(end)

    async def _refund(self, payer: Payer) -> None:
        cid = payer.terms.channel_id
        raw = payer.signed_refund()
        try:
            txid = await self.chain.broadcast(parse_exact(raw))
        except TxRejected as exc:
            if exc.rule in ("double-spend", "spent-input"):
                payer.mark_closed("")  # the payee closed it first
                await self._commits.flush(cid)
                self._notify_ack(cid)
            else:
                log.warning("refund of channel %s not accepted yet: %s", cid.hex()[:16], exc)
            return
        payer.mark_refunded(txid)
        await self._commits.flush(cid)
        coin = Utxo(
            txid, 0, payer.terms.capacity - payer.terms.refund_fee, payer.terms.payer_payout
        )
        await self._thread(self.wallet.add_utxos, [coin])
        self._notify_ack(cid)
        log.info("channel %s refunded by %s", cid.hex()[:16], txid[:16])

    # ------------------------------------------------------------------ resume

    async def peer_connected(self, peer_id: str) -> None:
        """A (new) session with `peer_id`: resend what may have been lost."""
        for cid, end in list(self._ends.items()):
            record = end.record()
            if record.peer_id != peer_id:
                continue
            if isinstance(end, Payer):
                if record.state is State.FUNDED and cid in self._funding:
                    await self._send(peer_id, ChannelFunded(cid, self._funding[cid]))
                elif record.state in (State.OPEN, State.CLOSING) and record.seq > record.acked_seq:
                    frame = ChannelPay(cid, record.seq, record.total, record.payer_sig)
                    await self._send(peer_id, frame)
                if record.state is State.CLOSING:  # the request may have been lost
                    await self._send(peer_id, _close_request(end))
            elif record.state in (State.OPEN, State.CLOSING) and record.seq:
                self._commits.reack([cid])  # acked once it is surely durable
                self._commits.mark(cid)

    # ------------------------------------------------------------------ persistence

    def _current(self, channel_id: bytes) -> tuple[Record, str]:
        return self._ends[channel_id].record(), self._service[channel_id]

    def _acknowledge(self, record: Record, service: str, reack: bool) -> Frame | None:
        """After a commit: the cumulative ack a payee's durable `record` allows (a
        resend after a reconnect, `reack`, is acknowledged again)."""
        if record.role is not Role.PAYEE or not (
            record.seq > record.acked_seq or (reack and record.seq > 0)
        ):
            return None
        cid = record.terms.channel_id
        payee = self._ends[cid]
        assert isinstance(payee, Payee)
        payee.acknowledged(record.seq, record.total)
        if self.on_paid is not None:
            self.on_paid(cid, record.peer_id, service, record.total)
        return ChannelAck(cid, record.seq, record.total, record.payer_sig)

    # ------------------------------------------------------------------ plumbing

    async def _holds(self, txid: str, vout: int, satoshis: int, script: bytes) -> bool:
        """Whether the chain shows the unspent output `txid:vout` of `satoshis` to `script`
        (one of our wallet's P2PKH scripts)."""
        addresses = await self._thread(self.wallet.addresses)
        for address in addresses:
            if p2pkh_script(address) == script:
                coins = await self.chain.utxos(address)
                return any((c.txid, c.vout, c.satoshis) == (txid, vout, satoshis) for c in coins)
        return False

    async def _send(self, peer_id: str, frame: Frame) -> None:
        session = self.node.session(peer_id)
        if session is None:
            return  # resent by peer_connected() when a session is back
        with contextlib.suppress(SessionClosed):
            await session.send(frame)

    async def _send_many(self, peer_id: str, frames: list[Frame]) -> None:
        """`_send` for a batch: one packet (one encryption pass, one nng message)."""
        session = self.node.session(peer_id)
        if session is None:
            return
        with contextlib.suppress(SessionClosed):
            await session.send_many(fold_payments(frames))

    def _new_payout(self) -> bytes:
        return p2pkh_script(self.wallet.new_address())

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db)


def _close_request(payer: Payer) -> Frame:
    """What a payer sends to close: a release when nothing was paid, else a close."""
    cid = payer.terms.channel_id
    if payer.record().seq == 0:
        return ChannelRelease(cid, payer.release_signature())
    return ChannelClose(cid)


def _is_txid(text: str) -> bool:
    try:
        return len(text) == 64 and len(bytes.fromhex(text)) == 32
    except ValueError:
        return False


def _describe(frame: Frame) -> str:
    if isinstance(frame, ChannelError):
        return f"{frame.code}: {frame.reason}"
    return type(frame).__name__


__all__ = ["ChannelConfig", "ChannelFailure", "ChannelManager", "ChannelStateError"]
