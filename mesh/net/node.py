"""The Trio shell that carries sessions over nng.

Each node has one inbound mailbox, a polyamorous `Pair1` listener, and one outbound
`Pair1` dialer per remote mailbox, shared by every session to that mailbox
(`mesh.net.sockets`: why pair1 and not push/pull). A session spans a pair of
connections: our outbox to the peer's mailbox and the peer's outbox to ours. All
protocol decisions live in `mesh.session`, and the tables a node keeps in
`mesh.net.tables`; this module only moves packets and enforces resource limits:

* sockets are driven by fd polling (`wait_readable` on nng's recv/send fds plus
  non-blocking calls), several times faster under Trio than `asend`/`arecv`;
* every session (`mesh.net.peer.PeerSession`, re-exported here with the node's config
  and errors) has a bounded send queue (backpressure, never unbounded memory) and
  one sender task that coalesces whatever is queued into one packet;
* `recv_max_size` on every socket; a handshake deadline and a cap on handshakes
  in progress, so slow or garbage peers cannot tie the node up;
* per network source (`mesh.net.sources`): a cap on connections held (nng's connect
  hook turns the rest away), a budget of handshakes started per second, and the
  eviction of a full handshake table's slot from the source holding the most;
* an outbox dials once and never redials (`mesh.net.sockets`): a session whose
  connection is lost is closed at the next timer pass, and the next use of that
  mailbox dials afresh; `connect` retries a handshake that timed out, with backoff;
* heartbeats on idle sessions; a silent peer's session is closed (the rules are
  `mesh.net.liveness`'s, a pure core: this shell executes its actions);
* the application takes frames from `incoming()`, or has them handled by `serve`:
  then the task that reads a packet runs the handler itself when no other frame is
  being handled (no hand-off between tasks), and another task reads meanwhile (the
  frames wait in a `mesh.net.inbox.Inbox`).

A peer's bad input ends that peer's session (logged with the peer and reason)
and never the node. (docs/ARCHITECTURE.md §2, §8)
"""

from __future__ import annotations

import logging
import select
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import asynccontextmanager

import pynng
import trio

from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import Identity
from mesh.net.inbox import Handler
from mesh.net.liveness import Deliver, End, Liveness, Send, handshake_expired, next_pass, on_frames
from mesh.net.peer import (
    ConnectError,
    NodeConfig,
    Outbox,
    PeerSession,
    SessionClosed,
)
from mesh.net.sockets import MailboxReader, mailbox_socket
from mesh.net.sources import SourceTable, eviction_victim, source_of
from mesh.net.tables import NodeStatistics, NodeTables, SessionEvent
from mesh.session import (
    DATA,
    DEFAULT_SITE,
    HS1,
    HS2,
    HS3,
    INDEX_LEN,
    MAX_PACKET_SIZE,
    REJECT,
    Handshake,
    LocalIdentity,
    packet_kind,
    receiver_index,
    reject_packet,
    reject_reason,
)
from mesh.session_frames import Heartbeat, ProfileSummary
from mesh.wire import Frame

log = logging.getLogger("mesh.transport")

LOST_POLL = 0.05  # seconds between looks at a connecting handshake's outbox
TIMER_PASSES = 8
"""At most this many timer passes per tick (a tick: a quarter of the heartbeat interval
or handshake timeout, whichever is shorter); at least one."""
MAILBOX_QUEUE = 1
"""Packets nng queues in the mailbox ahead of the reader. Past it, each connection
waits its turn with one packet, so a quiet peer's packet waits behind at most this
many from a flood plus one per other connection -- round robin, as `Pull0` was. Under
a one-source HS1 flood (`transport/test_sources.py`, five connects of an honest peer)
the test took 2-3 s at 1, 4-10 s at 8 and failed its 2 s handshakes at 128; a lone
sender still gets ~28 000 raw messages/s through at 1 (64 000 at 128)."""


