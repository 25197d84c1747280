"""One session with a peer as a node carries it: its send paths and its outbox.

`Outbox` is one nng connection (`mesh.net.sockets.outbox_socket`) to a remote mailbox,
shared by every session to that mailbox and driven by fd polling and non-blocking
sends; it dials once and is `lost` when that connection fails or ends.
`PeerSession` is what the application holds for a live session: `send` (inline when
idle, else queued and coalesced by the session's sender task), `send_many` (a batch
sealed into as few packets as possible), `aclose`. Frames leave in the order they
were given on every path. The node (`mesh.net.node`) creates, tables and ends
these; this module holds no tables and makes no protocol decisions (those are
`mesh.session`'s). (docs/ARCHITECTURE.md §2, §8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pynng
import trio

from mesh.errors import LocalProtocolError, MeshError
from mesh.net.sockets import ConnectionWatch, outbox_socket
from mesh.session import PeerInfo, Session
from mesh.session_frames import Close
from mesh.wire import Frame, encode

IDLE_FAST_PATH = 0.0002
"""Seconds a session must have been quiet for `send` to write inline.

Shorter than a LAN round trip through two agents (~0.4 ms here), so a request and
its reply each go out inline; far longer than the gap between sends in a stream
(a few microseconds), which keeps streams on the coalescing sender task."""


class ConnectError(MeshError):
    """A session could not be established (timeout, refusal, bad identity)."""


class SessionClosed(MeshError):
    """The session is closed; nothing more can be sent on it."""


@dataclass(frozen=True)
class NodeConfig:
    """Limits and timers of a node; the defaults suit a LAN of machines."""

    handshake_timeout: float = 5.0
    connect_timeout: float = 2.0  # an outbox not connected by then is lost
    max_pending_handshakes: int = 64
    send_queue_frames: int = 1024
    coalesce_bytes: int = 60_000
    incoming_queue_frames: int = 4096
    heartbeat_interval: float = 5.0
    dead_after: float = 15.0
    connect_attempts: int = 3
    reconnect_min_ms: int = 100
    reconnect_max_ms: int = 5_000
    close_grace: float = 0.5
    # Per network source (an IPv4 address, an IPv6 /64): `mesh.net.sources`.
    max_connections_per_source: int = 128
    handshakes_per_source_per_s: float = 100.0
    handshake_burst_per_source: float = 200.0


class Outbox:
    """One connection to a remote mailbox, shared by the sessions to it.

    Reference counted by its users (pending handshakes, sessions, in-flight
    handshake writes); the socket closes when the last one lets go.
    """

    def __init__(self, mailbox: str, config: NodeConfig) -> None:
        self.mailbox = mailbox
        self.users = 0
        self._closed = False
        self._lock = trio.Lock()
        self._sock = outbox_socket(send_buffer_size=64)
        self._send_fd: int = self._sock.send_fd
        self._watch = ConnectionWatch(self._sock)
        self.created = trio.current_time()
        self._give_up_at = self.created + config.connect_timeout
        # The one attempt starts here, on the thread that will close the socket
        # (`mesh.net.sockets`: why).
        self._sock.dial(mailbox, block=False)

    @property
    def lost(self) -> bool:
        """Whether the connection ended, or did not come up within `connect_timeout`.

        An outbox never redials: a lost one stays with the sessions holding it (the
        node closes them at its next timer pass) and the next user gets a fresh one.
        """
        watch = self._watch
        return watch.lost or (not watch.opened and trio.current_time() >= self._give_up_at)

    async def write(self, packet: bytes) -> None:
        """Queue one packet on the socket, waiting (by fd) while it is full.

        Raises `SessionClosed` if the outbox is closed meanwhile.
        """
        async with self._lock:
            while True:
                if self._closed:
                    raise SessionClosed(f"outbox to {self.mailbox} is closed")
                try:
                    self._sock.send(packet, block=False)
                except pynng.TryAgain:
                    try:
                        await trio.lowlevel.wait_readable(self._send_fd)
                    except trio.ClosedResourceError:
                        raise SessionClosed(f"outbox to {self.mailbox} is closed") from None
                else:
                    return

    def write_nowait(self, packet: bytes) -> bool:
        """Write at once if no one else is writing and the socket has room."""
        if self._closed or self._lock.locked():
            return False
        try:
            self._sock.send(packet, block=False)
        except pynng.TryAgain:
            return False
        return True

    def close(self) -> None:
        """Close the socket, waking any writer first (Trio must hear of it)."""
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._send_fd)
        self._sock.close()


class PeerSession:
    """A live session with one peer, as the application sees it."""

    def __init__(
        self,
        config: NodeConfig,
        core: Session,
        outbox: Outbox,
        drop: Callable[[PeerSession, str], None],
        first_packet: bytes | None = None,
    ) -> None:
        """Wrap a core session; `Node` creates these (`drop` ends it in the node).

        `first_packet` (the initiator's HS3) is written by the sender task before any
        frame: until then every send queues behind it, so no frame can reach the peer
        before the handshake that lets it open them.
        """
        self._config = config
        self._drop = drop
        self.core = core
        self.outbox = outbox
        self.closed = trio.Event()
        self.confirmed = trio.Event()
        self.close_reason = ""
        self._hanging_up = False
        self._send, self._queue = trio.open_memory_channel[bytes](config.send_queue_frames)
        self._scope = trio.CancelScope()
        # Frames handed to the queue and not yet written. A frame can pass straight
        # to the waiting sender task without ever sitting in the queue's buffer, so
        # the buffer's size cannot tell whether the inline path would overtake it.
        self._first_packet = first_packet
        self._unsent = 0 if first_packet is None else 1  # the first packet counts
        now = trio.current_time()
        self.last_received = now
        self.last_sent = now

    @property
    def peer(self) -> PeerInfo:
        """Who the peer proved to be, and what it claimed."""
        return self.core.peer

    @property
    def peer_id(self) -> str:
        """The peer's id (compressed identity key, hex)."""
        return self.core.peer.peer_id

    async def send(self, frame: Frame) -> None:
        """Send a frame; waits while the session's send queue is full.

        On an idle session (nothing queued or being sent, nothing sent for
        `IDLE_FAST_PATH`) the frame is sealed and written right here, saving the
        hand-off to the sender task; under load it joins the queue and is coalesced
        with the frames around it into one packet.
        Either way frames leave in the order `send` was called.
        """
        data = encode(frame)
        if self.closed.is_set() or self._hanging_up:
            raise SessionClosed(f"session with {self.peer_id} closed: {self.close_reason}")
        now = trio.current_time()
        if self._unsent == 0 and now - self.last_sent >= IDLE_FAST_PATH:
            packet = self.core.seal_encoded([data])
            self.last_sent = now
            if not self.outbox.write_nowait(packet):
                await self.outbox.write(packet)
            return
        await self._enqueue(data)

    async def send_many(self, frames: Sequence[Frame]) -> None:
        """Send frames in order, as few packets as possible; waits while the queue is full.

        For a caller that already holds a batch (a group commit's acks or payments):
        with nothing queued or being sent, the frames are sealed here into packets of
        up to `coalesce_bytes` and written at once -- one nng message and no hand-off
        to the sender task for the whole batch. Otherwise they join the queue behind
        what is there, like `send`.
        """
        encoded = [encode(frame) for frame in frames]
        if self.closed.is_set() or self._hanging_up:
            raise SessionClosed(f"session with {self.peer_id} closed: {self.close_reason}")
        if self._unsent == 0:
            limit = self._config.coalesce_bytes
            start = 0
            while start < len(encoded):
                end, size = start + 1, len(encoded[start])
                while end < len(encoded) and size + len(encoded[end]) <= limit:
                    size += len(encoded[end])
                    end += 1
                packet = self.core.seal_encoded(encoded[start:end])
                self.last_sent = trio.current_time()
                if not self.outbox.write_nowait(packet):
                    await self.outbox.write(packet)
                start = end
            return
        for data in encoded:
            await self._enqueue(data)

    async def _enqueue(self, data: bytes) -> None:
        """Hand an encoded frame to the sender task (waits while the queue is full)."""
        self._unsent += 1
        try:
            await self._send.send(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._unsent -= 1
            raise SessionClosed(
                f"session with {self.peer_id} closed: {self.close_reason}"
            ) from None
        except BaseException:  # cancelled: Trio guarantees the frame was not queued
            self._unsent -= 1
            raise

    def send_nowait(self, frame: Frame) -> bool:
        """Queue a frame if there is room; False if the queue is full or closed."""
        try:
            self._send.send_nowait(encode(frame))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self._unsent += 1
        return True

    @property
    def hanging_up(self) -> bool:
        """Whether the goodbye is queued: nothing more is sent or taken from the peer."""
        return self._hanging_up

    def hang_up(self, reason: str) -> None:
        """Queue the goodbye behind the frames already queued and take no more to send.

        Never waits: the sender task writes the goodbye and the session then ends
        (`aclose` waits for that, `Node.hang_up` has it waited for in the background).
        """
        if self.closed.is_set() or self._hanging_up:
            return
        self.send_nowait(Close(reason))
        self._hanging_up = True
        self.close_reason = reason
        self._send.close()

    async def aclose(self, reason: str = "closed by application") -> None:
        """Say goodbye and end the session; frames already queued are sent first.

        Waits up to `close_grace` for the goodbye to be written (it may not be, to a
        peer that stopped reading), then ends the session either way.
        """
        if self.closed.is_set():
            return
        self.hang_up(reason)
        with trio.move_on_after(self._config.close_grace):
            await self.closed.wait()
        self._drop(self, reason)

    async def run_sender(self) -> None:
        """Write the first packet, then drain the send queue into packets, coalescing
        under load."""
        limit = self._config.coalesce_bytes
        with self._scope:
            if self._first_packet is not None:
                await self.outbox.write(self._first_packet)
                self._first_packet = None
                self._unsent -= 1
            async for data in self._queue:
                batch, size = [data], len(data)
                while size < limit:
                    try:
                        more = self._queue.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    size += len(more)
                try:
                    packet = self.core.seal_encoded(batch)
                except LocalProtocolError:
                    break
                self.last_sent = trio.current_time()
                await self.outbox.write(packet)
                self._unsent -= len(batch)
            self.closed.set()

    def stop(self, reason: str) -> None:
        """End the session here (the node calls this): stop sending, wake waiters."""
        if not self.closed.is_set():
            self.close_reason = reason
        self._scope.cancel()
        self._send.close()
        self.closed.set()


__all__ = ["IDLE_FAST_PATH", "ConnectError", "NodeConfig", "Outbox", "PeerSession", "SessionClosed"]
