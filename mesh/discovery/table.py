"""The peer table: who is out there, where to reach them, and for how long.

The table maps peer id -> `Peer` (mailbox, addresses, name, services, last seen).
It is fed by verified mDNS announcements (`observe`, `refresh`, `goodbye`) and by
the runtime (`add_static`, `confirm`, `remove`). Everything it holds is a *hint*
until `confirm` records that a session handshake proved the peer id.

Time is injected: every state change takes `now` (seconds on the caller's clock;
the Trio shell passes `trio.current_time()`), and expiry is driven by
`next_deadline()` / `handle_timer(now)`, so tests run it with `MockClock`.
`run_timers` and the `wait_for_*` helpers are the only async parts.

Liveness (why the table, not zeroconf, expires peers)
-----------------------------------------------------
zeroconf raises every received PTR TTL to at least 1125 s, and a browser only
reports a service gone when its PTR expires. A machine that loses power or its
link would linger for ~19 min (75 min with default TTLs). So the table expires
mDNS peers itself: a peer advertised with TTL ``t`` and last heard at ``s`` is
removed at ``s + t`` unless heard again. Listeners do not query to keep a peer:
its owner re-announces its records every 0.4 t (announcer.py), and each of those
multicast answers refreshes every listener at once. Only a peer not heard for
``0.90 t`` (`REFRESH_POINTS`: two announcements lost) gets one rescue query (QM
question for its TXT record), whose answer again reaches every listener.

Removal rules: a goodbye or expiry removes an mDNS peer; a *static* peer (its
mailbox was configured with `add_static`) only loses its mDNS facts, because the
runtime owns its lifetime; `remove(peer_id)` drops any peer and puts a static
mailbox back to pending.

A static peer may be pinned to the id it must prove (``ID@tcp://host:port``,
`parse_static`): the runtime then dials it expecting that id, and no other peer
that claims its mailbox takes its place. (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import trio

from mesh.discovery.records import Announcement
from mesh.identity import parse_peer_id

REFRESH_POINTS = (0.90,)
"""Fractions of the TTL at which a silent peer is re-queried: one rescue query, late,
since its owner's announcements at 0.4 and 0.8 TTL normally refresh it first."""

MAX_PEERS = 4096
"""Most peers the table holds; announcements of new peers beyond it are dropped."""


class Removal(enum.Enum):
    """Why a peer left the table."""

    GOODBYE = "goodbye"
    """Its records were withdrawn (TTL 0) -- the agent shut down cleanly."""
    EXPIRED = "expired"
    """Nothing heard from it for a whole TTL, rescue query included."""
    REMOVED = "removed"
    """The runtime removed it (`PeerTable.remove`)."""


class Refresh(enum.Enum):
    """What `PeerTable.refresh` made of a TXT record seen on the network."""

    REFRESHED = "refreshed"
    """The TXT of a known peer, unchanged: its last-seen time moved on."""
    CHANGED = "changed"
    """A known instance with different TXT data: verify it before using it."""
    UNKNOWN = "unknown"
    """No peer has this instance: verify and resolve it."""


@dataclass(frozen=True)
class Peer:
    """A snapshot of what the table knows about one peer.

    `mailbox` is the URL to dial. `addresses`/`port` are the A/AAAA and SRV data
    (unsigned hints, IPv6 link-local filtered out). `instance` is the mDNS service
    name (None when not learned by mDNS). `confirmed` is True once a handshake
    proved the peer id at `mailbox`. `ttl` is None for peers that do not expire.
    """

    peer_id: str
    mailbox: str
    name: str
    services: str
    addresses: tuple[str, ...]
    port: int | None
    instance: str | None
    static: bool
    confirmed: bool
    last_seen: float
    ttl: float | None

    @property
    def expires_at(self) -> float:
        """When the peer is dropped unless heard from again (inf: never)."""
        return math.inf if self.ttl is None else self.last_seen + self.ttl

    def service_ids(self) -> tuple[str, ...]:
        """The service ids of the ``svc`` summary (``"a=5/s,b=2/call"`` -> ``("a", "b")``)."""
        return tuple(
            item.split("=", 1)[0].strip() for item in self.services.split(",") if item.strip()
        )


@dataclass(frozen=True)
class PeerAdded:
    """A peer entered the table."""

    peer: Peer


@dataclass(frozen=True)
class PeerUpdated:
    """A peer's facts changed (not just its last-seen time)."""

    peer: Peer
    previous: Peer