class Node:
    """An agent's messaging endpoint: one mailbox, many authenticated sessions.

    Create with `open_node`. Frames from every peer arrive through `incoming()`
    as ``(peer_id, frame)``, or go to the handler given to `serve`; heartbeats and
    goodbyes are handled here. What it keeps is its `tables` (`NodeTables`), whose
    queries it answers with.
    """

    def __init__(self, tables: NodeTables) -> None:
        """Use `open_node` instead (it builds the tables around the mailbox and the
        `SourceTable` nng's hooks fill)."""
        self.tables = tables
        self.local = tables.local
        self.config = config = tables.config
        self._liveness = Liveness(config.heartbeat_interval, config.dead_after)
        self._limits_reported = (0, 0)  # (connections refused, handshakes limited) logged

    # ------------------------------------------------------------------ queries

    @property
    def address(self) -> str:
        """This node's mailbox address, to give to peers."""
        return self.local.mailbox

    @property
    def peer_id(self) -> str:
        """This node's peer id."""
        return self.local.identity.peer_id

    def statistics(self) -> NodeStatistics:
        """A frozen snapshot of the node's counters and table sizes."""
        return self.tables.statistics()

    def connections_from(self, source: str) -> int:
        """How many connections to the mailbox `source` holds (`mesh.net.sources`)."""
        return self.tables.connections_from(source)

    def watch_sessions(
        self, buffer: int = 256, *, replay: bool = False
    ) -> trio.MemoryReceiveChannel[SessionEvent]:
        """Sessions up and down from now on (`NodeTables.watch_sessions`)."""
        return self.tables.watch_sessions(buffer, replay=replay)

    def session(self, peer_id: str) -> PeerSession | None:
        """The newest live session with `peer_id`, if any."""
        return self.tables.session(peer_id)

    def sessions(self) -> list[PeerSession]:
        """Every live session."""
        return self.tables.sessions()

    def hang_up(self, peer_id: str, reason: str) -> bool:
        """End the session with `peer_id` without waiting (`NodeTables.hang_up`)."""
        return self.tables.hang_up(peer_id, reason)

    def incoming(self) -> AsyncIterator[tuple[str, Frame]]:
        """Application frames from every peer, in arrival order per peer."""
        return self.tables.incoming()

    async def receive(self) -> tuple[str, Frame]:
        """The next application frame and the peer id that sent it."""
        return await self.tables.receive()

    # ------------------------------------------------------------------ sessions

    async def connect(
        self,
        mailbox: str,
        *,
        expect_peer: str | None = None,
        attempts: int | None = None,
    ) -> PeerSession:
        """Handshake with the node at `mailbox` and return the live session.

        `expect_peer` pins the identity we must meet (e.g. the id a discovery
        announcement claimed). Timeouts are retried with backoff; an identity or
        protocol failure is not, and raises `ConnectError` at once.
        """
        attempts = attempts or self.config.connect_attempts
        delay = self.config.reconnect_min_ms / 1000
        for attempt in range(1, attempts + 1):
            result = await self._connect_once(mailbox, expect_peer)
            if isinstance(result, PeerSession):
                return result
            if attempt == attempts or not isinstance(result, TimeoutError):
                raise ConnectError(f"{mailbox}: {result}")
            log.info("handshake with %s timed out (attempt %d); retrying", mailbox, attempt)
            await trio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_ms / 1000)
        raise AssertionError("unreachable")

    async def _connect_once(self, mailbox: str, expect_peer: str | None) -> object:
        handshake = Handshake(
            self.local, initiator=True, allow=self.tables.allow, expect_peer=expect_peer
        )
        outbox = self.tables.acquire(mailbox)
        done_send, done_recv = trio.open_memory_channel[object](1)
        self.tables.initiating[handshake.index] = (handshake, outbox, done_send)
        result: object = TimeoutError("handshake timed out")
        registered: PeerSession | None = None  # after HS2, before the responder confirms
        try:
            await outbox.write(handshake.start())
            with trio.move_on_after(self.config.handshake_timeout):
                outcome = await _unless_lost(outbox, done_recv.receive)
                if isinstance(outcome, PeerSession):
                    # XX puts our proof in the last message: wait for the
                    # responder's first authenticated packet (or its REJECT).
                    registered = outcome
                    outcome = await self._confirmation(outcome)
                result = outcome
        finally:
            self.tables.initiating.pop(handshake.index, None)
            if registered is not None and result is not registered:
                # Unconfirmed (the responder never finished: evicted, lost): the
                # session ends, and with it its hold on the outbox.
                self.tables.drop(registered, f"handshake not confirmed: {result}")
            elif registered is None:
                self.tables.release(outbox)
        if isinstance(result, TimeoutError):
            self.tables.counters.handshakes_timed_out += 1
        return result

    async def _confirmation(self, peer: PeerSession) -> object:
        async with trio.open_nursery() as nursery:

            async def wait_closed() -> None:
                await peer.closed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_closed)
            await peer.confirmed.wait()
            nursery.cancel_scope.cancel()
        if peer.confirmed.is_set():
            return peer
        return ConnectionRefusedError(peer.close_reason)

    # ------------------------------------------------------------------ receive side

    async def run_receiver(self) -> None:
        """Read the mailbox until cancelled, dispatching every packet (`open_node`
        runs this; `serve` runs a second one that also handles frames)."""
        await self._read_and_handle()

    async def serve(self, handler: Handler) -> None:
        """Until cancelled, `await handler(peer_id, frame, last)` for every application
        frame, one at a time, in arrival order per peer. Use instead of `incoming()`.
        `last` is the end-of-burst signal: no frame waits behind this one, so a handler
        can end a batch there (a group commit) rather than wait for more.

        Whichever task reads a packet (this one or the node's receiver) runs the
        handler itself if no other frame is being handled, and lets the other task
        read on meanwhile: a lone request costs no hand-off between tasks, and a
        handler that waits (on the chain, on a peer) never stops the node receiving.
        Frames that arrive while the handler runs queue up and are handled next.
        The handler may run in the node's own task, outside the caller's cancel
        scopes: cancelling `serve` stops new frames from reaching it, and a handler
        still running then is cancelled when the node closes.
        """
        inbox = self.tables.inbox
        if inbox.handler is not None:
            raise RuntimeError("this node is already being served")
        inbox.handler = handler
        try:
            await self._read_and_handle()
        finally:
            inbox.handler = None

    async def _read_and_handle(self) -> None:
        """Take turns at reading the mailbox; between turns, handle what was queued.

        nng keeps its receive fd readable while a message waits, so after each packet
        a zero-timeout poll of that fd tells whether to read on (a burst, up to 256
        before letting other tasks run) or to stop -- without a scheduler pass per
        packet, and cheaper than trying an empty read (1.2 us against 2.8 here). The
        whole burst is queued before any of it is handled, so a handler can tell the
        last frame of a burst (the handler's `last`).
        """
        fd = self.tables.mailbox.recv_fd
        more = select.poll()
        more.register(fd, select.POLLIN)
        reader = MailboxReader(self.tables.mailbox)
        inbox = self.tables.inbox
        while True:
            await inbox.handle_queued()
            await inbox.take_turn()
            try:
                await trio.lowlevel.wait_readable(fd)  # also this loop's checkpoint
                for _ in range(256):
                    packet = reader.read_nowait()
                    if packet is None:
                        break
                    self.tables.counters.packets_received += 1
                    await self._dispatch(*packet)
                    if not more.poll(0):
                        break
            finally:
                inbox.reading.release()  # to the other reader, if one waits

    async def _dispatch(self, packet: bytes, connection: int) -> None:
        kind = packet_kind(packet)
        if kind != HS1 and len(packet) < 1 + INDEX_LEN:
            kind = 0  # too short to name a receiver: garbage
        if kind == DATA:
            await self._on_data(packet)
        elif kind == HS1:
            self._on_hs1(packet, self.tables.sources.source(connection))
        elif kind == HS2:
            self._on_hs2(packet)
        elif kind == HS3:
            self._on_hs3(packet)
        elif kind == REJECT:
            self._on_reject(packet)
        else:
            self.tables.counters.packets_dropped += 1

    async def _on_data(self, packet: bytes) -> None:
        peer = self.tables.live.get(receiver_index(packet))
        if peer is None or peer.hanging_up:
            self.tables.counters.packets_dropped += 1
            return
        try:
            frames = peer.core.open(packet)
        except RemoteProtocolError as exc:
            self.tables.counters.sessions_failed += 1
            log.warning("session with %s ended: %s", peer.peer_id, exc)
            self.tables.drop(peer, f"protocol error: {exc}")
            return
        except LocalProtocolError:
            self.tables.counters.packets_dropped += 1  # a straggler for a session we killed
            return
        peer.last_received = trio.current_time()
        peer.confirmed.set()
        for action in on_frames(frames):  # the rules: mesh.net.liveness
            if isinstance(action, Deliver):
                await self.tables.inbox.deliver(peer.peer_id, action.frame)
            elif isinstance(action, Send):
                peer.send_nowait(action.frame)
            else:
                self.tables.drop(peer, action.reason)

    def _on_hs1(self, packet: bytes, source: str | None) -> None:
        now = trio.current_time()
        if source is not None and not self.tables.handshake_budgets.take(source, 1, now):
            self.tables.counters.handshakes_limited += 1  # before any work: no crypto, no dial
            return
        try:
            handshake, hs2, reply_to = Handshake.respond(
                self.local, packet, allow=self.tables.allow
            )
        except RemoteProtocolError as exc:
            self._fail_handshake("HS1", exc)
            return
        if len(self.tables.responding) >= self.config.max_pending_handshakes:
            # Evict rather than refuse the newest, and from the source holding the
            # most slots: a flood from one machine evicts its own handshakes.
            pending = ((index, entry[3]) for index, entry in self.tables.responding.items())
            self.tables.release(self.tables.responding.pop(eviction_victim(pending))[2])
            self.tables.counters.handshakes_evicted += 1
        outbox = self.tables.acquire(reply_to)
        deadline = now + self.config.handshake_timeout
        self.tables.responding[handshake.index] = (handshake, deadline, outbox, source)
        self.tables.acquire(reply_to)  # the write below holds its own reference
        self.tables.nursery.start_soon(self._send_and_release, deadline, outbox, hs2)

    def _on_hs2(self, packet: bytes) -> None:
        entry = self.tables.initiating.pop(receiver_index(packet), None)
        if entry is None:
            self.tables.counters.packets_dropped += 1
            return
        handshake, outbox, done = entry
        try:
            hs3, core = handshake.on_hs2(packet)
        except RemoteProtocolError as exc:
            self._fail_handshake(outbox.mailbox, exc)
            done.send_nowait(exc)
            return
        peer = self.tables.register(core, outbox, first_packet=hs3)
        done.send_nowait(peer)

    def _on_hs3(self, packet: bytes) -> None:
        entry = self.tables.responding.pop(receiver_index(packet), None)
        if entry is None:
            self.tables.counters.packets_dropped += 1
            return
        handshake, deadline, outbox, _ = entry
        try:
            core = handshake.on_hs3(packet)
        except RemoteProtocolError as exc:
            self._fail_handshake(outbox.mailbox, exc)
            refusal = reject_packet(handshake.remote_index, str(exc))
            self.tables.nursery.start_soon(self._send_and_release, deadline, outbox, refusal)
            return
        peer = self.tables.register(core, outbox, first_packet=None)
        peer.confirmed.set()
        peer.send_nowait(Heartbeat(0, reply=True))  # confirms the session to the initiator

    def _on_reject(self, packet: bytes) -> None:
        peer = self.tables.live.get(receiver_index(packet))
        if peer is None or peer.confirmed.is_set():
            self.tables.counters.packets_dropped += 1
            return
        self.tables.counters.handshakes_failed += 1
        reason = f"refused by peer: {reject_reason(packet)}"
        log.warning("handshake with %s failed: %s", peer.outbox.mailbox, reason)
        self.tables.drop(peer, reason)

    def _fail_handshake(self, where: str, exc: RemoteProtocolError) -> None:
        self.tables.counters.handshakes_failed += 1
        log.warning("handshake with %s failed: %s", where, exc)

    async def _send_and_release(self, deadline: float, outbox: Outbox, packet: bytes) -> None:
        """Write a handshake packet by `deadline`, then drop our reference."""
        try:
            with trio.move_on_at(deadline):
                await outbox.write(packet)
        except SessionClosed:
            pass  # node shutting down
        finally:
            self.tables.release(outbox)

    # ------------------------------------------------------------------ timers

    async def run_timers(self) -> None:
        """Expire stalled handshakes, send heartbeats, close silent or cut-off sessions:
        at the earliest deadline, and at least every tick (`next_pass`)."""
        tick = min(self.config.heartbeat_interval, self.config.handshake_timeout) / 4
        wake = trio.current_time() + tick
        while True:
            await trio.sleep_until(wake)
            now = trio.current_time()
            self.handle_timer(now)
            wake = next_pass(now, self._deadlines(), most=tick, least=tick / TIMER_PASSES)

    def _deadlines(self) -> Iterator[float]:
        """When each handshake we answered expires, and each session next needs a
        heartbeat or is silent too long."""
        for _, deadline, _, _ in self.tables.responding.values():
            yield deadline
        for peer in self.tables.live.values():
            yield self._liveness.deadline(peer.last_received, peer.last_sent)

    def handle_timer(self, now: float) -> None:
        """One pass of the timer work at time `now` (also called by tests)."""
        for index, (_, deadline, outbox, _) in list(self.tables.responding.items()):
            if handshake_expired(now, deadline, outbox.lost):  # the rules: mesh.net.liveness
                del self.tables.responding[index]
                self.tables.counters.handshakes_timed_out += 1
                self.tables.release(outbox)
        for peer in list(self.tables.live.values()):  # the rules: mesh.net.liveness
            lost = peer.outbox.lost  # never redialled (`mesh.net.sockets`)
            action = self._liveness.check(now, peer.last_received, peer.last_sent, lost)
            if isinstance(action, End):
                log.warning(
                    "session with %s (%s): %s",
                    peer.peer_id,
                    peer.outbox.mailbox,
                    action.warn,
                    extra={"peer": peer.peer_id},  # a JSON log line names the peer
                )
                self.tables.drop(peer, action.reason)
            elif isinstance(action, Send) and peer.send_nowait(action.frame):
                peer.last_sent = now
        self._report_limits()

    def _report_limits(self) -> None:
        """Log what the per-source limits turned away since the last pass, if anything."""
        counts = (self.tables.sources.refused, self.tables.counters.handshakes_limited)
        refused, limited = (a - b for a, b in zip(counts, self._limits_reported, strict=True))
        if refused or limited:
            log.warning(
                "per-source limits turned away %d connections and %d handshakes",
                refused,
                limited,
            )
            self._limits_reported = counts

    async def close_all(self) -> None:
        """Say goodbye on every session, for at most `close_grace`."""
        with trio.move_on_after(self.config.close_grace) as scope:
            scope.shield = True
            async with trio.open_nursery() as nursery:
                for peer in list(self.tables.live.values()):
                    nursery.start_soon(peer.aclose, "node shutting down")


