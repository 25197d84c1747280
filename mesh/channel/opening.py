"""A payer's open of a channel, as a conversation without I/O.

The payer reserves coins and builds its funding (the shell does: it is the wallet's),
offers the channel (`propose`), takes the payee's refund signature
(`refund_answered`: the channel is recorded, with the signed funding, before the
funding can reach the chain), announces the broadcast funding (`funding_broadcast`)
and waits for the payee's ack (`open_answered`). A payee that refuses a funding we put
on chain (`FUNDING_REFUSALS`) leaves the channel ``refused``: never offered again, its
coins back with the refund at the expiry. The replies route to the waiting open
while it lasts (`reply_to`). Part of `mesh.channel.protocol`; returns effects
(`mesh.channel.effects`). (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mesh.channel.book import ChannelBook
from mesh.channel.config import ChannelConfig, ChannelFailure, ChannelRefused, FundingRefused
from mesh.channel.effects import (
    AbandonFunding,
    BroadcastFunding,
    Effect,
    Flush,
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
from mesh.channel.state import Payer, Record, Role, State
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
    """A payer's open in progress: the offer sent and the keys it binds."""

    peer_id: str
    service: str
    offer: ChannelOpen
    keys: ChannelKeys


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
    ) -> list[Effect]:
        """Offer a channel whose funding (`funding_txid`, output 0) is built, not sent;
        the payee's replies come back as `Reply` effects."""
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
        self._proposals[channel_id] = Proposal(peer_id, service, offer, keys)
        return [Send(peer_id, offer)]

    def refund_answered(self, channel_id: bytes, reply: Frame, funding_raw: bytes) -> list[Effect]:
        """The payee's first answer to our offer. Its refund signature, checked, makes
        the channel ours to fund: recorded, with the signed funding, before the funding
        can reach the chain. Anything else: `ChannelFailure`."""
        proposal = self._proposals[channel_id]
        if not isinstance(reply, ChannelRefundSigned):
            why = f"payee refused the channel: {describe(reply)}"
            if isinstance(reply, ChannelError):
                raise ChannelRefused(why, reply.code)
            raise ChannelFailure(why)
        offer, keys = proposal.offer, proposal.keys
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
        payer.accept_refund_signature(reply.signature)
        self._book.hold(payer, proposal.service)
        self._book.funding[channel_id] = funding_raw
        return [
            Flush(channel_id),
            SaveRaw(channel_id, funding=funding_raw),
            BroadcastFunding(channel_id, funding_raw),
        ]

    def funding_broadcast(self, channel_id: bytes) -> list[Effect]:
        """Our funding is on chain (recorded broadcast): tell the payee."""
        payer = self._book.end(channel_id)
        payer.event("funding-accepted")
        raw = self._book.funding[channel_id]
        peer = payer.record().peer_id
        return [Flush(channel_id), Send(peer, ChannelFunded(channel_id, raw))]

    def open_answered(self, channel_id: bytes, reply: Frame) -> list[Effect]:
        """The payee's answer to our funding: an ack opens the channel. A refusal that
        no resend can change records it ``refused``; then, after executing the
        effects, the caller raises `open_failure(channel_id, reply)`."""
        payer = self._book.end(channel_id)
        assert isinstance(payer, Payer)
        if isinstance(reply, ChannelError):
            return self.funding_refused(payer, reply) or []
        if isinstance(reply, ChannelAck) and reply.seq == 0:
            payer.event("opened")
            return [Flush(channel_id)]
        return []

    def open_failure(self, channel_id: bytes, reply: Frame) -> ChannelFailure | None:
        """Why an open whose funding `reply` answered failed (None: it is open)."""
        payer = self._book.end(channel_id)
        if payer.state is State.REFUSED:
            return FundingRefused(f"payee refused the funding: {describe(reply)}")
        if payer.state is not State.OPEN:
            return ChannelFailure(f"payee did not open the channel: {describe(reply)}")
        return None

    def open_ended(self, channel_id: bytes) -> None:
        """The open conversation is over (opened or not): replies route as usual."""
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
