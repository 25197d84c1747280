"""A crowd of announced peers from one process, for the site-scale benchmark (`bench.site`).

    python -m bench.site_crowd --peers K --site SITE --network HEX [--nodes]
                               [--dial PEER_ID ...] [--chatter] [--ttl 120]

What a site of K other machines looks like to the one real agent under test, made
by a single process so that a 2-core machine can hold a thousand of them:

* **Announcements.** K fresh identities, each with its signed m2mesh announcement
  built by `mesh.discovery.records.announce` (same site and network as the agent, so
  it accepts them) and published as an mDNS service by *one* zeroconf instance on
  127.0.0.1, with the records and TTL an agent's `Discovery` advertises. Registration
  is concurrent with cooperating responders (no probing: instance names derive from
  the keys): one by one, `register_service` returns after its three announcements,
  225 ms apart (~0.45 s each: 7.5 minutes for a thousand); all at once the
  announcements overlap (the ``register_s`` of ``ready``, measured; ``--one-by-one``
  registers sequentially, to compare).
* **Sessions** (``--nodes``). One `mesh.net.node.Node` per announced peer, all in
  this Trio process, listening on 127.0.0.1 and answering handshakes, with the
  shipped profile's heartbeat. A crowd node whose peer id is lower than a real
  agent's (``--dial``) dials it as `agents.runtime` does (lower id dials, one try
  every 0.5 s while there is no session) once that agent's announcement is heard.
  Crowd nodes hold no sessions among themselves: only the agent's side is measured.
  The frames a real agent sends them (channel, receipts) are read and dropped.
* **Offers.** Every fourth peer announces the ``vibration`` feed at 3 to 6 sat, over
  the benchmark's price limit (2): offers the buyer must read and pass over. The one
  a unit can be bought from is a real seller (`bench.site` starts it), the cheapest.
* **Chatter** (``--chatter``). What the other K agents of a real site would multicast
  at steady state with today's `mesh.discovery.service`: each sends, every rebrowse
  period (its TTL), a PTR query carrying every peer it knows as known answers (phases
  spread evenly over the period); and every peer's TXT record is re-queried once per
  0.8 TTL (the earliest of the agents' 80-95 % refresh timers; the answer, heard by
  all, pushes everyone else's timer). Queries go out through the crowd's zeroconf
  (source port 5353, like an agent's), so responders treat them as any other.

It prints JSON lines on stdout: ``ready`` (peer ids, seconds to start the nodes and
to register, this process's RSS) and ``found`` (a real agent heard and dialled). It
runs until SIGTERM/SIGINT, then unregisters (goodbyes) and closes every node.

Limits: one zeroconf instance answers for all K peers, so the answers the agent
hears are aggregated as no K separate responders would (fewer, larger packets); the
chatter is a model of the other agents' traffic, not their code; everything is on
one loopback interface and one CPU budget, shared with the agent measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, suppress
from typing import Any

import trio
from zeroconf import DNSQuestionType, IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

# zeroconf re-exports these outside __all__ (see mesh.discovery.service).
from zeroconf._dns import DNSPointer, DNSQuestion
from zeroconf._protocol.outgoing import DNSOutgoing

from mesh.discovery.bridge import Bridge, Browsed, ZcEvent
from mesh.discovery.records import (
    SERVICE_TYPE,
    Announcement,
    AnnouncementRejected,
    announce,
    host_name,
    instance_name,
    verify_announcement,
)
from mesh.identity import Identity
from mesh.net.node import ConnectError, Node, NodeConfig, open_node
from mesh.session_frames import ProfileSummary
from mesh.wire import Frame

INTERFACE = "127.0.0.1"
DIAL_EVERY = 0.5
"""Seconds between a crowd node's dial attempts, as `agents.runtime._connector`."""
REFRESH_AT = 0.8
"""Fraction of the TTL after which some agent of a big site re-queries a TXT record."""
CHATTER_TICK = 0.25
CLOSE_SECONDS = 5.0
"""Longest wait for the nodes to close politely at the end."""
_TYPE_PTR, _TYPE_TXT, _CLASS_IN, _FLAGS_QUERY = 12, 16, 1, 0x0000


def offers(index: int) -> tuple[str, ...]:
    """The offers crowd peer `index` announces: a pricier vibration feed for one in
    four (3-6 sat: over the benchmark want's limit of 2), spindle time otherwise."""
    if index % 4 == 0:
        return (f"vibration={3 + index // 4 % 4}/reading",)
    return ("spindle-time=5/s",)


