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
* Owners keep their records alive, listeners do not query to keep them
  (announcer.py): every agent multicasts its PTR/SRV/TXT/A records, unasked, every
  0.4 TTL (+-10 %), and every record carries the same TTL -- the configured `ttl`
  (default 120 s, the RFC 6762 host-record TTL), raised with the size of the site
  (pacing.py) so that all announcements together cost a listener ~1 kB/s. Liveness
  is the table's job (table.py): a peer not heard for 0.9 TTL gets one rescue
  query, and is dropped when silent for a whole TTL. Tests use a TTL of a few
  seconds to show expiry quickly.
* No periodic browse: a peer that expired during a network partition is heard
  again from its next announcement, within 0.4 TTL of the link's return.
  `rebrowse` (off by default) adds a PTR query every `rebrowse` seconds carrying
  the known peers as known answers, for tests that want faster healing.
* Start burst: every discovered name is queued for a resolve (up to the table's
  `max_peers`), `RESOLVE_THREADS` at a time; a resolve first fills the
  `ServiceInfo` from zeroconf's cache (the SRV/TXT/A of an announcement or answer
  arrive together) and asks the network only for what is missing. The mDNS
  sockets get a 4 MiB receive buffer where the kernel allows, so a thousand
  answers to our first browse are not lost.
* A TXT record is verified once per distinct (instance, TXT data): unchanged
  refreshes only move the peer's last-seen time (table.py), and verdicts --
  accepted or rejected -- are memoised (`MEMO_SIZE`).
* Closing (context exit, cancellation, SIGINT/SIGTERM in a runner that cancels)
  unregisters in a shielded thread, so goodbyes go out and peers drop us at once.

Unauthenticated mDNS means anyone on the link can send goodbyes for, or replay,
an agent's records. The worst this does is hide a peer until its next announcement
or keep a dead one listed for a TTL; it never makes a peer id trusted.
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

from mesh.discovery.announcer import Announcer
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
from mesh.discovery.zcio import (
    enlarge_receive_buffers,
    resolve,
    send_known_answer_browse,
    send_txt_queries,
)
from mesh.errors import MeshError
from mesh.identity import Identity
from mesh.session import DEFAULT_SITE

DEFAULT_TTL = 120
"""Seconds: the least TTL advertised (more on a large site), so how long a silent
peer lingers at least."""

LOOPBACK_INTERFACES = ("127.0.0.1",)
"""The interface list for agents that only talk to agents on the same host."""

EVENT_BUFFER = 4096
"""Zeroconf callbacks queued for the Trio side before new ones are dropped (a start
among a thousand peers brings two for each: its answer's TXT and its browser event)."""

RESOLVE_THREADS = 8
"""Resolves running at once (each holds a worker thread while it waits)."""

