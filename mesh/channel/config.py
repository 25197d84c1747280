"""Channel policy, the payee's checks of an offer against it, and the channel
manager's public types (`agents.channels` re-exports them). (docs/ARCHITECTURE.md §4)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.channel.admission import AdmissionLimits
from mesh.channel.frames import ChannelOpen
from mesh.channel.txs import is_p2pkh
from mesh.errors import MeshError

PaidCallback = Callable[[bytes, str, str, int], None]
"""on_paid(channel_id, peer_id, service, total): a payee's durable new total."""
AckedCallback = Callable[[bytes, int], None]
"""on_acked(channel_id, seq): the payer received the payee's ack up to `seq`."""
MAX_LOCKTIME_HEIGHT = 500_000_000
"""nLockTime values from here on are times, not heights: no refund can expire there."""


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
    proposals_pending: int = 0
    proposals_refused: int = 0
    proposals_expired: int = 0
    peers_set_aside: int = 0
    fundings_lost: int = 0
    channels_released: int = 0
    """Final channels (and forgotten proposals) whose in-memory state was released."""
    channels_compacted: int = 0
    """Settled channels cut to a tombstone in the store since start."""
    sat_paid: int = 0
    """Satoshis this agent's signed payments moved, as payer, since start."""
    sat_earned: int = 0
    """Satoshis the payments it accepted moved, as payee, since start."""


class ChannelFailure(MeshError):
    """A channel could not be opened, paid on or closed; the message says why."""


class ChannelRefused(ChannelFailure):
    """The payee refused our offer before anything was funded; `code` is its rule
    (``proof-required``: it is asking us for a certificate, try again shortly)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class FundingRefused(ChannelFailure):
    """The payee refused a funding we had put on chain: our coins wait for the refund."""


@dataclass(frozen=True)
class ChannelConfig:
    """Channel policy: windows, fees, lifetimes, limits."""

    window: int = 64
    close_fee: int = 10
    refund_fee: int = 10
    """The least close and refund fees a payer offers; above them, what the network's
    policy asks times `fee_headroom` (`mesh.channel.fees`)."""
    fee_headroom: int = 2
    """How far the network's fee policy may rise during a channel's life before its
    presigned close and refund fall below it."""
    min_close_fee: int = 1
    max_fee: int = 10_000
    min_lifetime_blocks: int = 6
    close_margin_blocks: int = 3
    """A payee closes once the height reaches ``expiry - close_margin_blocks``. The
    strictest real node (Teranode) accepts the refund once ``height + 1 >= expiry``, so
    the close has ``close_margin_blocks - 1`` block intervals to enter a mempool first;
    the watcher checks every `watch_interval` seconds and at start."""
    max_capacity: int = 100_000_000
    open_timeout: float = 15.0
    watch_interval: float = 1.0
    funding_check_interval: float = 5.0
    """How often the watcher re-checks each open channel's funding output is unspent."""
    commit_gather: int = 16
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    """Bounds on unfunded proposals, and strikes before a peer is set aside."""
    keep_final: int = 32
    """How many final channels (closed, refunded, failed) stay in memory, the most
    recent ones: `mesh status` lists them and a payee tells a reconnecting payer of
    their close again. Older ones are released (`on_final`); their rows stay in the
    store, which still refuses their ids and outpoints and answers a repeated close."""
    keep_settled: float = 30 * 86400.0
    """Seconds a final channel keeps its whole row in the store; then it is cut to a
    tombstone (`ChannelStore.compact`, at start and every `compact_every` seconds)."""
    compact_every: float = 3600.0
    """Seconds between two compactions (a pass reads the payment journal, ≤ 1 MiB)."""


@dataclass(frozen=True)
class Standing:
    """Facts the shell knows when a channel is to be opened (either role), for the
    protocol to judge (`ChannelProtocol.peer_checked`, `Opening.refusal`)."""

    storage_fault: str = ""
    """Why our storage is failing ("": it is healthy)."""
    peer_network: str = ""
    """The network the peer's session declared ("": none, or no session)."""
    network: str = ""
    """Ours: the chain's genesis block hash (looked up only if the peer declared one)."""

    def foreign(self) -> str | None:
        """Why the peer's network is not ours (None when it is, or nobody says)."""
        theirs, ours = self.peer_network, self.network
        if not theirs or theirs == ours:
            return None
        return f"peer is on network {theirs[:16]}…, we on {ours[:16]}…"


def offer_problem(config: ChannelConfig, frame: ChannelOpen) -> tuple[str, str] | None:
    """Why a payee refuses the terms of `frame` under `config` (code, reason), checked
    before anything costs a lookup: terms no transaction can carry first, then the
    bounds. None when they are acceptable."""
    c = config
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
    if not is_p2pkh(frame.payer_payout) or not is_txid(frame.funding_txid):
        return "bad-terms", "payout must be P2PKH and the funding txid 64 hex digits"
    if not 0 <= frame.funding_vout <= 0xFFFFFFFF:
        return "bad-terms", "funding vout must fit in 32 bits"
    if frame.expiry_height >= MAX_LOCKTIME_HEIGHT:
        return "expiry", f"expiry {frame.expiry_height} is not a block height"
    return None


def expiry_problem(
    config: ChannelConfig, frame: ChannelOpen, height: int
) -> tuple[str, str] | None:
    """Why the expiry of `frame` is too soon at chain height `height` (None: it is not)."""
    if frame.expiry_height < height + config.min_lifetime_blocks:
        return "expiry", f"expiry {frame.expiry_height} is too soon (height {height})"
    return None


def is_txid(text: str) -> bool:
    """Whether `text` is a txid: 64 hex digits."""
    try:
        return len(text) == 64 and len(bytes.fromhex(text)) == 32
    except ValueError:
        return False


__all__ = [
    "MAX_LOCKTIME_HEIGHT",
    "AckedCallback",
    "ChannelConfig",
    "ChannelFailure",
    "ChannelRefused",
    "ChannelStatistics",
    "FundingRefused",
    "PaidCallback",
    "Standing",
    "expiry_problem",
    "is_txid",
    "offer_problem",
]
