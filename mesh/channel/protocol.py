"""The channel conversation of one agent, both roles, without I/O (h11/aioquic style).

`ChannelProtocol` owns which frame answers which: the payee's checks of an offer, of a
funding and of every payment, the payer's handling of acks and refusals, resends
after a reconnect, violation counting, and (through `Settlement`,
`mesh.channel.settle`) the close, release and refund rules. Frames, `now` and chain
facts come in; effects (`mesh.channel.effects`) go out, in the order the shell
(`agents.channels`) must execute them: a state is persisted (`Flush`, `Persist`,
`CommitNow`) before anything that depends on it is sent or broadcast. Its timer is
`next_deadline()` / `handle_timer(now)` (unfunded proposals expiring); a payer's open
has its own deadline (`Opening.deadline` / `timed_out`); the chain's height comes in
through `Settlement.watch`. What only the shell can know -- our storage failing, the
networks, the application's admission policy, a chain that did not answer -- comes in
as facts (`peer_checked`, `admitted`, `chain_unavailable`); what follows from them is
decided here.

The rules themselves live in the transition tables of `mesh.channel.state`; the
admission bounds in `mesh.channel.admission`; what is held, and for how long, in
`mesh.channel.book`. Nothing here reads a socket, a file or a clock, or imports Trio.
(docs/ARCHITECTURE.md §2, §4)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mesh.chain.base import OutputStatus
from mesh.chain.errors import ChainError, TxRejected
from mesh.chain.rules import Policy
from mesh.chain.tx import parse_exact, txid_of
from mesh.channel.admission import Admission
from mesh.channel.book import UNFUNDED, ChannelBook
from mesh.channel.config import (
    ChannelConfig,
    ChannelFailure,
    Standing,
    expiry_problem,
    offer_problem,
)
from mesh.channel.effects import (
    Acked,
    BroadcastFunding,
    CheckAdmit,
    CheckFunding,
    CheckOffer,
    CheckPeer,
    CommitNow,
    Effect,
    Flush,
    Paid,
    Persist,
    Reack,
    ReleaseCoins,
    Reply,
    SaveRaw,
    Send,
    SendAfterCommit,
    Wake,
)
from mesh.channel.fees import fee_problem
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
from mesh.channel.keys import ChannelKeyError, derive_channel_keys, keys_for
from mesh.channel.keys import terms_binding as binding_of
from mesh.channel.opening import Opening
from mesh.channel.pays import latest_payment
from mesh.channel.settle import Settlement, close_request, funding_problem
from mesh.channel.state import Payee, Payer, PaymentRejected, Record, Role, State
from mesh.channel.txs import Terms
from mesh.identity import Identity, parse_peer_id
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


class ChannelProtocol:
    """Every channel of one agent, both roles (see the module doc)."""

    def __init__(
        self,
        identity: Identity,
        config: ChannelConfig,
        payee_payout: Callable[[bytes], bytes],
    ) -> None:
        """`payee_payout(channel_id)` is our payout script as payee of a channel: a
        derived wallet key (pure), so an unfunded proposal costs no wallet write."""
        self.identity = identity
        self.config = config
        self.admission = Admission(config.admission)
        self.book = ChannelBook(self.admission, config.keep_final)
        self.settlement = Settlement(self.book, config)
        self._payee_payout = payee_payout
        self.opening = Opening(identity, config, self.book)
        # A payer sends half a window at a time (at most 64): the payee verifies one
        # batch while the next is signed, and a batch costs one commit, one packet and
        # one scheduler pass instead of one per payment.
        self.pay_batch = max(1, min(config.window // 2, 64))

    # ---------------------------------------------------------------- timers

    def next_deadline(self) -> float:
        """When `handle_timer` has work next (an unfunded proposal's lifetime ends).
        A payer's open has a deadline of its own (`Opening.deadline`): the task that
        opened waits for it, so the write or broadcast under way then is cancelled."""
        return self.admission.next_deadline()

    def handle_timer(self, now: float) -> list[Effect]:
        """Forget the unfunded proposals whose lifetime is over."""
        return self.book.expire_proposals(now)

    # ---------------------------------------------------------------- frames in

    def receive(self, peer_id: str, frame: Frame, now: float, last: bool = True) -> list[Effect]:
        """A channel frame from `peer_id` (the caller checked `CHANNEL_FRAMES`).

        `last`: no frame waits behind this one (the node's end-of-burst signal): a
        payment commits there (`CommitNow`) rather than soon (`Persist`)."""
        cid = frame.channel_id  # type: ignore[attr-defined]
        if isinstance(frame, ChannelRefundSigned | ChannelError) and self.opening.waits(cid):
            return [Reply(cid, frame)] if self.opening.reply_to(peer_id, cid) else []
        if isinstance(frame, ChannelPays):
            return self._on_pays(peer_id, frame, now, last)
        if isinstance(frame, ChannelPay):
            one = ChannelPays(cid, frame.seq, (frame.total,), (frame.signature,))
            return self._on_pays(peer_id, one, now, last)
        if isinstance(frame, ChannelAck):
            return self._on_ack(peer_id, frame)
        if isinstance(frame, ChannelOpen):
            return [CheckPeer(peer_id, frame)]  # what the shell knows first: `peer_checked`
        if isinstance(frame, ChannelFunded):
            return self._on_funded(peer_id, frame, now)
        if isinstance(frame, ChannelClose | ChannelRelease):
            return self.settlement.close_request(peer_id, frame, now)
        if isinstance(frame, ChannelClosed):
            return self.settlement.close_claim(peer_id, frame)
        if isinstance(frame, ChannelError):
            log.warning(
                "peer %s: channel %s error %s: %s",
                peer_id[:16],
                cid.hex()[:16],
                frame.code,
                frame.reason,
            )
            payer = self.book.owned(peer_id, cid)
            if isinstance(payer, Payer):  # (a resent funding's refusal: no open waits)
                return self.opening.funding_refused(payer, frame) or []
        return []

    def chain_unavailable(
        self, peer_id: str, channel_id: bytes, reason: str, now: float
    ) -> list[Effect]:
        """The chain did not answer a lookup a peer's frame needed (`CheckOffer`,
        `CheckFunding`): no verdict, so no refusal of the frame's merits and no strike
        (``chain-unavailable``: the peer may offer it again)."""
        return self.book.reject(peer_id, channel_id, "chain-unavailable", reason, now, False)

    # ---------------------------------------------------------------- payee

    def peer_checked(
        self, peer_id: str, frame: ChannelOpen, standing: Standing, now: float
    ) -> list[Effect]:
        """Answer to `CheckPeer`. No offer is considered while our storage fails (no
        new business; not the peer's fault: no strike), nor from a peer of another
        network (its chain cannot see our coins, nor ours its coins: a strike); else
        the application's policy is asked (`admitted`)."""
        cid = frame.channel_id
        if standing.storage_fault:
            reason = f"storage fault here: {standing.storage_fault}"
            return self.book.reject(peer_id, cid, "storage", reason, now, strike=False)
        foreign = standing.foreign()
        if foreign is not None:
            return self.book.reject(peer_id, cid, "network", foreign, now, strike=True)
        return [CheckAdmit(peer_id, frame)]

    def admitted(
        self, peer_id: str, frame: ChannelOpen, refusal: tuple[str, str] | None, now: float
    ) -> list[Effect]:
        """Answer to `CheckAdmit`: the application's refusal (code, reason; None: no
        objection) is passed on without a strike (a buyer that has not yet proved what
        the service requires). Then terms no transaction can carry (each named), then
        the bounds; what costs a lookup (the height, the store) only for an offer that
        passed them."""
        if refusal is not None:
            return self.book.reject(peer_id, frame.channel_id, *refusal, now, strike=False)
        problem = offer_problem(self.config, frame) or self.admission.check(peer_id, now)
        if problem is not None:
            return self.book.reject(peer_id, frame.channel_id, *problem, now, strike=True)
        return [CheckOffer(peer_id, frame)]

    def offer_checked(
        self,
        peer_id: str,
        frame: ChannelOpen,
        height: int,
        seen: str | None,
        now: float,
        *,
        policy: Policy,
    ) -> list[Effect]:
        """Answer to `CheckOffer`: the chain's `height` and fee `policy`, and why the
        store saw this channel id or outpoint before (None: never). A settled channel
        is never opened, nor its row overwritten, again; fees below the policy are
        refused (no strike: the payer's view of the policy may be older than ours)."""
        cid = frame.channel_id
        fees = fee_problem(frame.close_fee, frame.refund_fee, policy)
        if fees is not None:
            return self.book.reject(peer_id, cid, *fees, now, strike=False)
        problem = expiry_problem(self.config, frame, height)
        if problem is None:
            held = self.book.in_use(cid, frame.funding_txid, frame.funding_vout)
            why = held or seen
            problem = None if why is None else ("duplicate-channel", why)
        if problem is not None:
            return self.book.reject(peer_id, cid, *problem, now, strike=True)
        binding = binding_of(
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
        self.book.hold(payee, frame.service)
        self.admission.add(peer_id, cid, now)
        return [Flush(cid), Send(peer_id, ChannelRefundSigned(cid, signature, payee_payout))]

    def _on_funded(self, peer_id: str, frame: ChannelFunded, now: float) -> list[Effect]:
        cid = frame.channel_id
        payee = self.book.owned(peer_id, cid)
        if not isinstance(payee, Payee):
            return self.book.reject(peer_id, cid, "unknown-channel", "no such channel", now, True)
        if payee.state is State.OPEN:
            return [Send(peer_id, ChannelAck(cid, 0, 0, b""))]  # a resend
        if payee.state is not State.REFUND_SIGNED:
            reason = f"channel is {payee.state.value}"
            return self.book.reject(peer_id, cid, "not-open", reason, now, True)
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
        except (TxRejected, IndexError, ChainError) as exc:
            return self.book.reject(peer_id, cid, "funding", str(exc), now, True)
        return [CheckFunding(peer_id, cid, frame.funding_tx)]

    def funding_checked(
        self,
        peer_id: str,
        channel_id: bytes,
        output: OutputStatus | None,
        now: float,
        *,
        refused: str = "",
        unavailable: str = "",
    ) -> list[Effect]:
        """Answer to `CheckFunding`: the funding output in our own chain view after the
        broadcast (what we serve against is the output, not the tx: a funding the
        payer already spent, say by the refund, is worth nothing), or the chain's
        refusal of the funding, or why the chain did not answer (no verdict: not a
        refusal, and no strike)."""
        payee = self.book.owned(peer_id, channel_id)
        if not isinstance(payee, Payee) or payee.state is not State.REFUND_SIGNED:
            return []  # answered meanwhile
        if unavailable:
            return self.chain_unavailable(peer_id, channel_id, unavailable, now)
        if refused or output is None:
            return self.book.reject(peer_id, channel_id, "funding", refused, now, True)
        problem = funding_problem(output, payee.terms)
        if problem is not None:
            payee.event("fail")  # the outpoint can never be served: final, kept
            self.admission.settled(channel_id)
            reason = str(TxRejected("funding-spent", problem))
            rejection = self.book.reject(peer_id, channel_id, "funding", reason, now, True)
            return [Flush(channel_id), *rejection]
        payee.event("funding-accepted")
        self.admission.settled(channel_id)
        return [Flush(channel_id), Send(peer_id, ChannelAck(channel_id, 0, 0, b""))]

    def _on_pays(self, peer_id: str, frame: ChannelPays, now: float, last: bool) -> list[Effect]:
        """One payment or a run of them (`ChannelPay` comes here as a run of one)."""
        cid = frame.channel_id
        payee = self.book.owned(peer_id, cid)
        if not isinstance(payee, Payee):
            return self.book.reject(peer_id, cid, "unknown-channel", "no such channel", now, True)
        before = payee.record().total
        fresh, rejection = payee.accept_payments(frame.seq, frame.totals, frame.signatures)
        counts = self.book.counts
        counts["payments_accepted"] += fresh
        counts["sat_earned"] += payee.record().total - before
        effects: list[Effect] = []
        if fresh or rejection is None:
            if not fresh:  # a resend after a reconnect: acknowledge it again once durable
                effects.append(Reack(cid))
            # The last payment of the burst the node delivered is a natural group commit.
            effects.append(CommitNow(cid) if last else Persist(cid))
        if rejection is not None:
            effects += self.book.reject(peer_id, cid, rejection.code, rejection.reason, now, True)
        return effects

    def acknowledge(self, record: Record, reack: bool) -> tuple[ChannelAck, Paid] | None:
        """After a commit: the cumulative ack a payee's durable `record` allows (a
        resend after a reconnect, `reack`, is acknowledged again), and the payment it
        confirms for the application."""
        if record.role is not Role.PAYEE or not (
            record.seq > record.acked_seq or (reack and record.seq > 0)
        ):
            return None
        cid = record.terms.channel_id
        payee = self.book.ends[cid]
        assert isinstance(payee, Payee)
        payee.acknowledged(record.seq, record.total)
        ack = ChannelAck(cid, record.seq, record.total, record.payer_sig)
        return ack, Paid(cid, record.peer_id, self.book.service[cid], record.total)

    # ---------------------------------------------------------------- payer

    def _on_ack(self, peer_id: str, frame: ChannelAck) -> list[Effect]:
        cid = frame.channel_id
        payer = self.book.owned(peer_id, cid)
        if not isinstance(payer, Payer):
            return []
        if cid in self.book.unconfirmed and frame.seq == 0:
            # After our restart: the payee holds no payment; pay from the state we hold.
            return [*self._confirmed(peer_id, payer), Wake(cid)]
        if frame.seq == 0:
            if self.opening.reply_to(peer_id, cid):
                return [Reply(cid, frame)]
            if payer.state is State.FUNDED:  # restarted after funding: open it now
                payer.event("opened")
                return [Persist(cid), Wake(cid)]
            return []
        before = payer.record().seq
        try:
            record = payer.accept_ack(frame.seq, frame.total, frame.signature)
        except PaymentRejected as exc:
            log.warning("peer %s: %s", peer_id[:16], exc)
            return []
        effects: list[Effect] = []
        if record.seq != before:  # our latest writes were lost: persist what we took back
            log.warning(
                "channel %s: took back seq %d (total %d) from the payee's ack",
                cid.hex()[:16],
                record.seq,
                record.total,
            )
            effects.append(Persist(cid))
        # Not persisted at once: the ack is the payee's promise, ours to remember lazily.
        self.book.counts["acks_received"] += 1
        if cid in self.book.unconfirmed:  # (an ack refused above leaves it shut)
            effects += self._confirmed(peer_id, payer)
        # (in our numbering: a taken-back state's differs)
        return [*effects, Wake(cid), Acked(cid, record.acked_seq)]

    def _confirmed(self, peer_id: str, payer: Payer) -> list[Effect]:
        """The payee's first good ack since our restart: pay on from the state we now
        hold, resending its payment if the payee has not acknowledged it."""
        cid = payer.terms.channel_id
        self.book.unconfirmed.discard(cid)
        record = payer.record()
        if record.seq > record.acked_seq:
            return [SendAfterCommit(peer_id, latest_payment(record)), Persist(cid)]
        return []

    def may_pay(self, channel_id: bytes) -> bool:
        """Whether a payment on our channel can be signed now (else wait for an ack:
        the window is full, or the payee has not told us where a reloaded channel
        stands)."""
        payer = self.book.end(channel_id)
        if not isinstance(payer, Payer):
            raise ChannelFailure("only the payer pays on a channel")
        return channel_id not in self.book.unconfirmed and not window_full(
            payer.record(), self.config.window
        )

    def pay(self, channel_id: bytes, amount: int, staged: int) -> tuple[Record, list[Effect]]:
        """Sign a payment of `amount` more (`may_pay` said yes). It goes out after the
        commit that makes it durable: from the task at hand (`CommitNow`) when it is
        alone in flight or completes a batch of `pay_batch`, else with the committer's
        next batch. `staged` is a fact the shell states, as the node states `last`: how
        many frames its group commit holds for the next commit (the protocol keeps no
        count of its shell's queue)."""
        payer = self.book.end(channel_id)
        assert isinstance(payer, Payer)
        record = payer.pay(amount)
        self.book.counts["payments_signed"] += 1
        self.book.counts["sat_paid"] += amount
        send = SendAfterCommit(record.peer_id, latest_payment(record))
        if record.seq - record.acked_seq == 1 or staged + 1 >= self.pay_batch:
            return record, [send, CommitNow(channel_id)]
        return record, [send, Persist(channel_id)]

    def presign(self, channel_id: bytes, amount: int) -> None:
        """After a payment went out: when the window is full, sign the next one while
        we wait for an ack (RFC 6979 makes it the same bytes)."""
        payer = self.book.end(channel_id)
        if isinstance(payer, Payer) and window_full(payer.record(), self.config.window):
            payer.presign(amount)

    def close(self, channel_id: bytes) -> list[Effect]:
        """Close a channel we hold: a payee co-signs and broadcasts; a payer asks its
        payee (a release when nothing was paid)."""
        end = self.book.end(channel_id)
        if isinstance(end, Payee):
            return self.settlement.close_as_payee(end)
        if end.state is State.REFUSED:
            return []  # never opened: nothing to close, the refund settles it
        effects: list[Effect] = []
        if end.state in (State.OPEN, State.FUNDED):  # funded: the payee may hold it open
            end.event("close")
            effects.append(Flush(channel_id))
        return [*effects, Send(end.record().peer_id, close_request(end))]

    # ---------------------------------------------------------------- resume

    def restore(
        self,
        record: Record,
        service: str,
        funding_raw: bytes | None,
        close_raw: bytes | None,
        now: float,
    ) -> list[Effect]:
        """A channel reloaded from the store at start: hold it, and finish what a stop
        interrupted (a funding recorded but perhaps not broadcast, a close recorded but
        perhaps not accepted)."""
        cid = record.terms.channel_id
        try:
            keys = keys_for(self.identity, parse_peer_id(record.peer_id), record.terms, record.role)
        except ChannelKeyError:
            log.exception("not reloading channel %s", cid.hex()[:16])
            return []
        end: Payer | Payee = (
            Payer(record, keys.own) if record.role is Role.PAYER else Payee(record, keys.own)
        )
        self.book.hold(end, service)
        if record.state is State.OPEN and isinstance(end, Payer):
            self.book.unconfirmed.add(cid)
        if isinstance(end, Payee) and record.state in UNFUNDED:
            self.admission.add(record.peer_id, cid, now)  # a fresh lifetime
        if funding_raw is not None:
            self.book.funding[cid] = funding_raw
        log.info(
            "reloaded %s channel %s in state %s",
            record.role.value,
            cid.hex()[:16],
            record.state.value,
        )
        if record.state is State.REFUND_SIGNED and isinstance(end, Payer):
            if funding_raw is not None:
                return [BroadcastFunding(cid, funding_raw)]  # idempotent if it went out
            end.event("fail")  # crashed before recording the funding: it never went out
            return [Flush(cid), ReleaseCoins(cid)]
        if record.state is State.CLOSING and isinstance(end, Payee):
            if close_raw is not None:
                return self.settlement.finish_close(end, close_raw)
            raw = end.closing_tx()  # crashed after recording CLOSING, before the close tx
            return [SaveRaw(cid, close=raw), *self.settlement.finish_close(end, raw)]
        return []

    def peer_connected(self, peer_id: str) -> list[Effect]:
        """A (new) session with `peer_id`: resend what may have been lost."""
        effects: list[Effect] = []
        for cid, end in list(self.book.ends.items()):
            record = end.record()
            if record.peer_id != peer_id:
                continue
            if isinstance(end, Payer):
                if record.state is State.FUNDED and cid in self.book.funding:
                    effects.append(Send(peer_id, ChannelFunded(cid, self.book.funding[cid])))
                elif cid in self.book.unconfirmed:
                    pass  # the payee's ack first: it may hold a later state (`_confirmed`)
                elif record.state in (State.OPEN, State.CLOSING) and record.seq > record.acked_seq:
                    effects.append(Send(peer_id, latest_payment(record)))
                if record.state is State.CLOSING:  # the request may have been lost
                    effects.append(Send(peer_id, close_request(end)))
            elif record.state in (State.OPEN, State.CLOSING) and record.seq:
                effects += [Reack(cid), Persist(cid)]  # acked once it is surely durable
            elif record.state is State.OPEN:  # nothing paid yet: say so (a restarted
                effects.append(Send(peer_id, ChannelAck(cid, 0, 0, b"")))  # payer waits)
            elif record.state is State.CLOSED and record.close_txid:
                # Closed while the payer was away (watcher, restart): it may not know.
                closed = ChannelClosed(cid, record.close_txid, record.total)
                effects.append(Send(peer_id, closed))
        return effects


def window_full(record: Record, window: int) -> bool:
    """Whether `window` payments await the payee's ack."""
    return record.seq - record.acked_seq >= window


__all__ = [
    "CHANNEL_FRAMES",
    "ChannelProtocol",
    "window_full",
]
