"""The channel manager: the one Trio shell around `mesh.channel.protocol`.

`ChannelProtocol` decides everything about every channel of this agent; this shell
gives it frames, `now` and chain facts, and executes the effects it returns, in order
(`agents.channels.effects`): writes through the group commit, sends over the node's
sessions, broadcasts and lookups on the chain, wallet bookings, wake-ups of the tasks
waiting on a channel. It also runs the channel tasks (the committer, the expiry watch,
the proposal timer, compaction) and the payer's conversations that wait for a peer:
`open` (the protocol's `Opening` says which answer comes next and what its deadline
and every failure mean; this task waits), `pay` (room in the window), `close`,
`wait_acked`.

Durability (docs/ARCHITECTURE.md §7): the protocol says persist before it says send;
the payer's payments leave and the payee's acks are made only after the commit that
wrote their state (`agents.channels.commits`). Anything irreversible --
a funding or close transaction -- is recorded before it is broadcast and its outcome
after.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import trio

from agents.channels.effects import (
    AdmitPolicy,
    ChannelCallback,
    ChannelEffects,
    CommitStopped,
    payout_label,
)
from agents.logs import log_context
from mesh.chain.base import Chain
from mesh.chain.errors import ChainError, ChainUnavailable
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.channel.config import (
    AckedCallback,
    ChannelConfig,
    ChannelFailure,
    ChannelStatistics,
    PaidCallback,
    is_txid,
)
from mesh.channel.effects import CommitNow, Effect, OpenEnded
from mesh.channel.fees import ChannelFees, offered_fees
from mesh.channel.protocol import CHANNEL_FRAMES, ChannelProtocol
from mesh.channel.settle import channel_summary
from mesh.channel.state import FINAL_STATES, PaymentRejected, Record, State
from mesh.channel.store import ChannelStore
from mesh.health import STORAGE_ERRORS, StorageHealth, describe
from mesh.identity import Identity
from mesh.net.node import Node
from mesh.wire import Frame

log = logging.getLogger("agents.channels")


class ChannelManager:
    """Every channel of one agent, both roles (see the module doc)."""

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
        *,
        health: StorageHealth | None = None,
    ) -> None:
        """`db_limiter` serialises every use of the SQLite connection shared by the
        wallet and the channel store (capacity 1); storage faults go to `health` (the
        agent's, shared by every store writer)."""
        self.identity = identity
        self.wallet = wallet
        self.config = config or ChannelConfig()
        self.health = health or StorageHealth()
        self.protocol = ChannelProtocol(identity, self.config, self._payee_payout)
        self.admission = self.protocol.admission
        self.effects = ChannelEffects(
            self.protocol, node, chain, wallet, channels, db_limiter, self.health
        )
        self.on_paid = on_paid
        self._channels = channels
        self._compacted = 0

    @property
    def chain(self) -> Chain:
        """The chain the channels settle on (the effects' own: tests wrap it)."""
        return self.effects.chain

    @chain.setter
    def chain(self, chain: Chain) -> None:
        self.effects.chain = chain

    @property
    def node(self) -> Node:
        """The node whose sessions carry the channel frames."""
        return self.effects.node

    # The application's callbacks are the effects' (they hear of them).
    @property
    def on_paid(self) -> PaidCallback | None:
        """on_paid(channel_id, peer_id, service, total): a payee's durable new total."""
        return self.effects.on_paid

    @on_paid.setter
    def on_paid(self, callback: PaidCallback | None) -> None:
        self.effects.on_paid = callback

    @property
    def admit(self) -> AdmitPolicy | None:
        """admit(peer_id, service): why a peer may not open a channel for a service
        now (code, reason), or None -- the application's policy (certificates)."""
        return self.effects.admit

    @admit.setter
    def admit(self, policy: AdmitPolicy | None) -> None:
        self.effects.admit = policy

    @property
    def on_acked(self) -> AckedCallback | None:
        """on_acked(channel_id, seq): the payee acknowledged our payments up to `seq`."""
        return self.effects.on_acked

    @on_acked.setter
    def on_acked(self, callback: AckedCallback | None) -> None:
        self.effects.on_acked = callback

    @property
    def on_ended(self) -> ChannelCallback | None:
        """on_ended(channel_id): a channel we are paid on ended early (its funding is
        gone): deliver nothing more against it."""
        return self.effects.on_ended

    @on_ended.setter
    def on_ended(self, callback: ChannelCallback | None) -> None:
        self.effects.on_ended = callback

    @property
    def on_final(self) -> ChannelCallback | None:
        """on_final(channel_id): the manager let go of a channel's state (final and
        past `keep_final`, or an unfunded proposal forgotten): let go of whatever else
        is kept per channel. Once per channel, never for one still held."""
        return self.effects.on_final

    @on_final.setter
    def on_final(self, callback: ChannelCallback | None) -> None:
        self.effects.on_final = callback

    # ---------------------------------------------------------------- queries

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the manager's counters."""
        commits = self.effects.commits.counters
        admission = self.admission.statistics(trio.current_time())
        counts = self.protocol.book.counts
        return ChannelStatistics(
            channels=len(self.protocol.book.ends),
            commits=commits.commits,
            records_committed=commits.records_committed,
            commit_seconds=commits.commit_seconds,
            acks_sent=commits.acks_sent,
            payments_signed=counts["payments_signed"],
            payments_accepted=counts["payments_accepted"],
            acks_received=counts["acks_received"],
            rejections=counts["rejections"],
            sat_paid=counts["sat_paid"],
            sat_earned=counts["sat_earned"],
            proposals_pending=admission.pending,
            proposals_refused=admission.refused,
            proposals_expired=admission.expired,
            peers_set_aside=admission.set_aside,
            fundings_lost=counts["fundings_lost"],
            channels_released=counts["channels_released"],
            channels_compacted=self._compacted,
        )

    def records(self) -> list[tuple[Record, str]]:
        """Every channel held (the `keep_final` most recent final ones among them),
        with its service."""
        return self.protocol.book.records()

    def held(self, channel_id: bytes) -> tuple[Record, str] | None:
        """A channel's record and service, if it is held (None: unknown, or released)."""
        book = self.protocol.book
        return book.current(channel_id) if channel_id in book.ends else None

    def record(self, channel_id: bytes) -> Record:
        """One channel's current record."""
        return self.protocol.book.end(channel_id).record()

    async def chain_height(self) -> int | None:
        """The chain's height, or None when it does not answer (for `summaries`)."""
        try:
            return await self.chain.height()
        except ChainUnavailable:
            return None

    def summaries(self, height: int | None) -> list[dict[str, Any]]:
        """Every channel held, as `channel_summary` shows it at `height`."""
        return [channel_summary(record, service, height) for record, service in self.records()]

    # ---------------------------------------------------------------- tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the committer, reload stored channels, then watch expiry, forget
        expired proposals and compact settled channels."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.effects.commits.run)
            await self._reload()
            nursery.start_soon(self._watch)
            nursery.start_soon(self._expire_proposals)
            nursery.start_soon(self._compact_settled)
            task_status.started()

    async def _reload(self) -> None:
        # A payer killed while opening -- after reserving the funding's coins, before
        # storing the channel or while failing it -- left coins reserved that nothing
        # else would release. A failed channel's funding never went out.
        for reservation in await self.effects.thread(self.wallet.reservations):
            if not is_txid(reservation):  # not a channel's id
                continue
            cid = bytes.fromhex(reservation)
            state = await self.effects.thread(self._channels.state_of, cid)
            if state is None or state is State.FAILED:
                freed = await self.effects.write(self.wallet.release, reservation)
                log.info("released %d coins an unfinished open had reserved", freed)
        # Settled channels stay in the store and are not loaded into memory.
        stored = await self.effects.thread(self._channels.load)
        for item in stored:
            effects = self.protocol.restore(
                item.record, item.service, item.funding_raw, item.close_raw, trio.current_time()
            )
            await self.effects.run(effects)

    async def _watch(self) -> None:
        """Check at once (a payee restarted inside its close margin closes now), then
        every `watch_interval`; a chain that does not answer is tried again."""
        while True:
            try:
                await self.check_expiry(await self.chain.height())
            except ChainUnavailable as exc:
                log.warning("expiry watch: the chain did not answer: %s", exc)
            except CommitStopped:
                return  # stopping
            await trio.sleep(self.config.watch_interval)

    async def check_expiry(self, height: int) -> None:
        """Close (payee) or refund (payer) every channel whose expiry is near or past;
        end a payee's channel whose funding output is gone."""
        await self.effects.run(self.protocol.settlement.watch(height, trio.current_time()))

    async def _expire_proposals(self) -> None:
        """Forget unfunded proposals whose lifetime is over (memory and store), each at
        most one lifetime late (one may arrive while nothing is pending)."""
        lifetime = self.admission.limits.lifetime
        while True:
            await trio.sleep_until(
                min(self.protocol.next_deadline(), trio.current_time() + lifetime)
            )
            await self.effects.run(self.protocol.handle_timer(trio.current_time()))

    async def _compact_settled(self) -> None:
        """At start, then every `compact_every` seconds: cut the channels final for
        longer than `keep_settled` to tombstones (a storage fault is retried)."""
        while True:
            before = time.time() - self.config.keep_settled
            compacted = await self.effects.write(self._channels.compact, before)
            self._compacted += compacted
            if compacted:
                log.info("compacted %d settled channel(s) to tombstones", compacted)
            await trio.sleep(self.config.compact_every)

    # ---------------------------------------------------------------- frames

    async def handle(self, peer_id: str, frame: Frame, last: bool = True) -> bool:
        """Handle a channel frame from `peer_id`; False when it is not one.

        `last`: no frame waits behind this one (the node's end-of-burst signal,
        `mesh.net.inbox.Handler`); payments commit there, in the task at hand. A
        caller that cannot tell leaves it True: each payment commits as it comes."""
        if not isinstance(frame, CHANNEL_FRAMES):
            return False
        now = trio.current_time()
        with log_context(peer=peer_id, channel=frame.channel_id):
            effects = self.protocol.receive(peer_id, frame, now, last)
            try:
                await self.effects.run(effects)
            except CommitStopped as exc:  # stopping: what needed the write is not done
                log.info("peer %s: %s not handled: %s", peer_id[:16], type(frame).__name__, exc)
        return True

    async def peer_connected(self, peer_id: str) -> None:
        """A (new) session with `peer_id`: resend what may have been lost."""
        await self.effects.run(self.protocol.peer_connected(peer_id))

    # ---------------------------------------------------------------- payer

    async def fees(self) -> ChannelFees:
        """The close and refund fees a channel opened now offers (the network's policy,
        with headroom: `mesh.channel.fees`); `ChannelFailure` when above our limit."""
        try:
            return offered_fees(self.config, await self.chain.policy())
        except ValueError as exc:
            raise ChannelFailure(str(exc)) from None

    async def open(self, peer_id: str, service: str, capacity: int, lifetime_blocks: int) -> bytes:
        """Open a funded channel to `peer_id`; returns its id once the payee says open."""
        opening = self.protocol.opening
        refusal = opening.refusal(peer_id, await self.effects.standing(peer_id))
        if refusal is not None:
            raise refusal
        channel_id = secrets.token_bytes(32)
        with log_context(peer=peer_id, channel=channel_id.hex(), service=service):
            expiry = await self.chain.height() + lifetime_blocks
            fees = await self.fees()
            unaffordable = opening.unaffordable(capacity, fees)
            if unaffordable is not None:
                raise unaffordable
            payout = await self.effects.write(lambda: p2pkh_script(self.wallet.new_address()))
            script, keys = opening.funding_script(
                peer_id, channel_id, capacity, fees, expiry, payout
            )
            try:
                draft = await self.effects.thread(
                    lambda: self.wallet.fund([(script, capacity)], reservation=channel_id.hex())
                )
            except STORAGE_ERRORS as exc:
                self.health.fault("channel-records", exc)
                raise ChannelFailure(f"storage fault: {describe(exc)}") from None
            offer = opening.propose(
                peer_id,
                channel_id,
                service,
                capacity,
                fees,
                expiry,
                payout,
                draft.txid,
                keys,
                funding_raw=draft.raw,
                now=trio.current_time(),
            )
            with self.effects.replies(channel_id) as replies:
                try:
                    ending = await self._converse(channel_id, offer, replies)
                    await self.effects.run(ending)
                finally:
                    opening.open_ended(channel_id)  # (a caller that gave up: cancelled)
            ended = ending[-1]
            assert isinstance(ended, OpenEnded)
            if ended.failure is not None:
                raise ended.failure
            log.info(
                "channel %s to %s open: %d sat until height %d",
                channel_id.hex()[:16],
                peer_id[:16],
                capacity,
                expiry,
            )
            return channel_id

    async def _converse(
        self,
        channel_id: bytes,
        effects: list[Effect],
        replies: trio.MemoryReceiveChannel[Frame],
    ) -> list[Effect]:
        """Do an open's effects and hand it the payee's replies until it ends; returns
        the effects that end it (`OpenEnded` last), not yet done. At the open's deadline
        whatever is in progress is cancelled and the protocol says what follows; so it
        does when our own I/O fails (a broadcast refused, a write stopped)."""
        opening = self.protocol.opening
        try:
            with trio.move_on_at(opening.deadline(channel_id)):
                while not (effects and isinstance(effects[-1], OpenEnded)):
                    await self.effects.run(effects)
                    effects = opening.answered(channel_id, await replies.receive())
                return effects
            return opening.timed_out(channel_id, trio.current_time())
        except (ChannelFailure, PaymentRejected, ChainError) as exc:
            return opening.failed(channel_id, str(exc))

    async def pay(self, channel_id: bytes, amount: int) -> Record:
        """Sign and send a payment of `amount` more; waits while the window is full.

        Returns the signed record; the frame goes out once it is persisted. Every call
        is a cancel point; it yields to other tasks once per batch it sends (or while
        it waits), not per payment: a scheduler pass (~9 us on a slow machine) is a
        large part of the ~60 us of Python around each payment's signature.
        """
        waited = False
        while not self.protocol.may_pay(channel_id):
            await self.effects.wait(channel_id)  # the committer sends the rest
            waited = True
        staged = self.effects.commits.waiting()
        record, effects = self.protocol.pay(channel_id, amount, staged)
        inline = False
        for effect in effects:
            if isinstance(effect, CommitNow):
                inline = await self.effects.commit_now(effect.channel_id)
            else:
                await self.effects.do(effect)
        if inline:
            # Sent; if the next payment must wait for an ack, sign it meanwhile.
            self.protocol.presign(channel_id, amount)
        if not waited:
            if inline:
                await trio.lowlevel.checkpoint()
            else:  # the committer sends it with the rest of its batch once we yield
                await trio.lowlevel.checkpoint_if_cancelled()
        return record

    async def wait_acked(self, channel_id: bytes, seq: int | None = None) -> Record:
        """Wait until the payee acknowledged `seq` (default: everything signed)."""
        end = self.protocol.book.end(channel_id)
        target = end.record().seq if seq is None else seq
        while end.record().acked_seq < target:
            if end.state in (State.CLOSED, State.REFUNDED, State.FAILED, State.REFUSED):
                raise ChannelFailure(f"channel is {end.state.value}")
            await self.effects.wait(channel_id)
        return end.record()

    async def close(self, channel_id: bytes) -> Record:
        """Close cooperatively: the payee co-signs the latest state and broadcasts it.

        A channel nothing was paid on is released instead (`ChannelRelease`): the coins,
        less the close fee, come back at once rather than with the refund at the
        expiry. A final channel no longer held in memory is answered from the store.
        """
        end = self.protocol.book.ends.get(channel_id)
        if end is None:
            stored = await self.effects.thread(self._channels.find, channel_id)
            if stored is None or stored.record.state not in FINAL_STATES:
                raise ChannelFailure(f"no channel {channel_id.hex()}")
            return stored.record
        with log_context(peer=end.record().peer_id, channel=channel_id.hex()):
            payer = end.record().role.value == "payer"
            await self.effects.run(self.protocol.close(channel_id))
            if payer:
                try:
                    with trio.fail_after(self.config.open_timeout):
                        while end.state is State.CLOSING:
                            await self.effects.wait(channel_id)
                except trio.TooSlowError:  # callers expect a ChannelFailure
                    raise ChannelFailure(
                        f"channel {channel_id.hex()[:16]} not closed in time"
                    ) from None
            return end.record()

    def _payee_payout(self, channel_id: bytes) -> bytes:
        """A payee's payout for the channel `channel_id`: derived, not stored -- an
        unfunded proposal costs no wallet key and no chain lookup."""
        return p2pkh_script(self.wallet.payout_address(payout_label(channel_id)))


__all__ = ["ChannelManager"]
