"""What a node keeps: its sessions, outboxes, handshakes in progress and watchers.

`NodeTables` is the state half of `mesh.net.node.Node`: the tables, the counters, the
queries the application makes (`session`, `sessions`, `statistics`, `incoming`...),
and the life of a session in them (registered when a handshake completes, dropped
when it ends, its outbox shared and closed with the last user). Moving packets --
reading the mailbox, handshakes, timers -- is `Node`'s, in `mesh.net.node`.
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

import pynng
import trio

from mesh.net.inbox import Inbox
from mesh.net.peer import NodeConfig, Outbox, PeerSession, SessionClosed
from mesh.net.ratelimit import PeerBudgets
from mesh.net.sources import SourceTable
from mesh.session import Handshake, LocalIdentity, PeerInfo, Session
from mesh.wire import Frame

log = logging.getLogger("mesh.transport")


@dataclass(frozen=True)
class SessionEvent:
    """A session with `peer` came up, or the last session with it went down."""

    up: bool
    peer: PeerInfo
    reason: str = ""


@dataclass(frozen=True)
class NodeStatistics:
    """A snapshot of a node's counters."""

    sessions: int
    pending_handshakes: int
    outboxes: int
    handshakes_completed: int
    handshakes_failed: int
    handshakes_evicted: int
    handshakes_timed_out: int
    handshakes_limited: int
    connections_refused: int
    outboxes_lost: int
    sessions_failed: int
    packets_dropped: int
    packets_received: int


@dataclass
class Counters:
    """The node's running counters (`NodeStatistics` is their snapshot)."""

    handshakes_completed: int = 0
    handshakes_failed: int = 0
    handshakes_evicted: int = 0
    handshakes_timed_out: int = 0
    handshakes_limited: int = 0
    outboxes_lost: int = 0
    sessions_failed: int = 0
    packets_dropped: int = 0
    packets_received: int = 0


