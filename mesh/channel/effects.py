"""What the channel protocol asks its shell to do: effects and questions (frozen data).

`mesh.channel.protocol.ChannelProtocol` decides; it never writes, sends, broadcasts or
looks anything up. Each of its methods returns a list of these, to be executed **in
order** by the shell (`agents.channels`): order is how the protocol says "persist, then
send" (docs/ARCHITECTURE.md §2, §7). An effect that asks the chain or the store a
question (`Check…`, `Broadcast…`) is answered by calling the protocol method its
docstring names with what was found; that call returns the next effects.

Nothing here does anything; nothing here may import Trio.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.chain.base import Utxo
from mesh.channel.config import ChannelFailure
from mesh.channel.frames import ChannelClosed, ChannelOpen
from mesh.wire import Frame

# ---------------------------------------------------------------- durability


@dataclass(frozen=True)
class Persist:
    """Write the channel's record with the next group commit (soon; nothing waits)."""

    channel_id: bytes


@dataclass(frozen=True)
class CommitNow:
    """Write the channel's record now, from the task at hand when it can (a batch is
    complete: a lone payment, the last payment of a delivered burst); else soon."""

    channel_id: bytes


@dataclass(frozen=True)
class Flush:
    """Write the channel's record and wait until it is durable before the next effect."""

    channel_id: bytes


@dataclass(frozen=True)
class Reack:
    """Acknowledge the channel again once its state is durable (a resend arrived)."""

    channel_id: bytes


@dataclass(frozen=True)
class SaveRaw:
    """Record a transaction of the channel (`funding` or `close`) before it may reach
    the chain; wait until it is written."""

    channel_id: bytes
    funding: bytes | None = None
    close: bytes | None = None


@dataclass(frozen=True)
class ForgetUnfunded:
    """Delete these unfunded proposals' rows (their lifetime is over)."""

    channel_ids: tuple[bytes, ...]


# ---------------------------------------------------------------- peers


@dataclass(frozen=True)
class Send:
    """Send `frame` to `peer_id` now, best effort (its state, if any, is durable)."""

    peer_id: str
    frame: Frame


@dataclass(frozen=True)
class SendAfterCommit:
    """Send `frame` right after the next commit (the payer's payments)."""

    peer_id: str
    frame: Frame


@dataclass(frozen=True)
class HangUp:
    """End the session with `peer_id` (repeated violations)."""

    peer_id: str
    reason: str


@dataclass(frozen=True)
class Reply:
    """A payee's answer to an open this agent is waiting for (`ChannelManager.open`)."""

    channel_id: bytes
    frame: Frame


# ---------------------------------------------------------------- wallet


@dataclass(frozen=True)
class AddCoins:
    """Book coins a settlement paid us into the wallet; wait until written."""

    coins: tuple[Utxo, ...]


@dataclass(frozen=True)
class AdoptPayout:
    """Make the payee's payout key of this channel one of the wallet's (idempotent),
    before a close that pays it can exist."""

    channel_id: bytes


@dataclass(frozen=True)
class ReleaseCoins:
    """Free the coins reserved for an open that never went out."""

    channel_id: bytes


@dataclass(frozen=True)
class AbandonFunding:
    """Give the wallet back the inputs of a funding that will never be broadcast."""

    funding_txid: str


# ---------------------------------------------------------------- the chain


@dataclass(frozen=True)
class BroadcastFunding:
    """Broadcast the payer's funding, record it broadcast, then call
    `Opening.funding_broadcast`. A refusal is raised to the caller."""

    channel_id: bytes
    raw: bytes


@dataclass(frozen=True)
class BroadcastClose:
    """Broadcast a recorded close (or release); answer `Settlement.close_broadcast`."""

    channel_id: bytes
    raw: bytes


@dataclass(frozen=True)
class BroadcastRefund:
    """Broadcast the payer's refund; answer `Settlement.refund_broadcast`."""

    channel_id: bytes
    raw: bytes


@dataclass(frozen=True)
class CheckPeer:
    """A peer offers a channel: say what is known of our storage and of both networks
    (`mesh.channel.config.Standing`); answer `ChannelProtocol.peer_checked`."""

    peer_id: str
    frame: ChannelOpen


@dataclass(frozen=True)
class CheckAdmit:
    """Ask the application's policy whether the peer may open a channel for the
    offer's service (a verdict, or None: no objection); answer
    `ChannelProtocol.admitted`."""

    peer_id: str
    frame: ChannelOpen


