"""A payer's open of a channel, as a conversation without I/O.

Before anything is reserved, `refusal` says whether an open may start at all (our
storage failing, a peer of another network) and `unaffordable` whether the capacity
covers the close fee. The payer reserves coins and builds its funding (the shell does:
it is the wallet's), then offers the channel (`propose`, which sets the open's
deadline). The payee's replies come back through `answered`, which knows which one is
expected next: its refund signature (checked, the channel is recorded with the signed
funding before the funding can reach the chain, `BroadcastFunding`), then its answer
to our funding (`funding_broadcast` announced it): an ack opens the channel. The open
ends with an `OpenEnded` effect (opened, or the failure the caller is told), after
the effects that free what a failed open held (`abandon_open`); so it does at its
deadline (`timed_out`) and when the shell's own I/O failed (`failed`). A payee that
refuses a funding we put on chain (`FUNDING_REFUSALS`) leaves the channel
``refused``: never offered again, its coins back with the refund at the expiry. The
replies route to the waiting open while it lasts (`reply_to`). Part of
`mesh.channel.protocol`; returns effects (`mesh.channel.effects`).
(docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from mesh.channel.book import ChannelBook
from mesh.channel.config import (
    ChannelConfig,
    ChannelFailure,
    ChannelRefused,
    FundingRefused,
    Standing,
)
from mesh.channel.effects import (
    AbandonFunding,
    BroadcastFunding,
    Effect,
    Flush,
    OpenEnded,
    ReleaseCoins,
    SaveRaw,
    Send,
)
from mesh.channel.fees import ChannelFees
from mesh.channel.frames import (
    ChannelAck,
    ChannelError,
    ChannelFunded,
    ChannelOpen,
    ChannelRefundSigned,
)
from mesh.channel.keys import ChannelKeys, derive_channel_keys
from mesh.channel.keys import terms_binding as binding_of
from mesh.channel.state import Payer, PaymentRejected, Record, Role, State
from mesh.channel.txs import Terms, multisig_script
from mesh.identity import Identity, parse_peer_id
from mesh.wire import Frame

log = logging.getLogger("agents.channels")
FUNDING_REFUSALS = frozenset({"funding", "not-open", "unknown-channel"})
"""A payee's answers to `ChannelFunded` that no resend can change: the funding is not
acceptable in its chain view, or it holds the channel no longer (failed, forgotten,
released). (A chain that did not answer it is ``chain-unavailable``: offered again.)"""
REFUSAL_CHARS = 240
"""How much of a payee's refusal a payer keeps (the peer's text, stored and shown)."""


@dataclass(frozen=True)
class Proposal:
    """A payer's open in progress: the offer sent, the keys it binds, the funding built
    for it, when the open gives up, and which answer of the payee comes next."""

    peer_id: str
    service: str
    offer: ChannelOpen
    keys: ChannelKeys
    funding_raw: bytes
    deadline: float
    funded: bool = False
    """The payee signed the refund: its answer to our funding is next."""


class Opening:
    """The payer's opens in progress (see the module doc)."""

    def __init__(self, identity: Identity, config: ChannelConfig, book: ChannelBook) -> None:
        self.identity = identity
        self.config = config
        self._book = book
        self._proposals: dict[bytes, Proposal] = {}

    def waits(self, channel_id: bytes) -> bool:
        """Whether an open of `channel_id` is waiting for the payee's replies."""
        return channel_id in self._proposals

    def reply_to(self, peer_id: str, channel_id: bytes) -> bool:
        """Whether a frame about `channel_id` from `peer_id` answers an open waiting."""
        proposal = self._proposals.get(channel_id)
        return proposal is not None and proposal.peer_id == peer_id

    def funding_refused(self, payer: Payer, error: ChannelError) -> list[Effect] | None:
        """The channel recorded ``refused`` if `error` is the payee's refusal of our
        funding (None when it is not): neither resent nor paid on; the refund at the
        expiry settles it."""
        if payer.state is not State.FUNDED or error.code not in FUNDING_REFUSALS:
            return None
        payer.refuse_funding(f"{error.code}: {error.reason}"[:REFUSAL_CHARS])
        log.warning(
            "channel %s: the payee refused the funding (%s: %s); refund at height %d",
            payer.terms.channel_id.hex()[:16],
            error.code,
            error.reason,
            payer.terms.expiry_height,
        )
        return [Flush(payer.terms.channel_id)]

    def refusal(self, peer_id: str, standing: Standing) -> ChannelFailure | None:
        """Why no open to `peer_id` starts now (None: it may): our storage is failing,
        or the peer is on another network (its chain cannot see our coins)."""
        if standing.storage_fault:
            return ChannelFailure(f"storage fault: {standing.storage_fault}")
        foreign = standing.foreign()
        if foreign is not None:
            return ChannelFailure(f"not opening a channel to {peer_id[:16]}…: {foreign}")
        return None

    @staticmethod
    def unaffordable(capacity: int, fees: ChannelFees) -> ChannelFailure | None:
        """Why a channel of `capacity` cannot be opened at `fees` (None: it can): the
        close fee must leave something to pay with."""
        if fees.close >= capacity:
            return ChannelFailure(
                f"a capacity of {capacity} sat does not cover the close fee of {fees.close}"
            )
        return None

    def funding_script(
        self,
        peer_id: str,
        channel_id: bytes,
        capacity: int,
        fees: ChannelFees,
        expiry: int,
        payer_payout: bytes,
    ) -> tuple[bytes, ChannelKeys]:
        """The 2-of-2 a new channel's funding must pay, and the keys it binds (the terms,
        `fees` included, are bound into the keys: `mesh.channel.keys`)."""
        binding = binding_of(capacity, fees.close, fees.refund, expiry, payer_payout)
        keys = derive_channel_keys(
            self.identity, parse_peer_id(peer_id), channel_id, Role.PAYER, binding
        )
        return multisig_script(keys.payer_key, keys.payee_key), keys

    def propose(
        self,
        peer_id: str,
        channel_id: bytes,
        service: str,
        capacity: int,
        fees: ChannelFees,
        expiry: int,
        payer_payout: bytes,
        funding_txid: str,
        keys: ChannelKeys,
        *,
        funding_raw: bytes,
        now: float,
    ) -> list[Effect]:
        """Offer a channel whose funding (`funding_raw`, paying output 0 of
        `funding_txid`) is built, not sent; the payee's replies come back as `Reply`
        effects, for `answered`. The open gives up `open_timeout` seconds from `now`."""
        offer = ChannelOpen(
            channel_id,
            service,
            capacity,
            fees.close,
            fees.refund,
            expiry,
            funding_txid,
            0,
            payer_payout,
        )
        deadline = now + self.config.open_timeout
        self._proposals[channel_id] = Proposal(peer_id, service, offer, keys, funding_raw, deadline)
        return [Send(peer_id, offer)]

    # ---------------------------------------------------------------- the timer

    def deadline(self, channel_id: bytes) -> float:
        """When the open of `channel_id` gives up (`timed_out`); inf when none waits.
        (Each open's timer is waited on by the task that opened, so what that task is
        doing at the deadline -- a write, a broadcast -- is cancelled with it.)"""
        proposal = self._proposals.get(channel_id)
        return math.inf if proposal is None else proposal.deadline

    def next_deadline(self) -> float:
        """The earliest deadline of the opens waiting (inf: none)."""
        return min((p.deadline for p in self._proposals.values()), default=math.inf)

    def timed_out(self, channel_id: bytes, now: float) -> list[Effect]:
        """The open's deadline passed with no (complete) answer: it fails, and frees
        what it holds (nothing before its deadline, or once it is over)."""
        proposal = self._proposals.get(channel_id)
        if proposal is None or now < proposal.deadline:
            return []
        waited = self.config.open_timeout
        which = "answer to our funding" if proposal.funded else "refund signature"
        return self._end(channel_id, f"the payee sent no {which} within {waited:g} s")

    # ---------------------------------------------------------------- the answers

    def answered(self, channel_id: bytes, reply: Frame) -> list[Effect]:
        """A reply of the payee to the waiting open (`Reply`), taken as the answer the
        open expects next: first its refund signature, then its answer to our funding.
        Nothing when no open of `channel_id` waits."""
        proposal = self._proposals.get(channel_id)
        if proposal is None:
            return []
        if not proposal.funded:
            return self._refund_answered(proposal, reply)
        return self._open_answered(channel_id, reply)

    def failed(self, channel_id: bytes, reason: str) -> list[Effect]:
        """The shell could not do what the open asked (the chain refused the funding,
        a write stopped): the open fails and frees what it holds."""
        if channel_id not in self._proposals:
            return []
        return self._end(channel_id, reason)

    def _refund_answered(self, proposal: Proposal, reply: Frame) -> list[Effect]:
        """The payee's first answer to our offer. Its refund signature, checked, makes
        the channel ours to fund: recorded, with the signed funding, before the funding
        can reach the chain. Anything else ends the open."""
        offer, keys = proposal.offer, proposal.keys
        channel_id = offer.channel_id
        if not isinstance(reply, ChannelRefundSigned):
            why = f"payee refused the channel: {describe(reply)}"
            if isinstance(reply, ChannelError):
                return self._end(channel_id, why, ChannelRefused, reply.code)
            return self._end(channel_id, why)
        terms = Terms(
            channel_id,
            keys.payer_key,
            keys.payee_key,
            offer.capacity,
            offer.close_fee,
            offer.refund_fee,
            offer.expiry_height,
            offer.funding_txid,
            offer.funding_vout,
            offer.payer_payout,
            reply.payee_payout,
        )
        payer = Payer(Record(Role.PAYER, State.PROPOSED, terms, proposal.peer_id), keys.own)
        try:
            payer.accept_refund_signature(reply.signature)
        except PaymentRejected as exc:
            return self._end(channel_id, str(exc))
        self._book.hold(payer, proposal.service)
        self._book.funding[channel_id] = proposal.funding_raw
        self._proposals[channel_id] = replace(proposal, funded=True)
        return [
            Flush(channel_id),
            SaveRaw(channel_id, funding=proposal.funding_raw),
            BroadcastFunding(channel_id, proposal.funding_raw),
        ]

    def funding_broadcast(self, channel_id: bytes) -> list[Effect]:
        """Our funding is on chain (recorded broadcast): tell the payee."""
        payer = self._book.end(channel_id)
        payer.event("funding-accepted")
        raw = self._book.funding[channel_id]
        peer = payer.record().peer_id
        return [Flush(channel_id), Send(peer, ChannelFunded(channel_id, raw))]

    def _open_answered(self, channel_id: bytes, reply: Frame) -> list[Effect]:
        """The payee's answer to our funding: an ack opens the channel; a refusal that
        no resend can change records it ``refused``; anything else ends the open too
        (a funding the payee did not take now is offered again on the next session)."""
        payer = self._book.end(channel_id)
        assert isinstance(payer, Payer)
        effects: list[Effect] = []
        if isinstance(reply, ChannelError):
            effects += self.funding_refused(payer, reply) or []
        elif isinstance(reply, ChannelAck) and reply.seq == 0:
            payer.event("opened")
            effects.append(Flush(channel_id))
        if payer.state is State.OPEN:
            self._proposals.pop(channel_id)
            return [*effects, OpenEnded(channel_id)]
        if payer.state is State.REFUSED:
            why = f"payee refused the funding: {describe(reply)}"
            return [*effects, *self._end(channel_id, why, FundingRefused)]
        why = f"payee did not open the channel: {describe(reply)}"
        return [*effects, *self._end(channel_id, why)]

    def _end(
        self,
        channel_id: bytes,
        reason: str,
        kind: type[ChannelFailure] = ChannelFailure,
        code: str = "",
    ) -> list[Effect]:
        """The open failed for `reason`: free what it holds, then tell its caller."""
        proposal = self._proposals.pop(channel_id)
        why = f"opening a channel to {proposal.peer_id[:16]}…: {reason}"
        failure = ChannelRefused(why, code) if kind is ChannelRefused else kind(why)
        return [*self.abandon_open(channel_id), OpenEnded(channel_id, failure)]

    def open_ended(self, channel_id: bytes) -> None:
        """The open conversation is over (its caller gave up): replies route as usual."""
        self._proposals.pop(channel_id, None)

    def abandon_open(self, channel_id: bytes) -> list[Effect]:
        """An open failed: free what it holds. A funding that may be on chain stays:
        the refund (or a later close) settles it."""
        end = self._book.ends.get(channel_id)
        if end is not None and end.state is not State.PROPOSED:
            if end.state is State.REFUND_SIGNED:  # recorded, never broadcast
                end.event("fail")
                return [Flush(channel_id), AbandonFunding(end.terms.funding_txid)]
            return []
        return [*self._book.release(channel_id), ReleaseCoins(channel_id)]


def describe(frame: Frame) -> str:
    """A payee's answer, for a message."""
    if isinstance(frame, ChannelError):
        return f"{frame.code}: {frame.reason}"
    return type(frame).__name__


__all__ = ["FUNDING_REFUSALS", "REFUSAL_CHARS", "Opening", "Proposal", "describe"]
