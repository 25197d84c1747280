"""What every part of the channel manager shares: its state and its plumbing.

`ChannelBase` holds the channel ends, the group commit and the counters, answers
queries, and sends, rejects and runs database work for the parts built on it:
`agents.settlement` (closing, releasing, refunds, the expiry watcher) and
`agents.channels` (opening, paying, the frames, resuming after a restart).

It also decides how long a channel's state stays in memory: an agent runs for months,
so nothing held per channel may grow with the channels it ever had. A channel's
state is released (`_release`, then `on_final`) once it is final and no longer among
the `keep_final` most recent final channels, or when it was an unfunded proposal
that expired; from then on the store answers for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

import trio

from agents.channel_config import (
    AckedCallback,
    ChannelConfig,
    ChannelFailure,
    ChannelStatistics,
    PaidCallback,
)
from agents.group_commit import GroupCommit
from mesh.chain.base import Chain, OutputState, OutputStatus
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.channel.admission import Admission
from mesh.channel.frames import ChannelAck, ChannelError
from mesh.channel.pays import fold_payments
from mesh.channel.state import FINAL_STATES, Payee, Payer, Record, Role, State
from mesh.channel.store import ChannelStore
from mesh.channel.txs import Terms
from mesh.health import StorageHealth
from mesh.identity import Identity
from mesh.net.node import Node, SessionClosed
from mesh.wire import Frame

log = logging.getLogger("agents.channels")
T = TypeVar("T")
UNFUNDED = frozenset({State.PROPOSED, State.REFUND_SIGNED})
"""A payee's proposals that no coin backs yet: bounded and expiring (`Admission`)."""


