"""A crowd of announced peers from one process, for the site-scale benchmark (`bench.site`).

    python -m bench.site_crowd --peers K --site SITE --network HEX [--nodes]
                               [--chatter] [--ttl 120]

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
  shipped profile's heartbeat. None dials the agent: none buys what it sells
  (sessions on demand, `agents.partners`). The frames a real agent sends them are
  read and dropped.
* **Offers.** Every fourth peer announces the ``vibration`` feed at 3 to 6 sat, over
  the benchmark's price limit (2): offers the buyer must read and pass over. The one
  a unit can be bought from is a real seller (`bench.site` starts it), the cheapest.
* **Chatter** (``--chatter``). What the other K agents of a real site multicast at
  steady state with `mesh.discovery`: each re-announces its own records every
  `announce_every` of the TTL `advertised_ttl` gives a site of K+1 (phases spread
  evenly over the period), and every record is registered with that TTL. Nobody
  queries to keep a peer (owners refresh), so the model sends no queries.

It prints a JSON line on stdout: ``ready`` (peer ids, seconds to start the nodes and
to register, the TTL advertised, this process's RSS). It runs until SIGTERM/SIGINT,
then unregisters (goodbyes) and closes every node.

Limits: one zeroconf instance answers for all K peers, so the answers the agent
hears are aggregated as no K separate responders would (fewer, larger packets); the
chatter is a model of the other agents' traffic, not their code; everything is on
one loopback interface and one CPU budget, shared with the agent measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from mesh.discovery.pacing import advertised_ttl, announce_every
from mesh.discovery.records import (
    SERVICE_TYPE,
    Announcement,
    announce,
    host_name,
)
from mesh.identity import Identity
from mesh.net.node import Node, NodeConfig, open_node
from mesh.session_frames import ProfileSummary
from mesh.wire import Frame

INTERFACE = "127.0.0.1"
CHATTER_TICK = 0.25
CLOSE_SECONDS = 5.0
"""Longest wait for the nodes to close politely at the end."""


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


def site_ttl(zc: Zeroconf, peers: int, sample: Announcement, floor: int) -> int:
    """The TTL every agent of a site of `peers` advertises (`mesh.discovery.pacing`),
    from the size of one announcement like the crowd's."""
    out = zc.generate_service_broadcast(service_info(sample, floor), floor)
    return advertised_ttl(peers, len(out.packets()[0]), floor)


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
    """K announced peers, optionally with nodes and chatter (see module)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.identities = [Identity.generate() for _ in range(args.peers)]
        self.nodes: list[Node] = []
        self.zc: Zeroconf | None = None

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
                zc = self.zc = await trio.to_thread.run_sync(
                    lambda: Zeroconf(interfaces=[INTERFACE], ip_version=IPVersion.V4Only)
                )
                try:
                    announcements = [self._announce(i, m) for i, m in enumerate(mailboxes)]
                    ttl = site_ttl(zc, len(announcements) + 1, announcements[0], self.args.ttl)
                    infos = [service_info(a, ttl) for a in announcements]
                    await self._serve(zc, infos, ttl, nodes_s, signals)
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
        ttl: int,
        nodes_s: float,
        signals: AsyncIterator[int],
    ) -> None:
        """Register every service, serve the nodes and chatter until a signal."""
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
            if self.args.chatter:
                nursery.start_soon(self._chatter, zc, infos, ttl)
            emit(
                "ready",
                peers=[identity.peer_id for identity in self.identities],
                nodes_s=nodes_s,
                register_s=register_s,
                ttl=ttl,
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

    # ------------------------------------------------------------------ chatter

    async def _chatter(self, zc: Zeroconf, infos: Sequence[ServiceInfo], ttl: int) -> None:
        """The other agents' steady-state discovery traffic (see the module docstring)."""
        every = announce_every(ttl)
        start = trio.current_time()
        count = len(infos)
        due = [start + every * (i + 0.5) / count for i in range(count)]
        while True:
            await trio.sleep(CHATTER_TICK)
            now = trio.current_time()
            for i, info in enumerate(infos):
                if due[i] <= now:
                    due[i] += every
                    zc.send(zc.generate_service_broadcast(info, ttl))


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
    parser.add_argument("--chatter", action="store_true", help="the other agents' queries")
    parser.add_argument(
        "--one-by-one", action="store_true", help="register sequentially (to compare)"
    )
    args = parser.parse_args(argv)
    if args.peers < 1:
        parser.error("--peers must be at least 1")
    trio.run(Crowd(args).run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
