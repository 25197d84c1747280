"""Channel policy and the channel manager's public types (`agents.channels` re-exports them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.channel.admission import AdmissionLimits
from mesh.errors import MeshError

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
    proposals_pending: int = 0
    proposals_refused: int = 0
    proposals_expired: int = 0
    peers_set_aside: int = 0
    fundings_lost: int = 0


class ChannelFailure(MeshError):
    """A channel could not be opened, paid on or closed; the message says why."""


class FundingRefused(ChannelFailure):
    """The payee refused a funding we had put on chain: our coins wait for the refund."""


@dataclass(frozen=True)
class ChannelConfig:
    """Channel policy: windows, fees, lifetimes, limits."""

    window: int = 64
    close_fee: int = 10
    refund_fee: int = 10
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


__all__ = [
    "AckedCallback",
    "ChannelConfig",
    "ChannelFailure",
    "ChannelStatistics",
    "FundingRefused",
    "PaidCallback",
]