def service_info(announcement: Announcement, ttl: int) -> ServiceInfo:
    """The zeroconf service for an announcement, as `mesh.discovery.service` builds it."""
    port = int(announcement.mailbox.rsplit(":", 1)[1])
    return ServiceInfo(
        SERVICE_TYPE,
        announcement.instance,
        port=port,
        properties=announcement.to_txt(),
        server=host_name(announcement.peer_id),
        host_ttl=ttl,
        other_ttl=ttl,
        parsed_addresses=[INTERFACE],
    )


def register_all(zc: Zeroconf, infos: Sequence[ServiceInfo]) -> None:
    """Register every service at once on zeroconf's loop (run in a thread): each
    registration's three announcements overlap instead of queueing."""
    assert zc.loop is not None

    async def register() -> None:
        broadcasts = await asyncio.gather(
            *(zc.async_register_service(info, cooperating_responders=True) for info in infos)
        )
        await asyncio.gather(*broadcasts)

    asyncio.run_coroutine_threadsafe(register(), zc.loop).result()


def register_one(zc: Zeroconf, info: ServiceInfo) -> None:
    """Register one service as `mesh.discovery.service` does (returns once announced)."""
    zc.register_service(info, cooperating_responders=True)


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, "time": time.time(), **fields}), flush=True)


async def _drop(peer_id: str, frame: Frame, last: bool) -> None:
    """A crowd node reads what the agent sends it (channel frames, receipt asks) and
    drops it: it buys nothing and sells nothing."""


class Crowd:
    """K announced peers, optionally with nodes, dialling and chatter (see module)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.identities = [Identity.generate() for _ in range(args.peers)]
        self.nodes: list[Node] = []
        self.zc: Zeroconf | None = None
        self.known: dict[str, None] = {}
        """Instance names the crowd's peers know (themselves and real agents heard)."""

    async def run(self) -> None:
        """Start everything, print ``ready``, run until SIGTERM/SIGINT."""
        with (
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
            trio.CancelScope() as scope,
        ):
            async with AsyncExitStack() as stack:
                started = time.perf_counter()
                mailboxes = await self._open_nodes(stack)
                nodes_s = time.perf_counter() - started
                infos = [
                    service_info(self._announce(i, mailbox), self.args.ttl)
                    for i, mailbox in enumerate(mailboxes)
                ]
                self.known = {info.name.lower(): None for info in infos}
                zc = self.zc = await trio.to_thread.run_sync(
                    lambda: Zeroconf(interfaces=[INTERFACE], ip_version=IPVersion.V4Only)
                )
                try:
                    await self._serve(zc, infos, nodes_s, signals)
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(_close, zc)
                # Nodes say goodbye on their sessions as they close; bound the wait.
                scope.deadline = trio.current_time() + CLOSE_SECONDS

    def _announce(self, index: int, mailbox: str) -> Announcement:
        return announce(
            self.identities[index],
            mailbox=mailbox,
            name=f"crowd-{index}",
            services=",".join(offers(index)),
            site=self.args.site,
            network=self.args.network,
        )

    async def _serve(
        self,
        zc: Zeroconf,
        infos: Sequence[ServiceInfo],
        nodes_s: float,
        signals: AsyncIterator[int],
    ) -> None:
        """Register every service, serve the nodes, dial and chatter until a signal."""
        started = time.perf_counter()
        if self.args.one_by_one:
            for info in infos:
                await trio.to_thread.run_sync(register_one, zc, info)
        else:
            await trio.to_thread.run_sync(register_all, zc, infos)
        register_s = time.perf_counter() - started
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(node.serve, _drop)
            if self.args.dial:
                await nursery.start(self._browse_and_dial, zc)
            if self.args.chatter:
                nursery.start_soon(self._chatter, zc)
            emit(
                "ready",
                peers=[identity.peer_id for identity in self.identities],
                nodes_s=nodes_s,
                register_s=register_s,
                rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            )
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()

    async def _open_nodes(self, stack: AsyncExitStack) -> list[str]:
        """One listening node per identity (``--nodes``); else mailboxes nobody listens
        on (port 9, discard: a dial is refused at once)."""
        args = self.args
        if not args.nodes:
            return [f"tcp://{INTERFACE}:9"] * len(self.identities)
        config = NodeConfig(heartbeat_interval=args.heartbeat, dead_after=args.dead_after)
        for i, identity in enumerate(self.identities):
            node = await stack.enter_async_context(
                open_node(
                    identity,
                    f"tcp://{INTERFACE}:0",
                    profile=ProfileSummary(f"crowd-{i}", offers(i)),
                    config=config,
                    site=args.site,
                    network=args.network,
                )
            )
            self.nodes.append(node)
        return [node.address for node in self.nodes]

    # ------------------------------------------------------------------ dialling

    async def _browse_and_dial(
        self, zc: Zeroconf, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Browse for the real agents named by ``--dial``; dial each once it is heard."""
        targets = {instance_name(peer_id): peer_id for peer_id in self.args.dial}
        send, receive = trio.open_memory_channel[ZcEvent](1024)
        bridge = Bridge(trio.lowlevel.current_trio_token(), send)
        browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(
                zc,
                SERVICE_TYPE,
                handlers=[bridge.on_service_state_change],
                question_type=DNSQuestionType.QM,
            )
        )
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for event in receive:
                    name = event.name.lower()
                    if isinstance(event, Browsed) and name in targets and name not in self.known:
                        self.known[name] = None
                        nursery.start_soon(self._found, zc, name, targets[name], nursery)
        finally:
            bridge.closed = True
            browser.cancel()

    async def _found(self, zc: Zeroconf, name: str, peer_id: str, nursery: trio.Nursery) -> None:
        info = None
        while info is None:
            info = await trio.to_thread.run_sync(
                lambda: zc.get_service_info(
                    SERVICE_TYPE, name, 3000, question_type=DNSQuestionType.QM
                )
            )
        try:
            mailbox = verify_announcement(info.text or b"", name).mailbox
        except AnnouncementRejected as exc:
            emit("rejected", peer_id=peer_id, reason=str(exc))
            return
        dialling = [node for node in self.nodes if node.peer_id < peer_id]
        emit("found", peer_id=peer_id, mailbox=mailbox, dialling=len(dialling))
        for node in dialling:
            nursery.start_soon(_keep_session, node, peer_id, mailbox)

    # ------------------------------------------------------------------ chatter

    async def _chatter(self, zc: Zeroconf) -> None:
        """The other agents' steady-state discovery traffic (see the module docstring)."""
        ttl = self.args.ttl
        rebrowse = max(float(ttl), 5.0)
        count = len(self.identities)
        own = [instance_name(identity.peer_id) for identity in self.identities]
        start = trio.current_time()
        next_browse = [start + rebrowse * (i + 0.5) / count for i in range(count)]
        refresh_every = REFRESH_AT * ttl
        next_refresh: dict[str, float] = {}
        pointers: dict[str, DNSPointer] = {}
        while True:
            await trio.sleep(CHATTER_TICK)
            now = trio.current_time()
            if len(pointers) != len(self.known):  # a real agent was heard
                pointers = {
                    name: DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, ttl, name)
                    for name in self.known
                }
            for i in range(count):
                if next_browse[i] <= now:
                    next_browse[i] += rebrowse
                    out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
                    out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
                    for name, pointer in pointers.items():
                        if name != own[i]:
                            out.add_answer_at_time(pointer, 0)
                    zc.send(out)
            due: list[str] = []
            for name in self.known:
                if name not in next_refresh:  # spread the first round over a period
                    next_refresh[name] = now + random.uniform(0, refresh_every)
                elif next_refresh[name] <= now:
                    next_refresh[name] += refresh_every
                    due.append(name)
            if due:
                out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
                for name in due:
                    out.add_question(DNSQuestion(name, _TYPE_TXT, _CLASS_IN))
                zc.send(out)