@dataclass(frozen=True)
class PeerRemoved:
    """A peer left the table."""

    peer: Peer
    reason: Removal


PeerEvent = PeerAdded | PeerUpdated | PeerRemoved


@dataclass(frozen=True)
class TimerActions:
    """What `handle_timer` asks the shell to do."""

    queries: tuple[str, ...]
    """Instance names whose TXT record should be queried (QM) now (rescue queries)."""
    removed: tuple[PeerRemoved, ...]
    """Peers that expired."""


@dataclass(frozen=True)
class TableStatistics:
    """A snapshot of the table's counters."""

    peers: int
    pending_static: int
    added: int
    goodbyes: int
    expired: int
    removed: int
    dropped_full: int
    events_dropped: int


@dataclass
class _Entry:
    peer: Peer
    txt: bytes | None = None
    queries_sent: int = 0

    def next_deadline(self) -> float:
        ttl = self.peer.ttl
        if ttl is None:
            return math.inf
        if self.queries_sent < len(REFRESH_POINTS):
            return self.peer.last_seen + ttl * REFRESH_POINTS[self.queries_sent]
        return self.peer.last_seen + ttl


class PeerTable:
    """Peer id -> `Peer`, with TTL expiry, static peers and async waiters."""

    def __init__(self, *, own_peer_id: str | None = None, max_peers: int = MAX_PEERS) -> None:
        self._own = own_peer_id
        self._max_peers = max_peers
        self._entries: dict[str, _Entry] = {}
        self._by_instance: dict[str, str] = {}
        self._static: dict[str, str | None] = {}  # mailbox -> the id confirmed there
        self._pinned: dict[str, str] = {}  # mailbox -> the only id it may confirm
        self._changed = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[PeerEvent]] = []
        self._counts = dict.fromkeys(("added", "goodbyes", "expired", "removed"), 0)
        self._dropped_full = 0
        self._events_dropped = 0

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def __iter__(self) -> Iterator[Peer]:
        return iter([entry.peer for entry in self._entries.values()])

    @property
    def max_peers(self) -> int:
        """Most peers the table holds."""
        return self._max_peers

    def get(self, peer_id: str) -> Peer | None:
        """The peer with this id, or None."""
        entry = self._entries.get(peer_id)
        return entry.peer if entry else None

    def by_instance(self, instance: str) -> Peer | None:
        """The peer advertised under this mDNS instance name, or None."""
        peer_id = self._by_instance.get(instance.lower())
        return None if peer_id is None else self._entries[peer_id].peer

    def snapshot(self) -> Mapping[str, Peer]:
        """A copy of the table: peer id -> `Peer`."""
        return {peer_id: entry.peer for peer_id, entry in self._entries.items()}

    def pending_static(self) -> tuple[tuple[str, str | None], ...]:
        """Static mailboxes no handshake has confirmed yet, each with the id it is pinned
        to (or None): the runtime should dial them, expecting that id."""
        return tuple(
            (mailbox, self._pinned.get(mailbox))
            for mailbox, peer_id in self._static.items()
            if peer_id is None
        )

    def statistics(self) -> TableStatistics:
        """A frozen snapshot of the table's counters."""
        return TableStatistics(
            peers=len(self._entries),
            pending_static=len(self.pending_static()),
            dropped_full=self._dropped_full,
            events_dropped=self._events_dropped,
            **self._counts,
        )

    # ------------------------------------------------------------------ mDNS input

    def observe(
        self,
        announcement: Announcement,
        *,
        txt: bytes,
        addresses: tuple[str, ...],
        port: int | None,
        ttl: float,
        now: float,
    ) -> PeerEvent | None:
        """Record a *verified* announcement; returns the event it caused, if any.

        `txt` is the TXT data it was verified from (later `refresh` calls compare
        against it), `ttl` the TTL of that record in seconds.
        """
        peer_id = announcement.peer_id
        if peer_id == self._own:
            return None
        instance = announcement.instance
        entry = self._entries.get(peer_id)
        if entry is None:
            if len(self._entries) >= self._max_peers:
                self._dropped_full += 1
                return None
            peer = Peer(
                peer_id=peer_id,
                mailbox=announcement.mailbox,
                name=announcement.name,
                services=announcement.services,
                addresses=addresses,
                port=port,
                instance=instance,
                static=False,
                confirmed=False,
                last_seen=now,
                ttl=ttl,
            )
            self._entries[peer_id] = _Entry(peer, txt)
            self._by_instance[instance] = peer_id
            self._counts["added"] += 1
            return self._emit(PeerAdded(peer))
        previous = entry.peer
        peer = replace(
            previous,
            mailbox=announcement.mailbox,
            name=announcement.name,
            services=announcement.services,
            addresses=addresses or previous.addresses,
            port=port if port is not None else previous.port,
            instance=instance,
            # A handshake confirmed the id at a mailbox; a new mailbox needs a new one.
            confirmed=previous.confirmed and previous.mailbox == announcement.mailbox,
            last_seen=now,
            ttl=ttl,
        )
        entry.peer, entry.txt, entry.queries_sent = peer, txt, 0
        self._by_instance[instance] = peer_id
        if replace(peer, last_seen=previous.last_seen, ttl=previous.ttl) == previous:
            return None
        return self._emit(PeerUpdated(peer, previous))

    def refresh(self, instance: str, txt: bytes, *, ttl: float, now: float) -> Refresh:
        """A TXT record for `instance` was heard: extend the peer's life if it is the same."""
        peer_id = self._by_instance.get(instance.lower())
        if peer_id is None:
            return Refresh.UNKNOWN
        entry = self._entries[peer_id]
        if entry.txt != txt:
            return Refresh.CHANGED
        entry.peer = replace(entry.peer, last_seen=now, ttl=ttl)
        entry.queries_sent = 0
        return Refresh.REFRESHED

    def goodbye(self, instance: str, *, now: float) -> PeerEvent | None:
        """The records of `instance` were withdrawn: the agent left."""
        peer_id = self._by_instance.get(instance.lower())
        if peer_id is None:
            return None
        self._counts["goodbyes"] += 1
        return self._drop_mdns(peer_id, Removal.GOODBYE)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        """When `handle_timer` next has work (inf when never)."""
        return min((entry.next_deadline() for entry in self._entries.values()), default=math.inf)

    def handle_timer(self, now: float) -> TimerActions:
        """Expire silent peers and say which ones to re-query; call at `next_deadline()`."""
        queries: list[str] = []
        removed: list[PeerRemoved] = []
        for peer_id, entry in list(self._entries.items()):
            peer = entry.peer
            if peer.ttl is None:
                continue
            if now >= peer.last_seen + peer.ttl:
                self._counts["expired"] += 1
                event = self._drop_mdns(peer_id, Removal.EXPIRED)
                if isinstance(event, PeerRemoved):
                    removed.append(event)
                continue
            due = sum(1 for f in REFRESH_POINTS if now >= peer.last_seen + peer.ttl * f)
            if due > entry.queries_sent and peer.instance is not None:
                entry.queries_sent = due
                queries.append(peer.instance)
        return TimerActions(tuple(queries), tuple(removed))

    async def run_timers(
        self,
        send_queries: Callable[[tuple[str, ...]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Drive `handle_timer` on the Trio clock forever; `send_queries` sends rescue queries."""
        task_status.started()
        while True:
            actions = self.handle_timer(trio.current_time())
            if actions.queries:
                send_queries(actions.queries)
            with trio.move_on_at(self.next_deadline()):
                await self._changed.wait()

    # ------------------------------------------------------------------ runtime input

    def add_static(self, mailbox: str, peer_id: str | None = None) -> None:
        """Add a configured peer mailbox, pinned to `peer_id` if given; it stays pending
        until `confirm` names its id (the pinned one, if pinned)."""
        if mailbox in self._static:
            return
        self._static[mailbox] = None
        if peer_id is not None:
            self._pinned[mailbox] = peer_id
        for entry in self._entries.values():
            if (
                entry.peer.confirmed
                and entry.peer.mailbox == mailbox
                and peer_id in (None, entry.peer.peer_id)
            ):
                self._static[mailbox] = entry.peer.peer_id
                previous = entry.peer
                entry.peer = replace(previous, static=True)
                self._emit(PeerUpdated(entry.peer, previous))
                return
        self._notify()

    def confirm(
        self,
        peer_id: str,
        mailbox: str,
        *,
        now: float,
        name: str | None = None,
        services: str | None = None,
    ) -> PeerEvent | None:
        """A session handshake proved `peer_id` at `mailbox`: the runtime calls this.

        Creates the peer if discovery did not know it (a static or inbound peer,
        which then never expires by TTL) and marks it confirmed. A peer that proves
        another id than the one a static mailbox is pinned to is not that static peer.
        """
        static = mailbox in self._static and self._pinned.get(mailbox, peer_id) == peer_id
        if static:
            self._static[mailbox] = peer_id
        entry = self._entries.get(peer_id)
        if entry is None:
            peer = Peer(
                peer_id=peer_id,
                mailbox=mailbox,
                name=name or "",
                services=services or "",
                addresses=(),
                port=None,
                instance=None,
                static=static,
                confirmed=True,
                last_seen=now,
                ttl=None,
            )
            self._entries[peer_id] = _Entry(peer)
            self._counts["added"] += 1
            return self._emit(PeerAdded(peer))
        previous = entry.peer
        peer = replace(
            previous,
            mailbox=mailbox,
            name=previous.name if name is None else name,
            services=previous.services if services is None else services,
            static=previous.static or static,
            confirmed=True,
            last_seen=now,
        )
        entry.peer = peer
        if replace(peer, last_seen=previous.last_seen) == previous:
            return None
        return self._emit(PeerUpdated(peer, previous))

    def remove(self, peer_id: str) -> PeerEvent | None:
        """Drop a peer (e.g. its session died); a static mailbox becomes pending again."""
        entry = self._entries.pop(peer_id, None)
        if entry is None:
            return None
        self._forget(entry.peer)
        self._counts["removed"] += 1
        return self._emit(PeerRemoved(entry.peer, Removal.REMOVED))

    # ------------------------------------------------------------------ waiting

    async def wait_for_peer(
        self, predicate: Callable[[Peer], bool], timeout: float = math.inf
    ) -> Peer:
        """The first peer matching `predicate`, waiting for one; `trio.TooSlowError` on timeout."""
        with trio.fail_after(timeout):
            while True:
                for entry in self._entries.values():
                    if predicate(entry.peer):
                        return entry.peer
                await self._changed.wait()

    async def wait_for_peer_gone(self, peer_id: str, timeout: float = math.inf) -> None:
        """Return once `peer_id` is not in the table; `trio.TooSlowError` on timeout."""
        with trio.fail_after(timeout):
            while peer_id in self._entries:
                await self._changed.wait()

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[PeerEvent]:
        """A channel of every later `PeerEvent`.

        A subscriber that falls `buffer` events behind loses events (counted in
        `events_dropped`); use `snapshot()` for state, events for reactions.
        Closing the receive channel unsubscribes.
        """
        send, receive = trio.open_memory_channel[PeerEvent](buffer)
        self._subscribers.append(send)
        return receive

    # ------------------------------------------------------------------ internals

    def _drop_mdns(self, peer_id: str, reason: Removal) -> PeerEvent | None:
        entry = self._entries[peer_id]
        previous = entry.peer
        if previous.static and previous.confirmed:
            # The runtime owns a static peer's life: keep it, minus the mDNS facts.
            if previous.instance is not None:
                self._by_instance.pop(previous.instance, None)
            entry.peer = replace(previous, instance=None, ttl=None)
            entry.txt, entry.queries_sent = None, 0
            return self._emit(PeerUpdated(entry.peer, previous))
        del self._entries[peer_id]
        self._forget(previous)
        return self._emit(PeerRemoved(previous, reason))

    def _forget(self, peer: Peer) -> None:
        if peer.instance is not None:
            self._by_instance.pop(peer.instance, None)
        for mailbox, confirmed in self._static.items():
            if confirmed == peer.peer_id:
                self._static[mailbox] = None

    def _emit(self, event: PeerEvent) -> PeerEvent:
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self._events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)
        self._notify()
        return event

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def parse_static(entry: str) -> tuple[str, str | None]:
    """A configured static peer, ``tcp://host:port`` or ``ID@tcp://host:port`` (ID: the
    peer id, 66 hex digits), as (mailbox, pinned id or None); ValueError says why not."""
    peer_id, at, mailbox = entry.rpartition("@")
    if not (mailbox.startswith("tcp://") and len(mailbox) > len("tcp://")):
        raise ValueError(f"{entry!r} is not tcp://host:port or ID@tcp://host:port")
    if not at:
        return mailbox, None
    parse_peer_id(peer_id)  # raises ValueError with the reason
    return mailbox, peer_id.lower()