@asynccontextmanager
async def open_node(
    identity: Identity,
    listen: str = "tcp://127.0.0.1:0",
    *,
    profile: ProfileSummary | None = None,
    allow: Collection[str] | None = None,
    config: NodeConfig | None = None,
    advertise: str | None = None,
    site: str = DEFAULT_SITE,
    network: str = "",
) -> AsyncIterator[Node]:
    """Run a node listening on `listen` for the duration of the block.

    `allow` restricts sessions to these peer ids (``"*"`` for anyone); None
    allows anyone. Only peers of the same `site` and `network` (the chain's genesis
    block hash) get a session: others are refused in the handshake, both ways.
    `advertise` is the mailbox peers should dial when it differs from the listen
    address (port forwarding, a relay). On exit every session is closed politely and
    every socket is closed.
    """
    config = config or NodeConfig()
    sock = mailbox_socket(recv_max_size=MAX_PACKET_SIZE, recv_buffer_size=MAILBOX_QUEUE)
    sources = SourceTable(config.max_connections_per_source)
    sock.add_pre_pipe_connect_cb(lambda pipe: _admit(sources, pipe))
    sock.add_post_pipe_remove_cb(lambda pipe: sources.remove(pipe.id))
    try:
        listener = sock.listen(listen)
        mailbox = advertise or _resolved(listen, str(listener.local_address))
        local = LocalIdentity.create(identity, mailbox, profile, site=site, network=network)
        async with trio.open_nursery() as nursery:
            node = Node(NodeTables(local, sock, nursery, config, allow, sources))
            nursery.start_soon(node.run_receiver)
            nursery.start_soon(node.run_timers)
            try:
                yield node
            finally:
                await node.close_all()
                nursery.cancel_scope.cancel()
        for outbox in list(node.tables.outboxes.values()):
            outbox.close()
    finally:
        sock.close()


