"""The channel manager: the Trio shell around `mesh.channel.protocol`.

`manager.py` (ChannelManager: the public face, its tasks and the payer's waiting
conversations), `effects.py` (executing the protocol's effects: chain, store, wallet,
sessions), `commits.py` (what the group commit writes and sends). docs/ARCHITECTURE.md §2.
"""

from agents.channels.manager import ChannelManager
from mesh.channel.config import (
    AckedCallback,
    ChannelConfig,
    ChannelFailure,
    ChannelStatistics,
    FundingRefused,
    PaidCallback,
)
from mesh.channel.state import ChannelStateError

__all__ = [
    "AckedCallback",
    "ChannelConfig",
    "ChannelFailure",
    "ChannelManager",
    "ChannelStateError",
    "ChannelStatistics",
    "FundingRefused",
    "PaidCallback",
]