@dataclass(frozen=True)
class CheckOffer:
    """Look up the chain's height and whether the store saw this channel id or funding
    outpoint before; answer `ChannelProtocol.offer_checked`."""

    peer_id: str
    frame: ChannelOpen


@dataclass(frozen=True)
class CheckFunding:
    """Broadcast the payer's funding `raw` (idempotent) and look up its output;
    answer `ChannelProtocol.funding_checked`."""

    peer_id: str
    channel_id: bytes
    raw: bytes


@dataclass(frozen=True)
class CheckFundingUnspent:
    """Look up an open channel's funding output; answer
    `Settlement.funding_watched`."""

    channel_id: bytes


@dataclass(frozen=True)
class CheckCloseClaim:
    """Look up whether the chain holds the payer's part of a claimed close: the output
    `txid:vout` unspent with `satoshis` to `script`, or (`satoshis` 0) the funding output
    spent by `txid`; answer `Settlement.close_claim_checked`."""

    peer_id: str
    claim: ChannelClosed
    txid: str
    vout: int
    satoshis: int
    script: bytes


@dataclass(frozen=True)
class CheckSpender:
    """The payer's refund lost to another spend of the funding: look up that spend,
    what it paid the payee and our own outputs in it; answer
    `Settlement.spender_found`."""

    channel_id: bytes


@dataclass(frozen=True)
class CheckStored:
    """A close request for a channel not held: look it up in the store; answer
    `Settlement.stored_close`."""

    peer_id: str
    channel_id: bytes


# ---------------------------------------------------------------- the application


@dataclass(frozen=True)
class OpenEnded:
    """The payer's open of this channel is over (always the last effect of its list):
    opened when `failure` is None, else `failure` is what the caller of the open is
    told (`ChannelRefused`, `FundingRefused` or `ChannelFailure`)."""

    channel_id: bytes
    failure: ChannelFailure | None = None


@dataclass(frozen=True)
class Wake:
    """Wake whoever waits on this channel (a payment for window room, a close, an ack)."""

    channel_id: bytes


@dataclass(frozen=True)
class Paid:
    """A payee's new total on a channel is durable (and acknowledged)."""

    channel_id: bytes
    peer_id: str
    service: str
    total: int


@dataclass(frozen=True)
class Acked:
    """The payee acknowledged our payments up to `seq` (our numbering)."""

    channel_id: bytes
    seq: int


@dataclass(frozen=True)
class Ended:
    """A channel we are paid on ended early (its funding is gone): deliver no more."""

    channel_id: bytes


@dataclass(frozen=True)
class Released:
    """The protocol let go of a channel's state (final and old, or an unfunded proposal
    forgotten): let go of whatever else is kept for it. Once per channel."""

    channel_id: bytes


Effect = (
    Persist
    | CommitNow
    | Flush
    | Reack
    | SaveRaw
    | ForgetUnfunded
    | Send
    | SendAfterCommit
    | HangUp
    | Reply
    | AddCoins
    | AdoptPayout
    | ReleaseCoins
    | AbandonFunding
    | BroadcastFunding
    | BroadcastClose
    | BroadcastRefund
    | CheckPeer
    | CheckAdmit
    | CheckOffer
    | CheckFunding
    | CheckFundingUnspent
    | CheckCloseClaim
    | CheckSpender
    | CheckStored
    | OpenEnded
    | Wake
    | Paid
    | Acked
    | Ended
    | Released
)
"""Everything the protocol may ask of its shell."""

__all__ = [
    "AbandonFunding",
    "Acked",
    "AddCoins",
    "AdoptPayout",
    "BroadcastClose",
    "BroadcastFunding",
    "BroadcastRefund",
    "CheckAdmit",
    "CheckCloseClaim",
    "CheckFunding",
    "CheckFundingUnspent",
    "CheckOffer",
    "CheckPeer",
    "CheckSpender",
    "CheckStored",
    "CommitNow",
    "Effect",
    "Ended",
    "Flush",
    "ForgetUnfunded",
    "HangUp",
    "OpenEnded",
    "Paid",
    "Persist",
    "Reack",
    "ReleaseCoins",
    "Released",
    "Reply",
    "SaveRaw",
    "Send",
    "SendAfterCommit",
    "Wake",
]