class NodeTables:
    """A node's tables and counters, and what the application asks of them (the node
    answers with these; it holds one `NodeTables`, it is not one)."""

    def __init__(
        self,
        local: LocalIdentity,
        mailbox: pynng.Pair1,
        nursery: trio.Nursery,
        config: NodeConfig,
        allow: Collection[str] | None,
        sources: SourceTable | None = None,
    ) -> None:
        """Use `open_node` instead (it hands over the `SourceTable` nng's hooks fill)."""
        self.local = local
        self.config = config
        self.mailbox = mailbox
        self.nursery = nursery
        self.allow = allow
        self.outboxes: dict[str, Outbox] = {}
        self.live: dict[bytes, PeerSession] = {}
        self._by_peer: dict[str, PeerSession] = {}
        self.responding: dict[bytes, tuple[Handshake, float, Outbox, str | None]] = {}
        self.initiating: dict[bytes, tuple[Handshake, Outbox, trio.MemorySendChannel[object]]] = {}
        self.counters = Counters()
        self.inbox = Inbox(config.incoming_queue_frames)
        self._watchers: list[trio.MemorySendChannel[SessionEvent]] = []
        self.sources = (
            sources if sources is not None else SourceTable(config.max_connections_per_source)
        )
        self.handshake_budgets = PeerBudgets(
            config.handshakes_per_source_per_s, config.handshake_burst_per_source
        )

    def statistics(self) -> NodeStatistics:
        """A frozen snapshot of the node's counters and table sizes."""
        c = self.counters
        return NodeStatistics(
            sessions=len(self.live),
            pending_handshakes=len(self.responding) + len(self.initiating),
            outboxes=len(self.outboxes),
            handshakes_completed=c.handshakes_completed,
            handshakes_failed=c.handshakes_failed,
            handshakes_evicted=c.handshakes_evicted,
            handshakes_timed_out=c.handshakes_timed_out,
            handshakes_limited=c.handshakes_limited,
            connections_refused=self.sources.refused,
            outboxes_lost=c.outboxes_lost + sum(box.lost for box in self.outboxes.values()),
            sessions_failed=c.sessions_failed,
            packets_dropped=c.packets_dropped,
            packets_received=c.packets_received,
        )

    def connections_from(self, source: str) -> int:
        """How many connections to the mailbox `source` holds (see `mesh.net.sources`)."""
        return self.sources.held(source)

    def watch_sessions(
        self, buffer: int = 256, *, replay: bool = False
    ) -> trio.MemoryReceiveChannel[SessionEvent]:
        """A channel of `SessionEvent`s (sessions up and down) from now on.

        With `replay`, it starts with an ``up`` event for every session already
        established, so a watcher created after the node started misses none.
        """
        current = list(self._by_peer.values()) if replay else []
        send, receive = trio.open_memory_channel[SessionEvent](buffer + len(current))
        for peer in current:
            send.send_nowait(SessionEvent(up=True, peer=peer.peer))
        self._watchers.append(send)
        return receive

    def _announce(self, event: SessionEvent) -> None:
        for watcher in list(self._watchers):
            try:
                watcher.send_nowait(event)
            except trio.WouldBlock:
                log.warning("a session watcher is not keeping up; event dropped")
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._watchers.remove(watcher)

    def session(self, peer_id: str) -> PeerSession | None:
        """The newest live session with `peer_id`, if any."""
        return self._by_peer.get(peer_id)

    def hang_up(self, peer_id: str, reason: str) -> bool:
        """End the session with `peer_id` without waiting; False if there is none.

        From now on nothing more is sent to the peer and its packets are dropped;
        the goodbye (with `reason`) goes out behind the frames already queued, and the
        session ends once it is written, or after `close_grace` if it cannot be (a peer
        that stopped reading). A handler hanging up on a misbehaving peer thus never
        holds up the frames of the others.
        """
        peer = self._by_peer.get(peer_id)
        if peer is None or peer.hanging_up:
            return False
        peer.hang_up(reason)
        self.nursery.start_soon(peer.aclose, reason)
        return True

    def sessions(self) -> list[PeerSession]:
        """Every live session."""
        return list(self.live.values())

    def incoming(self) -> AsyncIterator[tuple[str, Frame]]:
        """Application frames from every peer, in arrival order per peer.

        Checkpoints once per burst rather than once per frame: the frames already
        queued are handed over back to back, so the tasks they wake (a committer,
        a payer) see the whole burst at once instead of one frame each.
        """
        return self.inbox.incoming()

    async def receive(self) -> tuple[str, Frame]:
        """The next application frame and the peer id that sent it."""
        return await self.inbox.receive()

    # ------------------------------------------------------------------ tables

    def acquire(self, mailbox: str) -> Outbox:
        outbox = self.outboxes.get(mailbox)
        if outbox is None or (
            outbox.lost
            and trio.current_time() - outbox.created >= self.config.reconnect_min_ms / 1000
        ):
            # A lost one stays with the sessions holding it (they end at the next
            # timer pass); a new user gets a fresh connection -- a peer that restarted,
            # or was not up yet, may be there now -- but no more than one per
            # `reconnect_min_ms` (a flood naming one mailbox gets no socket each).
            outbox = self.outboxes[mailbox] = Outbox(mailbox, self.config)
        outbox.users += 1
        return outbox

    def release(self, outbox: Outbox, *, linger: bool = False) -> None:
        outbox.users -= 1
        if outbox.users != 0:
            return  # still in use (or let go once too often: already closed)
        if self.outboxes.get(outbox.mailbox) is outbox:
            del self.outboxes[outbox.mailbox]
        if outbox.lost:
            self.counters.outboxes_lost += 1
            log.debug("connection to %s lost or never made", outbox.mailbox)
        if linger:
            self.nursery.start_soon(self._close_later, outbox)
        else:
            outbox.close()

    async def _close_later(self, outbox: Outbox) -> None:
        """Close a session's last outbox after `close_grace`: closing an nng socket
        discards what it has not sent yet, such as the goodbye just written."""
        try:
            await trio.sleep(self.config.close_grace)
        finally:
            outbox.close()

    def register(self, core: Session, outbox: Outbox, first_packet: bytes | None) -> PeerSession:
        peer = PeerSession(self.config, core, outbox, self.drop, first_packet)
        self.live[core.index] = peer
        self._by_peer[peer.peer_id] = peer
        self.counters.handshakes_completed += 1
        self.nursery.start_soon(self._run_session, peer)
        log.info(
            "session with %s (%s) established",
            peer.peer_id,
            core.peer.mailbox,
            extra={"peer": peer.peer_id},  # a JSON log line names the peer
        )
        self._announce(SessionEvent(up=True, peer=core.peer))
        return peer

    async def _run_session(self, peer: PeerSession) -> None:
        with contextlib.suppress(SessionClosed):  # outbox closed: node shutting down
            await peer.run_sender()
        self.drop(peer, peer.close_reason or "sender finished")

    def drop(self, peer: PeerSession, reason: str) -> None:
        if self.live.pop(peer.core.index, None) is None:
            return
        if self._by_peer.get(peer.peer_id) is peer:
            del self._by_peer[peer.peer_id]
        peer.stop(reason)
        self.release(peer.outbox, linger=True)
        log.info("session with %s closed: %s", peer.peer_id, reason, extra={"peer": peer.peer_id})
        if peer.peer_id not in self._by_peer:
            self._announce(SessionEvent(up=False, peer=peer.peer, reason=reason))


__all__ = ["Counters", "NodeStatistics", "NodeTables", "SessionEvent"]
