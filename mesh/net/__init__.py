"""The messaging stack: a node's mailbox and outboxes over nng, its sessions and their
tables, per-source limits, and delivery to the application.

    node.py      Node, open_node: moves packets between nng and sessions (Trio shell)
    tables.py    what a node keeps: sessions, outboxes, handshakes, watchers, counters
    peer.py      one session's send paths and outbox; NodeConfig
    inbox.py     frames delivered to the application, in order, with back-pressure
    sockets.py   the mailbox (Pair1 listener) and outbox (Pair1 dialer) sockets
    sources.py, ratelimit.py   per-source connection caps and token buckets (pure)

The protocol cores it drives live beside it: `mesh.noise`, `mesh.session` (and the
session's frames, `mesh.session_frames`). Log lines keep the logger name
``mesh.transport``. docs/ARCHITECTURE.md §2 walks one payment through the layers.
"""

from mesh.net.node import Node, open_node
from mesh.net.peer import ConnectError, NodeConfig, PeerSession, SessionClosed
from mesh.net.tables import NodeStatistics, SessionEvent

__all__ = [
    "ConnectError",
    "Node",
    "NodeConfig",
    "NodeStatistics",
    "PeerSession",
    "SessionClosed",
    "SessionEvent",
    "open_node",
]