MEMO_SIZE = 1024
"""Verdicts (accepted or rejected) kept per distinct (instance, TXT data)."""


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
    """Resolves that got no answer in time, or were not queued (more names pending
    than the table holds peers: a flood)."""
    resolved_from_cache: int
    """Resolves answered from zeroconf's cache without asking the network."""
    refresh_queries: int
    """Rescue TXT questions sent for peers not heard for 0.9 of their TTL."""
    browse_queries: int
    """Periodic PTR questions (with known answers) sent; 0 unless `rebrowse` is set."""
    announcements_sent: int
    """Periodic unsolicited announcements of our own records."""
    ttl_advertised: int
    """The TTL our records carry now (the configured one, or more on a large site)."""
    ttl_changes: int
    """Re-registrations with another TTL as the site grew or shrank."""
    announcement_bytes: int
    """Bytes of one announcement of ours (0 before registration)."""
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
    """A resolve queued or in progress for one instance name."""

    started: bool = False
    """A worker took it (news from now on needs another resolve)."""
    again: bool = False
    """Something new was heard while resolving: resolve once more when done."""
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
    addresses; `mailbox` is the signed URL peers dial. `ttl` is the least TTL
    advertised; `rebrowse` (seconds, default off) adds periodic known-answer browses.
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
        if rebrowse is not None and not rebrowse > 0:
            raise ValueError("rebrowse must be a positive number of seconds (or None: off)")
        self._identity = identity
        self._interfaces = _check_interfaces(interfaces)
        self._ttl = ttl
        self._rebrowse = rebrowse
        self.announcement: Announcement = announce(
            identity, mailbox=mailbox, name=name, services=services, site=site, network=network
        )
        self.table: PeerTable = (
            table if table is not None else PeerTable(own_peer_id=identity.peer_id)
        )
        self.browsing_since: float | None = None
        """Trio time at which zeroconf was up and browsing (None before)."""
        self._zc: Zeroconf | None = None
        self._announcer: Announcer | None = None
        self._bridge: Bridge | None = None
        self._resolving: dict[str, _Pending] = {}
        self._resolve_queue: trio.MemorySendChannel[str] | None = None
        self._verdicts: OrderedDict[tuple[str, bytes], Announcement | RejectReason]
        self._verdicts = OrderedDict()
        self._counts = {reason: 0 for reason in RejectReason}
        self._accepted = 0
        self._resolve_failures = 0
        self._from_cache = 0
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
        announcer = self._announcer
        return DiscoveryStatistics(
            peers=table.peers,
            accepted=self._accepted,
            rejected_malformed=self._counts[RejectReason.MALFORMED],
            rejected_version=self._counts[RejectReason.VERSION],
            rejected_instance=self._counts[RejectReason.INSTANCE],
            rejected_signature=self._counts[RejectReason.SIGNATURE],
            ignored_foreign=self._counts[RejectReason.FOREIGN],
            resolve_failures=self._resolve_failures,
            resolved_from_cache=self._from_cache,
            refresh_queries=self._refresh_queries,
            browse_queries=self._browse_queries,
            announcements_sent=announcer.sent if announcer else 0,
            ttl_advertised=announcer.ttl if announcer else self._ttl,
            ttl_changes=announcer.ttl_changes if announcer else 0,
            announcement_bytes=announcer.record_bytes if announcer else 0,
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
        queue, queued = trio.open_memory_channel[str](math.inf)  # bounded by `_resolving`
        zc: Zeroconf | None = None
        browser: ServiceBrowser | None = None
        try:
            started, browser = await trio.to_thread.run_sync(self._start_zeroconf, bridge)
            zc = self._zc = started
            self._resolve_queue = queue
            self.browsing_since = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, receive)
                for _ in range(RESOLVE_THREADS):
                    nursery.start_soon(self._resolve_worker, queued.clone())
                await nursery.start(self.table.run_timers, self._send_refresh_queries)
                announcer = Announcer(started, self.table, self._service_info, self._ttl)
                await announcer.register()
                self._announcer = announcer
                nursery.start_soon(announcer.run)
                if self._rebrowse is not None:
                    nursery.start_soon(self._rebrowse_loop, self._rebrowse)
                task_status.started()
        finally:
            bridge.closed = True
            self._zc = self._resolve_queue = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_zeroconf, zc, browser)
            send.close()
            queue.close()
            queued.close()

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
            site=current.site,
            network=current.network,
        )
        if self._zc is not None and self._announcer is not None:
            await self._announcer.republish()

    # ------------------------------------------------------------------ threads

    def _service_info(self, ttl: int) -> ServiceInfo:
        announcement = self.announcement
        return ServiceInfo(
            SERVICE_TYPE,
            announcement.instance,
            port=_mailbox_port(announcement.mailbox),
            properties=announcement.to_txt(),
            server=host_name(announcement.peer_id),
            host_ttl=ttl,
            other_ttl=ttl,
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
            # Only now (it waits for zeroconf to run): a browser made after that found
            # the peers of a late joiner ~1 s late in half the runs (measured, cause not
            # pinned down). Its first query goes out 20-120 ms after the start.
            enlarge_receive_buffers(zc)
        except BaseException:
            zc.close()
            raise
        return zc, browser

    @staticmethod
    def _close_zeroconf(zc: Zeroconf | None, browser: ServiceBrowser | None) -> None:
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.unregister_all_services()  # goodbyes (TTL 0), three times, ~0.25 s
            zc.close()

    # ------------------------------------------------------------------ Trio side

    async def _pump(self, receive: trio.MemoryReceiveChannel[ZcEvent]) -> None:
        own = self.instance
        async with receive:
            async for event in receive:
                key = event.name.lower()
                if key == own:
                    continue
                if isinstance(event, Heard):
                    self._on_heard(key, event)
                elif event.change is ServiceStateChange.Removed:
                    pending = self._resolving.get(key)
                    if pending is not None:
                        pending.withdrawn, pending.again = True, False
                    self.table.goodbye(key, now=trio.current_time())
                else:
                    self._start_resolve(key)

    def _on_heard(self, key: str, event: Heard) -> None:
        now = trio.current_time()
        state = self.table.refresh(key, event.txt, ttl=event.ttl, now=now)
        if state is Refresh.REFRESHED:
            return  # the TXT we verified before: no signature check
        announcement = self._verify(key, event.txt)
        if announcement is None:
            return
        known = self.table.by_instance(key)
        if known is None:
            self._start_resolve(key)
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
        """Verify once per distinct (instance, TXT); count each rejected pair once."""
        memo = (key, txt)
        verdict = self._verdicts.get(memo)
        if verdict is None:
            try:
                verdict = verify_announcement(txt, key)
                ours = self.announcement
                if (verdict.site, verdict.network) != (ours.site, ours.network):
                    raise AnnouncementRejected(
                        RejectReason.FOREIGN, "txt.site", "another deployment"
                    )
            except AnnouncementRejected as exc:
                verdict = exc.why
                self._counts[exc.why] += 1
            self._verdicts[memo] = verdict
            while len(self._verdicts) > MEMO_SIZE:
                self._verdicts.popitem(last=False)
        else:
            self._verdicts.move_to_end(memo)
        return None if isinstance(verdict, RejectReason) else verdict

    def _start_resolve(self, key: str) -> None:
        """Queue a resolve of `key` (at most one queued or running per name)."""
        pending = self._resolving.get(key)
        if pending is not None:
            if pending.started:
                pending.again = True  # news while resolving: resolve once more afterwards
            else:
                pending.withdrawn = False  # back before its queued resolve started
            return
        queue = self._resolve_queue
        if queue is None:
            return
        if len(self._resolving) >= self.table.max_peers:
            self._resolve_failures += 1  # more names pending than peers fit: a flood
            return
        self._resolving[key] = _Pending()
        queue.send_nowait(key)

    async def _resolve_worker(self, queued: trio.MemoryReceiveChannel[str]) -> None:
        async with queued:
            async for key in queued:
                pending = self._resolving[key]
                try:
                    again = not pending.withdrawn  # a goodbye came while it was queued
                    pending.started = True
                    while again:
                        pending.again = pending.withdrawn = False
                        await self._resolve_once(key, pending)
                        again = pending.again
                finally:
                    del self._resolving[key]

    async def _resolve_once(self, key: str, pending: _Pending) -> None:
        zc = self._zc
        if zc is None:
            return
        info, ttl, cached = await trio.to_thread.run_sync(resolve, zc, key)
        if pending.withdrawn:
            return  # a goodbye arrived while we were resolving
        if info is None:
            self._resolve_failures += 1
            return
        self._from_cache += cached
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
            ttl=float(self._ttl) if ttl is None else ttl,
            now=trio.current_time(),
        )

    def _send_refresh_queries(self, instances: tuple[str, ...]) -> None:
        """Rescue queries: ask (QM) for the TXT records of peers not heard for 0.9 TTL."""
        zc = self._zc
        if zc is None or zc.done:
            return
        send_txt_queries(zc, instances)
        self._refresh_queries += len(instances)

    async def _rebrowse_loop(self, period: float) -> None:
        """Periodic PTR query with our live peers as known answers (opt-in healing)."""
        while True:
            await trio.sleep(period)
            zc = self._zc
            if zc is None or zc.done:
                return
            send_known_answer_browse(zc, self.table)
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