class ChannelBase:
    """The shared state and plumbing of a channel manager (see the module doc)."""

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
        wallet and the channel store (it has capacity 1); failed channel saves are
        reported to `health` (the agent's, shared by every store writer)."""
        self.identity = identity
        self.node = node
        self.chain = chain
        self.wallet = wallet
        self.config = config or ChannelConfig()
        self.on_paid = on_paid
        self.on_acked: AckedCallback | None = None
        self.health = health or StorageHealth()
        self.on_ended: Callable[[bytes], None] | None = None
        """on_ended(channel_id): a channel we are paid on ended early (its funding is
        gone): deliver nothing more against it."""
        self.on_final: Callable[[bytes], None] | None = None
        """on_final(channel_id): the manager let go of a channel's state (final and
        past `keep_final`, or an unfunded proposal forgotten): let go of whatever else
        is kept per channel. Called once per channel, never for one still held."""
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
            health=self.health,
            committed=self._committed,
        )
        # A payer sends half a window at a time (at most 64): the payee verifies one
        # batch while the next is signed, and a batch costs one commit, one packet
        # and one scheduler pass instead of one per payment. (A quarter window was
        # ~7 % slower at windows 16 and 64: more packets, commits and acks per payment.)
        self._pay_batch = max(1, min(self.config.window // 2, 64))
        self._acked: dict[bytes, trio.Event] = {}
        self._replies: dict[bytes, trio.MemorySendChannel[Frame]] = {}
        self.admission = Admission(self.config.admission)
        # Open payer channels reloaded from the store that the payee has not acked since:
        # the store may have lost our last writes (SECURITY risk 15), so no payment is
        # signed until the payee's ack tells us where the channel stands.
        self._unconfirmed: set[bytes] = set()
        self._counts = dict.fromkeys(
            (
                "payments_signed",
                "payments_accepted",
                "acks_received",
                "rejections",
                "sat_paid",
                "sat_earned",
            ),
            0,
        )
        self._fundings_lost = 0
        self._funding_checked: dict[bytes, float] = {}  # channel id -> last check (Trio time)
        self._settling: set[bytes] = set()  # payee closes being recorded and broadcast now
        self._network: str | None = None  # our chain's network id, once asked
        self._final: dict[bytes, None] = {}  # final channels held, in the order they ended
        self._released = 0
        self._compacted = 0

    # ------------------------------------------------------------------ queries

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the manager's counters."""
        commits = self._commits.counters
        admission = self.admission.statistics(trio.current_time())
        return ChannelStatistics(
            channels=len(self._ends),
            commits=commits.commits,
            records_committed=commits.records_committed,
            commit_seconds=commits.commit_seconds,
            acks_sent=commits.acks_sent,
            **self._counts,
            proposals_pending=admission.pending,
            proposals_refused=admission.refused,
            proposals_expired=admission.expired,
            peers_set_aside=admission.set_aside,
            fundings_lost=self._fundings_lost,
            channels_released=self._released,
            channels_compacted=self._compacted,
        )

    def records(self) -> list[tuple[Record, str]]:
        """Every channel this manager holds (the `keep_final` most recent final ones
        among them), with its service."""
        return [(end.record(), self._service[cid]) for cid, end in self._ends.items()]

    def record(self, channel_id: bytes) -> Record:
        """One channel's current record."""
        return self._end(channel_id).record()

    def _end(self, channel_id: bytes) -> Payer | Payee:
        end = self._ends.get(channel_id)
        if end is None:
            raise ChannelFailure(f"no channel {channel_id.hex()}")
        return end

    def _owned(self, peer_id: str, channel_id: bytes) -> Payer | Payee | None:
        end = self._ends.get(channel_id)
        return end if end is not None and end.record().peer_id == peer_id else None

    # ------------------------------------------------------------------ retention

    def _committed(self, records: list[Record]) -> None:
        """After each commit (the database is ours): note the channels it made final
        and release the oldest final ones beyond `keep_final`. One marked again for
        the next commit stays until a later one: that commit reads its state."""
        for record in records:
            if record.state in FINAL_STATES:
                self._final.setdefault(record.terms.channel_id)
        excess = len(self._final) - self.config.keep_final
        if excess <= 0:
            return
        for cid in list(self._final)[:excess]:
            if not self._commits.marked(cid):
                self._channels.forget_written(cid)
                self._release(cid)

    def _release(self, channel_id: bytes) -> None:
        """Let go of everything held in memory for a channel (its row stays in the
        store); `on_final` hears of it once. Nothing happens for one not held."""
        if self._ends.pop(channel_id, None) is None:
            return
        self._final.pop(channel_id, None)
        self._service.pop(channel_id, None)
        self._funding.pop(channel_id, None)
        self._funding_checked.pop(channel_id, None)
        self._unconfirmed.discard(channel_id)
        self.admission.settled(channel_id)
        self._notify_ack(channel_id)  # (a waiter holds the end and sees it final)
        self._released += 1
        if self.on_final is not None:
            self.on_final(channel_id)

    async def _reused(self, channel_id: bytes, txid: str, vout: int) -> tuple[str, str] | None:
        """Why an offered channel id or funding outpoint can never be served: held now,
        or seen before in any state -- a released or compacted channel is still in the
        store -- so a settled channel is never opened (nor its row overwritten) again."""
        if channel_id in self._ends:
            return "duplicate-channel", "channel id already in use"
        seen = await self._thread(self._channels.seen, channel_id, txid, vout)
        if seen is not None:
            return "duplicate-channel", seen
        if any(
            (e.terms.funding_txid, e.terms.funding_vout) == (txid, vout)
            for e in self._ends.values()
        ):
            return "duplicate-channel", "funding outpoint already in use"
        return None

    async def _forget_proposals(self) -> None:
        """Delete unfunded proposals whose lifetime is over (memory and store), each at
        most one lifetime late (one may arrive while nothing is pending)."""
        lifetime = self.admission.limits.lifetime
        while True:
            await trio.sleep_until(
                min(self.admission.next_deadline(), trio.current_time() + lifetime)
            )
            gone = [
                cid
                for cid in self.admission.expired(trio.current_time())
                if cid in self._ends and self._ends[cid].state in UNFUNDED
            ]
            if not gone:
                continue
            for cid in gone:
                self._release(cid)
            await self._write(self._channels.forget_unfunded, gone)
            log.info("forgot %d unfunded channel proposal(s)", len(gone))

    # ------------------------------------------------------------------ plumbing

    async def _foreign(self, peer_id: str) -> tuple[str, str] | None:
        """Why a peer's network is not ours (None when it is, or nobody says)."""
        session = self.node.session(peer_id)
        if session is None or not session.peer.network:
            return None
        if self._network is None:  # the chain's genesis never changes: ask once
            self._network = await self.chain.network_id()
        ours = self._network
        if session.peer.network == ours:
            return None
        return "network", f"peer is on network {session.peer.network[:16]}…, we on {ours[:16]}…"

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

    async def _reject(
        self, peer_id: str, channel_id: bytes, code: str, reason: str, *, strike: bool = True
    ) -> None:
        log.warning(
            "peer %s: channel %s rejected (%s): %s",
            peer_id[:16],
            channel_id.hex()[:16],
            code,
            reason,
        )
        self._counts["rejections"] += 1
        await self._send(peer_id, ChannelError(channel_id, code, reason))
        if strike and self.admission.strike(peer_id, trio.current_time()):
            # Not waiting for the goodbye to be written: this is the frame dispatcher.
            self.node.hang_up(peer_id, "repeated channel violations")

    def _ack_event(self, channel_id: bytes) -> trio.Event:
        event = self._acked.get(channel_id)
        if event is None:
            event = self._acked[channel_id] = trio.Event()
        return event

    def _notify_ack(self, channel_id: bytes) -> None:
        event = self._acked.pop(channel_id, None)
        if event is not None:
            event.set()

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

    async def _holds(self, txid: str, vout: int, satoshis: int, script: bytes) -> bool:
        """Whether the chain shows the unspent output `txid:vout` of `satoshis` to `script`
        (one of our wallet's P2PKH scripts): one lookup, however many addresses the
        wallet made (a payer makes one per channel, so a scan grew with every channel)."""
        out = await self.chain.output(txid, vout)
        return (out.state, out.satoshis, out.script) == (OutputState.UNSPENT, satoshis, script)

    def _new_payout(self) -> bytes:
        """A payer's payout: a fresh wallet key (opening is its own decision)."""
        return p2pkh_script(self.wallet.new_address())

    def _payee_payout(self, channel_id: bytes) -> bytes:
        """A payee's payout for the channel `channel_id`: derived, not stored -- an
        unfunded proposal costs no wallet key and no chain lookup (`_adopt_payout`)."""
        return p2pkh_script(self.wallet.payout_address(payout_label(channel_id)))

    async def _adopt_payout(self, payee: Payee) -> None:
        """Before a close that pays us goes out: make the channel's payout key one of
        the wallet's (idempotent), so its coin is looked for and spendable even if we
        stop before recording it. A channel opened before payouts were derived pays a
        key the wallet holds already."""
        cid = payee.terms.channel_id
        if payee.terms.payee_payout == self._payee_payout(cid):
            await self._write(self.wallet.adopt, payout_label(cid))

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        """A store or wallet write outside the group commit. A storage fault is reported
        to `health` and the write tried again (0.5 s doubling to 5 s) until it works: the
        caller waits, so nothing that must follow the write (a broadcast after recording
        a transaction) happens before it."""
        return await self.health.retry("channel-records", lambda: self._thread(fn, *args))

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db)


def payout_label(channel_id: bytes) -> str:
    """The wallet label of a payee's payout key in one channel."""
    return f"channel-payout-{channel_id.hex()}"


def funding_problem(output: OutputStatus, terms: Terms) -> str | None:
    """Why a channel's funding output, as our chain view shows it, backs nothing (None:
    it exists, is unspent and pays exactly the agreed capacity to the agreed 2-of-2)."""
    where = f"{terms.funding_txid}:{terms.funding_vout}"
    if output.state is OutputState.SPENT:
        return f"funding output {where} is already spent (by {output.spent_by or 'a tx'})"
    if output.state is not OutputState.UNSPENT:
        return f"funding output {where} is not in our chain view"
    if output.satoshis != terms.capacity or output.script != terms.funding_script:
        return f"funding output {where} does not pay the capacity to the 2-of-2"
    return None


def funding_outpoint(terms: Terms) -> tuple[str, int]:
    """The funding outpoint, as `Chain.output` takes it."""
    return terms.funding_txid, terms.funding_vout


__all__ = ["UNFUNDED", "ChannelBase", "funding_outpoint", "funding_problem", "payout_label"]