async def _keep_session(node: Node, peer_id: str, mailbox: str) -> None:
    """Hold a session from `node` to a real agent, dialling as `agents.runtime` does."""
    await trio.sleep(random.uniform(0, DIAL_EVERY))  # where in its 0.5 s loop each one is
    while True:
        if node.session(peer_id) is None:
            with suppress(ConnectError):
                await node.connect(mailbox, expect_peer=peer_id, attempts=1)
        await trio.sleep(DIAL_EVERY)


def _close(zc: Zeroconf) -> None:
    zc.unregister_all_services()
    zc.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.site_crowd``."""
    parser = argparse.ArgumentParser(prog="python -m bench.site_crowd", description=__doc__)
    parser.add_argument("--peers", type=int, required=True, help="announced peers (K)")
    parser.add_argument("--site", default="default", help="the agents' site")
    parser.add_argument("--network", default="", help="the agents' network (genesis hash)")
    parser.add_argument("--ttl", type=int, default=120, help="record TTL, as the agents'")
    parser.add_argument("--nodes", action="store_true", help="a listening node per peer")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="node heartbeat (s)")
    parser.add_argument("--dead-after", type=float, default=8.0, help="node dead_after (s)")
    parser.add_argument(
        "--dial", action="append", default=[], metavar="PEER_ID", help="a real agent to dial"
    )
    parser.add_argument("--chatter", action="store_true", help="the other agents' queries")
    parser.add_argument(
        "--one-by-one", action="store_true", help="register sequentially (to compare)"
    )
    args = parser.parse_args(argv)
    if args.dial and not args.nodes:
        parser.error("--dial needs --nodes")
    if args.peers < 1:
        parser.error("--peers must be at least 1")
    trio.run(Crowd(args).run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