async def _unless_lost(outbox: Outbox, receive: Callable[[], Awaitable[object]]) -> object:
    """What `receive` returns, or a `TimeoutError` as soon as `outbox` is lost (a
    refused or dropped connection: waiting out the handshake timeout gains nothing)."""
    result: object = TimeoutError(f"connection to {outbox.mailbox} refused or lost")
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while not outbox.lost:
                await trio.sleep(LOST_POLL)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        result = await receive()
        nursery.cancel_scope.cancel()
    return result


def _admit(sources: SourceTable, pipe: pynng.Pipe) -> None:
    """nng's hook for each new connection to the mailbox (on an nng thread): turn it
    away if its source already holds its share of connections."""
    try:
        source = source_of(pipe.remote_address)
    except pynng.NNGException:
        return  # gone already
    if not sources.admit(pipe.id, source):
        pipe.close()


def _resolved(listen: str, bound: str) -> str:
    """The dialable mailbox URL for a listen address (resolves port 0)."""
    if listen.startswith("tcp://") and listen.endswith(":0"):
        return f"tcp://{bound}"
    return listen


__all__ = [
    "ConnectError",
    "Handler",
    "Node",
    "NodeConfig",
    "NodeStatistics",
    "PeerSession",
    "SessionClosed",
    "SessionEvent",
    "open_node",
]
