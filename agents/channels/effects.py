"""Executing the channel protocol's effects: the I/O half of the channel manager.

`ChannelEffects.run` takes the effects `mesh.channel.protocol` returned and does them
in order: records through the group commit (`agents.channels.commits`), frames over
the node's sessions, transactions to the chain, coins to the wallet, wake-ups to the
tasks that wait on a channel. An effect that asks a question (`Check…`, `Broadcast…`)
is answered by calling the protocol method it names with what the chain, the store or
the application said (`Standing`: our storage's health and both networks; `admit`: the
application's policy); the effects that answer returns run next. Nothing here decides
anything about a channel. (docs/ARCHITECTURE.md §2, §7)
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio

from agents.channels.commits import ChannelCommits
from mesh.chain.base import Chain, OutputState, Utxo
from mesh.chain.errors import ChainAuthError, ChainError, ChainUnavailable, TxRejected
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.chain.wallet import Wallet
from mesh.channel.config import AckedCallback, ChannelFailure, PaidCallback, Standing
from mesh.channel.effects import (
    AbandonFunding,
    Acked,
    AddCoins,
    AdoptPayout,
    BroadcastClose,
    BroadcastFunding,
    BroadcastRefund,
    CheckAdmit,
    CheckCloseClaim,
    CheckFunding,
    CheckFundingUnspent,
    CheckOffer,
    CheckPeer,
    CheckSpender,
    CheckStored,
    CommitNow,
    Effect,
    Ended,
    Flush,
    ForgetUnfunded,
    HangUp,
    OpenEnded,
    Paid,
    Persist,
    Reack,
    ReleaseCoins,
    Released,
    Reply,
    SaveRaw,
    Send,
    SendAfterCommit,
    Wake,
)
from mesh.channel.pays import fold_payments
from mesh.channel.protocol import ChannelProtocol
from mesh.channel.state import Payee
from mesh.channel.store import ChannelStore
from mesh.channel.txs import Terms
from mesh.commit import CommitFailed
from mesh.health import StorageHealth
from mesh.net.node import Node, SessionClosed
from mesh.wire import Frame

log = logging.getLogger("agents.channels")
T = TypeVar("T")
ChannelCallback = Callable[[bytes], None]
AdmitPolicy = Callable[[str, str], tuple[str, str] | None]
"""admit(peer_id, service): why a peer may not open a channel for a service now
(code, reason), or None."""


class CommitStopped(ChannelFailure):
    """The group commit stopped (the agent is stopping, or the store failed loudly):
    nothing that had to follow a write was done."""


class ChannelEffects:
    """Does what the channel protocol asks (see the module doc)."""

    def __init__(
        self,
        protocol: ChannelProtocol,
        node: Node,
        chain: Chain,
        wallet: Wallet,
        store: ChannelStore,
        db: trio.CapacityLimiter,
        health: StorageHealth,
    ) -> None:
        self.protocol = protocol
        self.node = node
        self.chain = chain
        self.wallet = wallet
        self.store = store
        self.health = health
        self.on_paid: PaidCallback | None = None
        self.on_acked: AckedCallback | None = None
        self.on_ended: ChannelCallback | None = None
        self.on_final: ChannelCallback | None = None
        self.want_session: Callable[[str], None] | None = None
        """want_session(peer_id): frames wait for a peer without a session (sessions on
        demand: the application dials it; `peer_connected` then sends them again)."""
        self.admit: AdmitPolicy | None = None
        """The application's policy on who may open a channel (certificates)."""
        self._network: str | None = None  # our chain's network id, once asked
        self._db = db
        self._waiters: dict[bytes, trio.Event] = {}
        self._replies: dict[bytes, trio.MemorySendChannel[Frame]] = {}
        self.commits = ChannelCommits(
            protocol, store, self._send_many, self._now, db, health, protocol.config.commit_gather
        )

    # ---------------------------------------------------------------- running

    async def run(self, effects: list[Effect]) -> None:
        """Do `effects` in order (answers' effects run where they arise)."""
        for effect in effects:
            await self.do(effect)

    async def do(self, effect: Effect) -> None:
        """Do one effect."""
        if self._now(effect):
            return
        if isinstance(effect, CommitNow):
            await self.commit_now(effect.channel_id)
        elif isinstance(effect, Flush):
            try:
                await self.commits.flush(effect.channel_id)
            except CommitFailed as exc:  # stopping (or a loud store fault): do no more
                raise CommitStopped(f"channel state not stored: {exc}") from None
        elif isinstance(effect, Send):
            await self._send_many(effect.peer_id, [effect.frame])
        elif isinstance(effect, SaveRaw):
            save = functools.partial(
                self.store.save_raw, effect.channel_id, funding=effect.funding, close=effect.close
            )
            await self.write(save)
        elif isinstance(effect, AddCoins):
            await self.write(self.wallet.add_utxos, list(effect.coins))
        elif isinstance(effect, AdoptPayout):
            await self._adopt_payout(effect.channel_id)
        elif isinstance(effect, ReleaseCoins):
            freed = await self.write(self.wallet.release, effect.channel_id.hex())
            log.info("released %d coins reserved for an open that never went out", freed)
        elif isinstance(effect, AbandonFunding):
            await self.write(self.wallet.abandon, effect.funding_txid)
        elif isinstance(effect, ForgetUnfunded):
            await self.write(self.store.forget_unfunded, list(effect.channel_ids))
            log.info("forgot %d unfunded channel proposal(s)", len(effect.channel_ids))
        elif isinstance(effect, BroadcastFunding):
            await self._broadcast_funding(effect)
        elif isinstance(effect, BroadcastClose | BroadcastRefund):
            await self._broadcast_settlement(effect)
        else:
            await self._answer(effect)

    def _now(self, effect: Effect) -> bool:
        """Do an effect that needs no waiting (True), here or inside a commit."""
        if isinstance(effect, Persist):
            self.commits.mark(effect.channel_id)
        elif isinstance(effect, SendAfterCommit):
            self.commits.send_after_commit(effect.peer_id, effect.frame)
        elif isinstance(effect, Reack):
            self.commits.reack(effect.channel_id)
        elif isinstance(effect, Wake):
            self.notify(effect.channel_id)
        elif isinstance(effect, Reply):
            reply_to = self._replies.get(effect.channel_id)
            if reply_to is not None:
                with contextlib.suppress(trio.WouldBlock):  # (a peer repeating itself)
                    reply_to.send_nowait(effect.frame)
        elif isinstance(effect, HangUp):
            # Not waiting for the goodbye to be written: this may be the frame dispatcher.
            self.node.hang_up(effect.peer_id, effect.reason)
        elif isinstance(effect, Paid):
            if self.on_paid is not None:
                self.on_paid(effect.channel_id, effect.peer_id, effect.service, effect.total)
        elif isinstance(effect, Acked):
            if self.on_acked is not None:
                self.on_acked(effect.channel_id, effect.seq)
        elif isinstance(effect, Ended):
            if self.on_ended is not None:
                self.on_ended(effect.channel_id)
        elif isinstance(effect, Released):
            self.store.forget_written(effect.channel_id)
            if self.on_final is not None:
                self.on_final(effect.channel_id)
        elif isinstance(effect, OpenEnded):
            pass  # read by the open that asked for it (`ChannelManager.open`)
        else:
            return False
        return True

    async def commit_now(self, channel_id: bytes) -> bool:
        """Persist and send from the calling task when nothing else is committing
        (True), else hand it to the committer."""
        self.commits.mark(channel_id, wake=False)
        if await self.commits.commit_inline():
            return True
        self.commits.wake()
        return False

    # ---------------------------------------------------------------- the chain

    async def _answer(self, effect: Effect) -> None:
        """A question for the chain, the store or the application; its answer goes to
        the protocol."""
        protocol, settlement, now = self.protocol, self.protocol.settlement, trio.current_time()
        if isinstance(effect, CheckPeer):
            standing = await self.standing(effect.peer_id)
            now = trio.current_time()
            await self.run(protocol.peer_checked(effect.peer_id, effect.frame, standing, now))
        elif isinstance(effect, CheckAdmit):
            frame = effect.frame
            verdict = None if self.admit is None else self.admit(effect.peer_id, frame.service)
            await self.run(protocol.admitted(effect.peer_id, frame, verdict, now))
        elif isinstance(effect, CheckOffer):
            frame = effect.frame
            try:
                height = await self.chain.height()
                policy = await self.chain.policy()
            except (ChainUnavailable, ChainAuthError) as exc:
                unanswered = protocol.chain_unavailable(
                    effect.peer_id, frame.channel_id, str(exc), now
                )
                await self.run(unanswered)
                return
            seen = await self.thread(
                self.store.seen, frame.channel_id, frame.funding_txid, frame.funding_vout
            )
            now = trio.current_time()
            await self.run(
                protocol.offer_checked(effect.peer_id, frame, height, seen, now, policy=policy)
            )
        elif isinstance(effect, CheckFunding):
            await self.run(await self._check_funding(effect))
        elif isinstance(effect, CheckFundingUnspent):
            held = protocol.book.ends.get(effect.channel_id)
            if held is None:  # released meanwhile (an earlier effect's commit)
                return
            terms = held.terms
            output = await self.chain.output(terms.funding_txid, terms.funding_vout)
            await self.run(settlement.funding_watched(effect.channel_id, output, now))
        elif isinstance(effect, CheckCloseClaim):
            output = await self.chain.output(effect.txid, effect.vout)
            await self.run(settlement.close_claim_checked(effect, output))
        elif isinstance(effect, CheckSpender):
            held = protocol.book.ends.get(effect.channel_id)
            if held is None:
                return
            terms = held.terms
            close_txid, paid = await self._close_paid(terms)
            coins = await self._own_outputs(close_txid, terms.payer_payout) if close_txid else ()
            await self.run(settlement.spender_found(effect.channel_id, close_txid, paid, coins))
        elif isinstance(effect, CheckStored):
            stored = await self.thread(self.store.find, effect.channel_id)
            record = None if stored is None else stored.record
            await self.run(settlement.stored_close(effect.peer_id, effect.channel_id, record))
        else:  # pragma: no cover - every effect type is handled above
            raise TypeError(f"unknown channel effect {effect!r}")

    async def _check_funding(self, effect: CheckFunding) -> list[Effect]:
        """Broadcast a payer's funding (idempotent: the chain holds it after this) and
        read its output in our own chain view."""
        peer, cid, now = effect.peer_id, effect.channel_id, trio.current_time()
        held = self.protocol.book.ends.get(cid)
        if held is None:  # forgotten meanwhile (its proposal expired)
            return []
        terms = held.terms
        try:
            await self.chain.broadcast(parse_exact(effect.raw))
            output = await self.chain.output(terms.funding_txid, terms.funding_vout)
        except (ChainUnavailable, ChainAuthError) as exc:  # no verdict: not a refusal
            # (our credentials refused are our fault, not the payer's funding's)
            return self.protocol.funding_checked(peer, cid, None, now, unavailable=str(exc))
        except ChainError as exc:
            return self.protocol.funding_checked(peer, cid, None, now, refused=str(exc))
        return self.protocol.funding_checked(peer, cid, output, trio.current_time())

    async def _broadcast_funding(self, effect: BroadcastFunding) -> None:
        """The payer's funding goes out; a refusal is raised to the open waiting."""
        cid = effect.channel_id
        await self.chain.broadcast(parse_exact(effect.raw))
        await self.write(self.wallet.mark_broadcast, self.protocol.book.end(cid).terms.funding_txid)
        await self.run(self.protocol.opening.funding_broadcast(cid))

    async def _broadcast_settlement(self, effect: BroadcastClose | BroadcastRefund) -> None:
        """A close or a refund goes out; its outcome, accepted or not, to the protocol."""
        settlement = self.protocol.settlement
        answer = (
            settlement.close_broadcast
            if isinstance(effect, BroadcastClose)
            else settlement.refund_broadcast
        )
        try:
            txid = await self.chain.broadcast(parse_exact(effect.raw))
        except TxRejected as exc:
            await self.run(answer(effect.channel_id, None, exc.rule, str(exc)))
        except ChainError as exc:  # no answer: tried again at the next watch
            await self.run(answer(effect.channel_id, None, "unavailable", str(exc)))
        else:
            await self.run(answer(effect.channel_id, txid))

    async def _close_paid(self, terms: Terms) -> tuple[str, int | None]:
        """The transaction that spent a channel's funding (not our refund) and what it
        paid the payee, as our chain view shows them: a close pays it its first output,
        a release nothing ("", None: the view does not say)."""
        funding = await self.chain.output(terms.funding_txid, terms.funding_vout)
        txid = funding.spent_by
        if txid is None:
            return "", None
        first = await self.chain.output(txid, 0)
        if first.state is OutputState.UNKNOWN or first.satoshis is None:
            return txid, None
        return txid, first.satoshis if first.script == terms.payee_payout else 0

    async def _own_outputs(self, txid: str, script: bytes) -> tuple[Utxo, ...]:
        """The unspent outputs of `txid` (a close: the payer's is the second, a
        release's the only one) that pay `script`."""
        coins = []
        for vout in (0, 1):
            out = await self.chain.output(txid, vout)
            if out.state is OutputState.UNSPENT and out.script == script and out.satoshis:
                coins.append(Utxo(txid, vout, out.satoshis, script))
        return tuple(coins)

    async def _adopt_payout(self, channel_id: bytes) -> None:
        """Make a payee's payout key one of the wallet's (idempotent), so its coin is
        looked for and spendable even if we stop before recording it. A channel opened
        before payouts were derived pays a key the wallet holds already."""
        payee = self.protocol.book.end(channel_id)
        assert isinstance(payee, Payee)
        label = payout_label(channel_id)
        if payee.terms.payee_payout == p2pkh_script(self.wallet.payout_address(label)):
            await self.write(self.wallet.adopt, label)

    async def standing(self, peer_id: str) -> Standing:
        """What we know of our storage and of the networks, for the protocol to judge
        an open with `peer_id` (our network is asked only of a peer that names one)."""
        fault = self.health.reason() or ""  # ("": healthy)
        session = self.node.session(peer_id)
        theirs = "" if session is None else session.peer.network
        if theirs and self._network is None:  # the chain's genesis never changes: ask once
            self._network = await self.chain.network_id()
        return Standing(fault, theirs, self._network or "")

    # ---------------------------------------------------------------- peers, waiters

    async def _send_many(self, peer_id: str, frames: list[Frame]) -> None:
        """Best effort, as one packet (one encryption pass, one nng message); a peer
        without a session gets it again from `peer_connected` when one is back."""
        session = self.node.session(peer_id)
        if session is None:
            if self.want_session is not None:
                self.want_session(peer_id)
            return
        with contextlib.suppress(SessionClosed):
            await session.send_many(fold_payments(frames))

    async def wait(self, channel_id: bytes) -> None:
        """Wait for the next `Wake` of `channel_id`."""
        event = self._waiters.get(channel_id)
        if event is None:
            event = self._waiters[channel_id] = trio.Event()
        await event.wait()

    def notify(self, channel_id: bytes) -> None:
        """Wake whoever waits on `channel_id`."""
        event = self._waiters.pop(channel_id, None)
        if event is not None:
            event.set()

    @contextlib.contextmanager
    def replies(self, channel_id: bytes) -> Iterator[trio.MemoryReceiveChannel[Frame]]:
        """Where the payee's answers to our open of `channel_id` arrive (`Reply`)."""
        send, receive = trio.open_memory_channel[Frame](4)
        self._replies[channel_id] = send
        try:
            yield receive
        finally:
            del self._replies[channel_id]

    # ---------------------------------------------------------------- the store

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """A store or wallet write outside the group commit. A storage fault is reported
        to `health` and the write tried again (0.5 s doubling to 5 s) until it works: the
        caller waits, so nothing that must follow the write (a broadcast after recording
        a transaction) happens before it."""
        return await self.health.retry("channel-records", lambda: self.thread(fn, *args))

    async def thread(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a worker thread, holding the database."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db)


def payout_label(channel_id: bytes) -> str:
    """The wallet label of a payee's payout key in one channel."""
    return f"channel-payout-{channel_id.hex()}"


__all__ = ["ChannelEffects", "CommitStopped", "payout_label"]
