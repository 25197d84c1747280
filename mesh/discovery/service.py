"""The Trio shell around zeroconf: advertise, browse, feed the peer table.

`Discovery` owns one `zeroconf.Zeroconf` instance. zeroconf runs its own asyncio
loop in a thread, so everything that blocks -- creating it, registering, resolving
a `ServiceInfo`, unregistering and closing -- goes through `trio.to_thread`, and
its callbacks (browser events on the browser thread, record updates on the
zeroconf loop thread) reach Trio through a memory channel (bridge.py). This
module must never block the Trio thread and never decide trust: it verifies
signatures (records.py) and hands hints to the table (table.py).

Decisions (see docs/ARCHITECTURE.md §8 for the measurements behind them):

* Interfaces are an explicit, required list of IPv4 addresses; zeroconf is
  created with exactly those and ``IPVersion.V4Only``. Use ``["127.0.0.1"]`` for
  single-host runs. Nothing ever multicasts on every NIC by default.
* The instance name is derived from the peer id (records.py), so registration
  uses ``cooperating_responders=True`` (no probing; ~0.45 s instead of ~1.7 s).
* Browsing uses QM questions (late joiners see peers in ~0.1 s), and resolves use
  QM too: QU answers are unicast to port 5353, which on a host running several
  agents (SO_REUSEPORT) reaches an arbitrary one of them.
* Every record is advertised with the same TTL (`ttl`, default 120 s, the RFC 6762
  host-record TTL) and liveness is the table's job (see table.py): peers are
  re-queried at 80-95 % of their TTL and dropped when silent for a whole TTL.
  Tests use a TTL of a few seconds to show expiry quickly.
* Every `rebrowse` seconds (default: max(ttl, 5 s)) a PTR query carrying the
  known peers as known answers is sent, so a peer that expired during a network
  partition is found again when the link returns (zeroconf's own browser would
  not ask again for ~14 min).
* Closing (context exit, cancellation, SIGINT/SIGTERM in a runner that cancels)
  unregisters in a shielded thread, so goodbyes go out and peers drop us at once.

Unauthenticated mDNS means anyone on the link can send goodbyes for, or replay,
an agent's records. The worst this does is hide a peer until the next rebrowse or
keep a dead one listed for a TTL; it never makes a peer id trusted.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from zeroconf import (
    DNSQuestionType,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

# zeroconf re-exports these "for backwards compat" outside __all__, so mypy --strict
# needs the defining modules. Needed to send raw refresh and known-answer queries.
from zeroconf._dns import DNSPointer, DNSQuestion
from zeroconf._protocol.outgoing import DNSOutgoing

from mesh.discovery.bridge import Bridge, Heard, TxtListener, ZcEvent
from mesh.discovery.records import (
    SERVICE_TYPE,
    Announcement,
    AnnouncementRejected,
    RejectReason,
    announce,
    host_name,
    usable_addresses,
    verify_announcement,
)
from mesh.discovery.table import PeerTable, Refresh
from mesh.errors import MeshError
from mesh.identity import Identity
from mesh.session import DEFAULT_SITE

DEFAULT_TTL = 120
"""Seconds: TTL of every advertised record, and so how long a silent peer lingers."""

LOOPBACK_INTERFACES = ("127.0.0.1",)
"""The interface list for agents that only talk to agents on the same host."""

RESOLVE_TIMEOUT_MS = 2000
"""How long a resolve waits for SRV/TXT/A answers when they are not cached."""

EVENT_BUFFER = 1024
"""Zeroconf callbacks queued for the Trio side before new ones are dropped."""

RESOLVE_THREADS = 8
"""Resolves running at once (each holds a worker thread while it waits)."""

MEMO_SIZE = 1024
"""Entries kept in each small memo: rejected (instance, TXT) pairs, heard TTLs."""

MAX_PENDING_RESOLVES = 256
"""Resolves queued or running at once; beyond it a browse event is dropped (counted
in `resolve_failures`) -- a flood of bogus names must not grow memory without bound.
A dropped live peer is picked up again by its next TXT refresh or rebrowse."""

_TYPE_PTR = 12
_TYPE_TXT = 16
_CLASS_IN = 1
_FLAGS_QUERY = 0x0000


class DiscoveryError(MeshError):
    """Discovery cannot run here (e.g. an interface address this host does not have)."""


@dataclass(frozen=True)
class DiscoveryStatistics:
    """A frozen snapshot of discovery counters.

    Rejections count distinct (instance, TXT data) pairs: the same forged record
    heard again is ignored without being counted twice.
    """

    peers: int
    """Peers in the table now."""
    accepted: int
    """Announcements that verified (first sight, TXT changes, re-resolves)."""
    rejected_malformed: int
    rejected_version: int
    rejected_instance: int
    rejected_signature: int
    ignored_foreign: int
    """Valid announcements of another site or network (another deployment), ignored."""
    resolve_failures: int
    """Resolves that got no answer in time, or were not started (backlog full)."""
    refresh_queries: int
    """TXT questions sent for peers near the end of their TTL."""
    browse_queries: int
    """Periodic PTR questions (with known answers) sent."""
    goodbyes: int
    """Peers removed because their records were withdrawn."""
    expired: int
    """Peers removed because they went silent for a whole TTL."""
    events_dropped: int
    """zeroconf callbacks or table events lost to full buffers."""

    @property
    def rejected(self) -> int:
        """All rejected announcements, whatever the reason."""
        return (
            self.rejected_malformed
            + self.rejected_version
            + self.rejected_instance
            + self.rejected_signature
        )


@dataclass
class _Pending:
    """A resolve in progress for one instance name."""

    again: bool = False
    """Something new was heard meanwhile: resolve once more when done."""
    withdrawn: bool = False
    """A goodbye arrived meanwhile: drop this result."""


def _check_interfaces(interfaces: Sequence[str]) -> list[str]:
    if isinstance(interfaces, str):
        raise TypeError("interfaces is a list of addresses, e.g. ['127.0.0.1']")
    if not interfaces:
        raise ValueError("interfaces must name at least one IPv4 address, e.g. ['127.0.0.1']")
    checked: list[str] = []
    for text in interfaces:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"interface {text!r} is not an IPv4 address") from None
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"interface {text!r} is not a unicast interface address")
        checked.append(str(address))
    return list(dict.fromkeys(checked))


def _mailbox_port(mailbox: str) -> int:
    try:
        return urlsplit(mailbox).port or 0
    except ValueError:
        return 0


class Discovery:
    """Advertises one agent and browses for the others into a `PeerTable`.

    Run it as a service (``await nursery.start(discovery.run)``) or through
    `open_discovery`. `interfaces` is required: the IPv4 addresses to multicast
    on (`LOOPBACK_INTERFACES` on one host). The advertised A records are those
    addresses; `mailbox` is the signed URL peers dial.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        interfaces: Sequence[str],
        mailbox: str,
        name: str = "",
        services: str = "",
        ttl: int = DEFAULT_TTL,
        rebrowse: float | None = None,
        table: PeerTable | None = None,
        site: str = DEFAULT_SITE,
        network: str = "",
    ) -> None:
        if not 1 <= ttl <= 4500:
            raise ValueError("ttl must be between 1 and 4500 seconds")
        self._identity = identity
        self._interfaces = _check_interfaces(interfaces)
        self._ttl = ttl
        self._rebrowse = max(float(ttl), 5.0) if rebrowse is None else rebrowse
        self.announcement: Announcement = announce(
            identity, mailbox=mailbox, name=name, services=services, site=site, network=network
        )
        self.table: PeerTable = (
            table if table is not None else PeerTable(own_peer_id=identity.peer_id)
        )
        self.browsing_since: float | None = None
        """Trio time at which zeroconf was up and browsing (None before)."""
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._bridge: Bridge | None = None
        self._resolving: dict[str, _Pending] = {}
        self._heard_ttl: OrderedDict[str, float] = OrderedDict()
        self._rejected: OrderedDict[tuple[str, bytes], RejectReason] = OrderedDict()
        self._limiter = trio.CapacityLimiter(RESOLVE_THREADS)
        self._counts = {reason: 0 for reason in RejectReason}
        self._accepted = 0
        self._resolve_failures = 0
        self._refresh_queries = 0
        self._browse_queries = 0

    @property
    def peer_id(self) -> str:
        """Our own peer id."""
        return self._identity.peer_id

    @property
    def instance(self) -> str:
        """Our own mDNS service instance name."""
        return self.announcement.instance

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The interface addresses mDNS runs on."""
        return tuple(self._interfaces)

    def statistics(self) -> DiscoveryStatistics:
        """A frozen snapshot of the counters (see `DiscoveryStatistics`)."""
        table = self.table.statistics()
        return DiscoveryStatistics(
            peers=table.peers,
            accepted=self._accepted,
            rejected_malformed=self._counts[RejectReason.MALFORMED],
            rejected_version=self._counts[RejectReason.VERSION],
            rejected_instance=self._counts[RejectReason.INSTANCE],
            rejected_signature=self._counts[RejectReason.SIGNATURE],
            ignored_foreign=self._counts[RejectReason.FOREIGN],
            resolve_failures=self._resolve_failures,
            refresh_queries=self._refresh_queries,
            browse_queries=self._browse_queries,
            goodbyes=table.goodbyes,
            expired=table.expired,
            events_dropped=(self._bridge.dropped if self._bridge else 0) + table.events_dropped,
        )

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise and browse until cancelled; started once registered.

        On the way out (cancellation included) the service is unregistered --
        goodbyes are multicast -- and zeroconf is closed, in a shielded thread.
        """
        if self._zc is not None:
            raise RuntimeError("this Discovery is already running")
        send, receive = trio.open_memory_channel[ZcEvent](EVENT_BUFFER)
        bridge = self._bridge = Bridge(trio.lowlevel.current_trio_token(), send)
        info = self._service_info(self.announcement)
        zc: Zeroconf | None = None
        browser: ServiceBrowser | None = None
        try:
            started, browser = await trio.to_thread.run_sync(self._start_zeroconf, bridge)
            zc = self._zc = started
            self.browsing_since = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, receive, nursery)
                await nursery.start(self.table.run_timers, self._send_refresh_queries)
                await trio.to_thread.run_sync(self._register, started, info)
                self._info = info
                nursery.start_soon(self._rebrowse_loop)
                task_status.started()
        finally:
            bridge.closed = True
            self._zc = self._info = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_zeroconf, zc, browser)
            send.close()

    async def update(
        self, *, mailbox: str | None = None, name: str | None = None, services: str | None = None
    ) -> None:
        """Re-sign and re-announce with changed fields (e.g. new prices)."""
        current = self.announcement
        self.announcement = announce(
            self._identity,
            mailbox=current.mailbox if mailbox is None else mailbox,
            name=current.name if name is None else name,
            services=current.services if services is None else services,
        )
        zc = self._zc
        if zc is not None and self._info is not None:
            info = self._service_info(self.announcement)
            await trio.to_thread.run_sync(zc.update_service, info)
            self._info = info

    # ------------------------------------------------------------------ threads

    def _service_info(self, announcement: Announcement) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            announcement.instance,
            port=_mailbox_port(announcement.mailbox),
            properties=announcement.to_txt(),
            server=host_name(announcement.peer_id),
            host_ttl=self._ttl,
            other_ttl=self._ttl,
            parsed_addresses=list(self._interfaces),
        )

    def _start_zeroconf(self, bridge: Bridge) -> tuple[Zeroconf, ServiceBrowser]:
        try:
            zc = Zeroconf(interfaces=list(self._interfaces), ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise DiscoveryError(
                f"cannot run mDNS on interfaces {', '.join(self._interfaces)}: "
                f"{exc.strerror or exc} (is each one an address of this host?)"
            ) from exc
        try:
            zc.add_listener(TxtListener(bridge), None)
            browser = ServiceBrowser(
                zc,
                SERVICE_TYPE,
                handlers=[bridge.on_service_state_change],
                question_type=DNSQuestionType.QM,
            )
        except BaseException:
            zc.close()
            raise
        return zc, browser

    @staticmethod
    def _register(zc: Zeroconf, info: ServiceInfo) -> None:
        zc.register_service(info, cooperating_responders=True)

    @staticmethod
    def _close_zeroconf(zc: Zeroconf | None, browser: ServiceBrowser | None) -> None:
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.unregister_all_services()  # goodbyes (TTL 0), three times, ~0.25 s
            zc.close()

    # ------------------------------------------------------------------ Trio side

    async def _pump(
        self, receive: trio.MemoryReceiveChannel[ZcEvent], nursery: trio.Nursery
    ) -> None:
        own = self.instance
        async with receive:
            async for event in receive:
                key = event.name.lower()
                if key == own:
                    continue
                if isinstance(event, Heard):
                    self._on_heard(key, event, nursery)
                elif event.change is ServiceStateChange.Removed:
                    pending = self._resolving.get(key)
                    if pending is not None:
                        pending.withdrawn, pending.again = True, False
                    self.table.goodbye(key, now=trio.current_time())
                else:
                    self._start_resolve(key, nursery)

    def _on_heard(self, key: str, event: Heard, nursery: trio.Nursery) -> None:
        self._heard_ttl[key] = event.ttl
        self._heard_ttl.move_to_end(key)
        while len(self._heard_ttl) > MEMO_SIZE:
            self._heard_ttl.popitem(last=False)
        now = trio.current_time()
        state = self.table.refresh(key, event.txt, ttl=event.ttl, now=now)
        if state is Refresh.REFRESHED:
            return
        announcement = self._verify(key, event.txt)
        if announcement is None:
            return
        known = self.table.by_instance(key)
        if known is None:
            self._start_resolve(key, nursery)
            return
        self._accepted += 1
        self.table.observe(
            announcement,
            txt=event.txt,
            addresses=known.addresses,
            port=known.port,
            ttl=event.ttl,
            now=now,
        )

    def _verify(self, key: str, txt: bytes) -> Announcement | None:
        """Verify, counting each distinct rejected (instance, TXT) once."""
        memo = (key, txt)
        if memo in self._rejected:
            return None
        try:
            announcement = verify_announcement(txt, key)
            ours = self.announcement
            if (announcement.site, announcement.network) != (ours.site, ours.network):
                raise AnnouncementRejected(RejectReason.FOREIGN, "txt.site", "another deployment")
        except AnnouncementRejected as exc:
            self._rejected[memo] = exc.why
            while len(self._rejected) > MEMO_SIZE:
                self._rejected.popitem(last=False)
            self._counts[exc.why] += 1
            return None
        return announcement

    def _start_resolve(self, key: str, nursery: trio.Nursery) -> None:
        pending = self._resolving.get(key)
        if pending is not None:
            pending.again = True  # news while resolving: resolve once more afterwards
            return
        if len(self._resolving) >= MAX_PENDING_RESOLVES:
            self._resolve_failures += 1
            return
        pending = self._resolving[key] = _Pending()
        nursery.start_soon(self._resolve, key, pending)

    async def _resolve(self, key: str, pending: _Pending) -> None:
        try:
            pending.again = True
            while pending.again:
                pending.again = pending.withdrawn = False
                await self._resolve_once(key, pending)
        finally:
            del self._resolving[key]

    async def _resolve_once(self, key: str, pending: _Pending) -> None:
        zc = self._zc
        if zc is None:
            return
        info = await trio.to_thread.run_sync(self._get_info, zc, key, limiter=self._limiter)
        if pending.withdrawn:
            return  # a goodbye arrived while we were resolving
        if info is None:
            self._resolve_failures += 1
            return
        txt = info.text or b""
        announcement = self._verify(key, txt)
        if announcement is None:
            return
        self._accepted += 1
        self.table.observe(
            announcement,
            txt=txt,
            addresses=usable_addresses(info.parsed_addresses()),
            port=info.port,
            ttl=self._heard_ttl.get(key, float(self._ttl)),
            now=trio.current_time(),
        )

    @staticmethod
    def _get_info(zc: Zeroconf, key: str) -> ServiceInfo | None:
        if zc.done:
            return None
        return zc.get_service_info(
            SERVICE_TYPE, key, RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM
        )

    def _send_refresh_queries(self, instances: tuple[str, ...]) -> None:
        """Ask (QM) for the TXT records of peers near the end of their TTL."""
        zc = self._zc
        if zc is None or zc.done:
            return
        out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
        for instance in instances:
            out.add_question(DNSQuestion(instance, _TYPE_TXT, _CLASS_IN))
        zc.send(out)
        self._refresh_queries += len(instances)

    async def _rebrowse_loop(self) -> None:
        """Periodic PTR query with our live peers as known answers (partition healing)."""
        while True:
            await trio.sleep(self._rebrowse)
            zc = self._zc
            if zc is None or zc.done:
                return
            out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
            out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
            for peer in self.table:
                if peer.instance is not None and peer.ttl is not None:
                    ttl = math.ceil(peer.ttl)
                    pointer = DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, ttl, peer.instance)
                    out.add_answer_at_time(pointer, 0)
            zc.send(out)
            self._browse_queries += 1


@asynccontextmanager
async def open_discovery(
    identity: Identity,
    *,
    interfaces: Sequence[str],
    mailbox: str,
    name: str = "",
    services: str = "",
    ttl: int = DEFAULT_TTL,
    rebrowse: float | None = None,
    table: PeerTable | None = None,
    site: str = DEFAULT_SITE,
    network: str = "",
) -> AsyncIterator[Discovery]:
    """Run a `Discovery` for the duration of an ``async with`` block.

    Entering returns once our service is registered, or raises `DiscoveryError`
    if mDNS cannot run on `interfaces`; leaving unregisters (goodbyes go out) and
    closes zeroconf, also on cancellation. Announcements of another `site` or
    `network` are ignored (counted as `ignored_foreign`).
    """
    discovery = Discovery(
        identity,
        interfaces=interfaces,
        mailbox=mailbox,
        name=name,
        services=services,
        ttl=ttl,
        rebrowse=rebrowse,
        table=table,
        site=site,
        network=network,
    )
    failure: DiscoveryError | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(discovery.run)
        except DiscoveryError as exc:
            failure = exc  # raised bare below, not wrapped in the nursery's group
        else:
            try:
                yield discovery
            finally:
                nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
