"""An MQTT 3.1.1 client for Trio: paho-mqtt 2.x driven through its socket hooks.

paho keeps the protocol (packets, keepalive, QoS flows); this module moves its bytes from
Trio, with no network thread: paho tells us when it has something to write
(``on_socket_register_write``) and when its socket opens or closes; Trio waits on the
socket (`trio.lowlevel.wait_readable` / `wait_writable`) and calls ``loop_read``,
``loop_write`` and, every second, ``loop_misc``. Only the TCP connect runs in a worker
thread (``trio.to_thread``), bounded by ``connect_timeout``.

Guarantees:

- every failure is an `MqttError` with a one-line reason (bad URL, unreachable broker,
  refused CONNECT, timeout, connection lost, not connected);
- `MqttClient.disconnect` sends DISCONNECT, so the broker drops the Will; cancellation
  (or `abort`) closes the socket without it, so the broker publishes the Will;
- `MqttClient.run` keeps a connection: it connects (a new Will each time), runs the
  caller's session next to the socket pump in one nursery, and after a failure waits
  0.5 s, doubling to 10 s, before the next attempt; no task outlives it;
- memory is bounded: at most `MqttOptions.max_unsent` publishes wait to be written
  (`publish_nowait` raises `trio.WouldBlock` beyond), and each subscription's channel
  holds at most its ``buffer`` messages (the broker's extra ones are dropped, counted).

(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from paho.mqtt.client import (
    Client,
    ConnectFlags,
    MQTTMessage,
    MQTTMessageInfo,
    MQTTv311,
    topic_matches_sub,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mesh.errors import MeshError

DEFAULT_PORT = 1883
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
TICK = 1.0
"""Seconds between two ``loop_misc`` calls (keepalive pings, their timeout)."""


class MqttError(MeshError):
    """The broker cannot be used: the message says why, in one line.

    `connect_sent` is False when the failure came before a CONNECT packet was handed to
    a socket (the broker never saw this attempt: Sparkplug does not count it)."""

    def __init__(self, message: str, *, connect_sent: bool = True) -> None:
        super().__init__(message)
        self.connect_sent = connect_sent


@dataclass(frozen=True)
class BrokerUrl:
    """Where the broker listens: ``mqtt://host[:port]``."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """The broker `url` names; `ValueError` saying what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "mqtt":
            raise ValueError(f"{url!r} is not an mqtt:// URL")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
        if not parts.hostname or parts.username or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{url!r} is not mqtt://host[:port]")
        return cls(parts.hostname, DEFAULT_PORT if port is None else port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"


@dataclass(frozen=True)
class Message:
    """An MQTT application message (received, to publish, or a Will)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class MqttOptions:
    """How to reach and talk to the broker."""

    broker: BrokerUrl
    client_id: str = ""
    """Empty: ``m2mesh-`` and 12 random hex digits, new for each client."""
    username: str = ""
    password: str = ""
    keepalive: int = 30
    connect_timeout: float = 5.0
    max_unsent: int = 10_000


@dataclass(frozen=True)
class MqttStatistics:
    """A snapshot of a client's counters."""

    connected: bool
    connects: int
    published: int
    unsent: int
    """Publishes queued and not yet written (QoS 0) or acknowledged (QoS 1)."""
    received: int
    dropped: int
    last_error: str


Session = Callable[["MqttClient"], Awaitable[None]]


class MqttClient:
    """One MQTT client (a new paho client per connection; see the module docstring)."""

    def __init__(self, options: MqttOptions) -> None:
        self.options = options
        self.client_id = options.client_id or f"m2mesh-{secrets.token_hex(6)}"
        self._paho: Client | None = None
        self._sock: Any = None
        self._trio_thread = 0
        self._wake = trio.Event()
        self._room = trio.Event()
        self._closed = trio.Event()
        self._connack: ReasonCode | None = None
        self._connack_event = trio.Event()
        self._subacks: dict[int, tuple[trio.Event, list[ReasonCode]]] = {}
        self._routes: list[tuple[tuple[str, ...], trio.MemorySendChannel[Message]]] = []
        self._closing = False
        self._error = ""
        self._unsent: deque[MQTTMessageInfo] = deque()
        self._room_wanted = False
        self._driving = False
        self.connects = self.published = self.received = self.dropped = 0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        """Whether a connection is up (CONNACK accepted, socket open)."""
        return self._paho is not None and self._paho.is_connected() and self._sock is not None

    # -- connection -------------------------------------------------------------------------

    async def connect(self, will: Message | None = None) -> None:
        """Open a connection (clean session) with `will`, and wait for the broker's CONNACK."""
        if self._paho is not None:
            raise MqttError("already connected", connect_sent=False)
        self._reset()
        paho = self._paho = self._new_paho(will)
        url = self.options.broker
        up = False
        try:
            try:
                await trio.to_thread.run_sync(
                    paho.connect, url.host, url.port, self.options.keepalive
                )
            except (OSError, ValueError) as exc:
                raise MqttError(f"cannot reach {url}: {exc}", connect_sent=False) from None
            with trio.move_on_after(self.options.connect_timeout):
                await self._drive(self._connack_event)
            code = self._connack
            if code is not None and code.is_failure:
                raise MqttError(f"{url}: CONNECT refused: {code}")
            if code is None or not self.connected:
                raise MqttError(self._error or f"{url}: no CONNACK in time")
            up = True
        finally:
            if not up:
                self.abort()  # cancelled or failed: nothing stays open
        self.connects += 1

    async def serve(self) -> None:
        """Move the connection's bytes until it ends: return after `disconnect`, raise
        `MqttError` when it is lost. Cancelled, it closes the socket (the Will fires)."""
        if self._paho is None:
            raise MqttError("not connected")
        try:
            await self._drive(self._closed)
        finally:
            if not self._closed.is_set():
                self.abort()  # cancelled: no DISCONNECT, so the broker sends the Will
            self._teardown()
        if self._error:
            raise MqttError(self._error)

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Leave cleanly: DISCONNECT (the broker drops the Will), then close."""
        paho = self._paho
        if paho is None or self._sock is None:
            return
        self._closing = True
        paho.disconnect()
        with trio.move_on_after(timeout):
            await self._drive(self._closed)
        if not self._closed.is_set():
            self.abort()
        self._teardown()

    def abort(self) -> None:
        """Close the socket now, without DISCONNECT (the broker will publish the Will);
        `serve` returns."""
        sock, self._sock = self._sock, None
        self._closing = True
        if sock is not None:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self._closed.set()
        self._teardown()

    async def run(
        self,
        session: Session,
        *,
        will: Callable[[], Message | None] | None = None,
        on_down: Callable[[MqttError], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep a connection and run `session(self)` on each one, next to the pump.

        `will()` gives each CONNECT its Will; `on_down(error)` hears of every failed
        attempt and lost connection. When `session` returns, the client disconnects
        cleanly and `run` returns. Started at once; connecting happens after."""
        task_status.started()
        delay = BACKOFF_FIRST
        while True:
            try:
                await self.connect(will() if will is not None else None)
            except MqttError as exc:
                self._down(exc, on_down)
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_for, nursery.cancel_scope)
                    await session(self)
                    await self.disconnect()
            except* MqttError as group:
                self._down(_first(group), on_down)
            else:
                return
            finally:
                self.abort()
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    # -- messages ---------------------------------------------------------------------------

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> None:
        """Queue a publish; `MqttError` if not connected, `trio.WouldBlock` if
        `MqttOptions.max_unsent` publishes already wait to be written."""
        paho = self._paho
        if paho is None or not self.connected:
            raise MqttError("not connected")
        if len(self._unsent) >= self.options.max_unsent and self._trim() >= self.options.max_unsent:
            raise trio.WouldBlock
        info = paho.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish to {topic!r}: {info.rc.name}")
        self._unsent.append(info)
        self.published += 1

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Queue a publish, first waiting for room (see `publish_nowait`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.publish_nowait(topic, payload, qos, retain)
            except trio.WouldBlock:
                self._room_wanted = True
                await self._room.wait()
            else:
                break
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def subscribe(
        self, *filters: str, qos: int = 1, buffer: int = 1024
    ) -> trio.MemoryReceiveChannel[Message]:
        """Subscribe to `filters` and wait for the SUBACK (`serve` must be running); the
        messages that match any of them come once each on the channel returned, which
        ends with the connection."""
        paho = self._paho
        if paho is None or not self.connected:
            raise MqttError("not connected")
        if not filters:
            raise MqttError("subscribe: no topic filter")
        send, receive = trio.open_memory_channel[Message](buffer)
        rc, mid = paho.subscribe([(f, qos) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe {filters[0]!r}: {rc.name}")
        done = self._subacks[mid] = (trio.Event(), [])
        with trio.move_on_after(self.options.connect_timeout):
            await done[0].wait()
        self._subacks.pop(mid, None)
        if not done[0].is_set():
            raise MqttError(f"subscribe {filters[0]!r}: no SUBACK in time")
        refused = [f for f, code in zip(filters, done[1], strict=False) if code.is_failure]
        if refused:
            raise MqttError(f"subscribe {refused[0]!r}: refused by the broker")
        self._routes.append((filters, send))
        return receive

    def statistics(self) -> MqttStatistics:
        """The counters now."""
        return MqttStatistics(
            self.connected,
            self.connects,
            self.published,
            self._trim(),
            self.received,
            self.dropped,
            self.last_error,
        )

    # -- the pump ---------------------------------------------------------------------------

    async def _drive(self, until: trio.Event) -> None:
        """Move bytes until `until` is set or the socket closes; if another task already
        moves them, wait for `until` instead."""
        if self._driving:
            await until.wait()
            return
        self._driving = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, nursery.cancel_scope)
                nursery.start_soon(self._writer, nursery.cancel_scope)
                nursery.start_soon(self._ticker, nursery.cancel_scope)
                await until.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._driving = False

    async def _serve_for(self, session_scope: trio.CancelScope) -> None:
        await self.serve()
        session_scope.cancel()  # a clean end: nothing left for the session to do

    async def _reader(self, done: trio.CancelScope) -> None:
        sock, paho = self._sock, self._paho
        if sock is None or paho is None:  # closed already
            done.cancel()
            return
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                rc = paho.loop_read()
                if self._room_wanted:
                    self._trim()  # PUBACKs may have made room
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                    self._end(f"connection lost ({rc.name})")
                    break
        except (trio.ClosedResourceError, OSError) as exc:
            self._end(f"connection closed ({exc or type(exc).__name__})")
        done.cancel()

    async def _writer(self, done: trio.CancelScope) -> None:
        sock, paho = self._sock, self._paho
        if sock is None or paho is None:  # closed already
            done.cancel()
            return
        try:
            while True:
                while paho.want_write():
                    rc = paho.loop_write()
                    if self._room_wanted:
                        self._trim()
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                        self._end(f"connection lost ({rc.name})")
                        done.cancel()
                        return
                    if paho.want_write():
                        await trio.lowlevel.wait_writable(sock)
                await self._wake.wait()
                self._wake = trio.Event()
        except (trio.ClosedResourceError, OSError) as exc:
            self._end(f"connection closed ({exc or type(exc).__name__})")
        done.cancel()

    async def _ticker(self, done: trio.CancelScope) -> None:
        paho = self._paho
        if paho is None:
            return
        while True:
            await trio.sleep(TICK)
            if paho.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                self._end("connection lost (no answer to keepalive)")
                done.cancel()
                return

    def _end(self, reason: str) -> None:
        if not self._closing and not self._error:
            self._error = f"{self.options.broker}: {reason}"

    # -- paho's callbacks (on the Trio thread, but for socket-open during connect) ----------

    def _new_paho(self, will: Message | None) -> Client:
        paho = Client(
            CallbackAPIVersion.VERSION2, self.client_id, clean_session=True, protocol=MQTTv311
        )
        paho.connect_timeout = self.options.connect_timeout
        if self.options.username:
            paho.username_pw_set(self.options.username, self.options.password or None)
        if will is not None:
            paho.will_set(will.topic, will.payload, will.qos, will.retain)
        paho.on_socket_open = self._on_socket_open
        paho.on_socket_close = self._on_socket_close
        paho.on_socket_register_write = self._on_register_write
        paho.on_connect = self._on_connect
        paho.on_subscribe = self._on_subscribe
        paho.on_message = self._on_message
        return paho

    def _on_socket_open(self, client: Client, userdata: Any, sock: Any) -> None:
        self._sock = sock

    def _on_socket_close(self, client: Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._trio_thread:
            with contextlib.suppress(RuntimeError):  # paho's __del__ after the Trio run ended
                trio.lowlevel.notify_closing(sock)
                self._closed.set()
        self._sock = None

    def _on_register_write(self, client: Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._trio_thread and not self._wake.is_set():
            self._wake.set()

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack = code
        self._connack_event.set()

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        waiting = self._subacks.get(mid)
        if waiting is not None:
            waiting[1].extend(codes)
            waiting[0].set()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self.received += 1
        incoming = Message(message.topic, bytes(message.payload), message.qos, message.retain)
        for filters, channel in self._routes:
            if any(topic_matches_sub(f, incoming.topic) for f in filters):
                try:
                    channel.send_nowait(incoming)
                except (trio.WouldBlock, trio.BrokenResourceError):
                    self.dropped += 1

    # -- bookkeeping ------------------------------------------------------------------------

    def _reset(self) -> None:
        self._trio_thread = threading.get_ident()
        self._wake, self._room, self._closed = trio.Event(), trio.Event(), trio.Event()
        self._connack, self._connack_event = None, trio.Event()
        self._subacks.clear()
        self._closing, self._error = False, ""
        self._unsent.clear()

    def _trim(self) -> int:
        """Forget the publishes written (QoS 0) or acknowledged (QoS 1) at the head of the
        queue (paho finishes them in order, or nearly); how many remain. Counting them
        this way, not in ``on_publish``, spares paho two objects per QoS 0 publish."""
        unsent = self._unsent
        while unsent:
            try:
                if not unsent[0].is_published():
                    break
            except (ValueError, RuntimeError):  # a failed publish: not waiting any more
                pass
            unsent.popleft()
        if self._room_wanted and len(unsent) < self.options.max_unsent:
            self._room.set()
            self._room, self._room_wanted = trio.Event(), False
        return len(unsent)

    def _teardown(self) -> None:
        self._close_routes()
        self._paho = None

    def _close_routes(self) -> None:
        for _, channel in self._routes:
            channel.close()
        self._routes.clear()

    def _down(self, error: MqttError, on_down: Callable[[MqttError], None] | None) -> None:
        self.last_error = str(error)
        if on_down is not None:
            on_down(error)


def _first(group: ExceptionGroup[MqttError]) -> MqttError:
    leaf = group.exceptions[0]
    return leaf if isinstance(leaf, MqttError) else _first(leaf)


__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "DEFAULT_PORT",
    "BrokerUrl",
    "Message",
    "MqttClient",
    "MqttError",
    "MqttOptions",
    "MqttStatistics",
    "Session",
]
