"""Two `mesh run` agents meet through a static peer on a LAN that drops multicast.

Two hosts (network namespaces on a bridge, 169.254.77.x) whose switch forwards no
multicast at all (`NetnsLan.block_multicast`), as on many managed and cloud
networks. The test first proves mDNS is really dead between the hosts: discovery
processes on the same host find each other, never one on the other host. Then
agent A, whose profile lists B's mailbox in ``[discovery] static_peers`` (pinned
to B's peer id), and B, who lists nobody, hold one authenticated session that
heartbeats keep alive; pinned to another id, B's mailbox is never believed.
A static peer that is down or black-holed only costs retries, never the agent.

The dialled side lists its static peer too, readings are bought across the pair
(the handshake carries the offers), and the pair meets again after a cut whichever
side has the lower peer id.
Skipped unless root with `ip`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity
from tests.discovery.agents import FEED, WANT, RunningAgent, delivered, peers, sessions
from tests.discovery.helpers import (
    AgentProcess,
    NetnsLan,
    agents_running,
    discovery_command,
    netns_lan,
    netns_unavailable,
    stop,
)

_why_not = netns_unavailable()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

PORT = 7700
DEAD_AFTER = 2.0
"""The agents' `dead_after` (as in `RunningAgent`'s profile): silence that ends a session."""
NOBODY = "tcp://169.254.77.99:7700"
"""A mailbox on the LAN's subnet where no host answers (not even ARP): a black hole."""


@pytest.fixture
def lan() -> Iterator[NetnsLan]:
    """Two hosts on a switch that forwards no multicast, torn down whatever happens."""
    with netns_lan(2, prefix=f"m2s{os.getpid()}") as lan:
        lan.block_multicast()
        yield lan


def mailbox(lan: NetnsLan, host: int) -> str:
    return f"tcp://{lan.address(host)}:{PORT}"


class StaticPeerAgent(RunningAgent):
    """A `RunningAgent` on host `host` of the LAN, with a given identity and static peers."""

    def __init__(self, root: Path, ledger: Path, name: str, lan: NetnsLan, host: int, body: str,
                 *, identity: Identity, static_peers: Sequence[str] = (),
                 funds: int = 0) -> None:  # fmt: skip
        super().__init__(root, ledger, name, lan.address(host), mailbox(lan, host), body,
                         lan.hosts[host - 1], funds, identity=identity,
                         static_peers=static_peers)  # fmt: skip


def identities(dialer_higher: bool) -> tuple[Identity, Identity]:
    """Identities for (A, B) with A's peer id above (or below) B's.

    Which side dials a discovered peer depends on the ids, so tests that care fix it.
    """
    low, high = sorted((Identity.generate(), Identity.generate()), key=lambda i: i.peer_id)
    return (high, low) if dialer_higher else (low, high)


def start_pair(tmp_path: Path, lan: NetnsLan, *, dialer_higher: bool = True
               ) -> tuple[StaticPeerAgent, StaticPeerAgent]:  # fmt: skip
    """B (host 2) sells readings and lists nobody; A (host 1) wants them and lists B,
    pinned to B's peer id."""
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    a_id, b_id = identities(dialer_higher)
    b = StaticPeerAgent(tmp_path, ledger, "b", lan, 2, FEED, identity=b_id)
    a = StaticPeerAgent(tmp_path, ledger, "a", lan, 1, WANT, identity=a_id,
                        static_peers=[f"{b_id.peer_id}@{mailbox(lan, 2)}"],
                        funds=5_000_000)  # fmt: skip
    return a, b


def peer_entry(status: dict[str, Any], peer_id: str) -> dict[str, Any] | None:
    """The status's peer-table entry for `peer_id`, if any."""
    return next((p for p in status["peers"] if p["peer_id"] == peer_id), None)


async def prove_mdns_blocked(lan: NetnsLan, settle: float = 3.0) -> None:
    """Two discovery processes per host: each pair meets, no process crosses the switch.

    On an open LAN the processes of different hosts meet well within a second of
    browsing (see test_multihost); here, after `settle` more seconds of re-queries
    every second, none has ever added a process of the other host.
    """
    async with agents_running() as start:
        by_host: dict[int, list[AgentProcess]] = {1: [], 2: []}
        for host, netns in enumerate(lan.hosts, start=1):
            for k in range(2):
                command = discovery_command(lan.address(host), 5555 + k, name=f"o{host}{k}",
                                            ttl=3, extra=["--rebrowse", "1"])  # fmt: skip
                by_host[host].append(await start(f"h{host}o{k}", command, netns=netns))
        for local in by_host.values():
            for process in local:
                await process.wait_event(lambda e: e["event"] == "ready", 15)
            for process in local:
                neighbour = {p.peer_id for p in local if p is not process}

                def sees_neighbour(p: AgentProcess, neighbour: set[str] = neighbour) -> bool:
                    return p.peers() >= neighbour

                await process.wait_for(sees_neighbour, 10)  # multicast works inside a host
        await trio.sleep(settle)
        for host, local in by_host.items():
            remote = {p.peer_id for p in by_host[3 - host]}
            for process in local:
                heard = {e["peer_id"] for e in process.events if e["event"] == "added"}
                assert not heard & remote, f"{process.label} heard the other host by mDNS"
        for process in [*by_host[1], *by_host[2]]:
            await stop(process)


async def test_agents_meet_through_a_static_peer_where_multicast_is_dropped(
    lan: NetnsLan, tmp_path: Path
) -> None:
    """A lists B as a static peer: both hold one session with the other, kept alive."""
    proving = trio.current_time()
    await prove_mdns_blocked(lan)
    print(f"\nMEASURE mDNS proven blocked in {trio.current_time() - proving:.1f} s")
    a, b = start_pair(tmp_path, lan)
    try:
        met = await a.wait_status(lambda s: b.peer_id in sessions(s), 30, "session with B")
        await b.wait_status(lambda s: a.peer_id in sessions(s), 5, "session with A")
        print(f"MEASURE static peer: session {met - a.spawned:.1f} s after A was started")
        await a.wait_status(lambda s: b.peer_id in peers(s), 3, "B in A's peer table")
        status = a.status()
        assert status is not None
        entry = peer_entry(status, b.peer_id)
        assert entry is not None, status["peers"]
        assert entry["confirmed"] and entry["mailbox"] == mailbox(lan, 2)
        assert entry["name"] == "b"  # from B's authenticated handshake
        assert peers(status) == {b.peer_id}

        # Heartbeats both ways keep the one session alive well past `dead_after`.
        held = trio.current_time()
        while trio.current_time() - held < 2 * DEAD_AFTER + 1:
            for me, other in ((a, b), (b, a)):
                seen = me.status()
                assert seen is not None and sessions(seen) == {other.peer_id}, seen
            await trio.sleep(0.2)
        for me, other in ((a, b), (b, a)):
            assert len(me.log_lines(f"session with {other.peer_id} .*established")) == 1
            assert not me.log_lines(f"session with {other.peer_id} closed")
    finally:
        a.stop()
        b.stop()


async def test_unreachable_static_peers_cost_retries_not_the_agent(
    lan: NetnsLan, tmp_path: Path
) -> None:
    """A black-holed static peer and one that is down at first: A keeps dialing both,
    reaches B once B starts, and carries on with the black hole still pending."""
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    a_id, b_id = identities(dialer_higher=True)
    a = StaticPeerAgent(tmp_path, ledger, "a", lan, 1, "", identity=a_id,
                        static_peers=[NOBODY, mailbox(lan, 2)])  # fmt: skip
    b: StaticPeerAgent | None = None
    try:
        # Each failed dial waits out the 5 s handshake timeout: one round fails both.
        failed_b = f"could not reach {re.escape(mailbox(lan, 2))}"
        with trio.fail_after(30):
            while not a.log_lines(failed_b):
                a.status()  # raises if A exited
                await trio.sleep(0.2)
        b = StaticPeerAgent(tmp_path, ledger, "b", lan, 2, "", identity=b_id)
        met = await a.wait_status(lambda s: b.peer_id in sessions(s), 30, "session with B")
        print(f"\nMEASURE static peer down at first: session {met - b.spawned:.1f} s after B "
              "started")  # fmt: skip
        # Dials run concurrently: the black hole's 5 s handshake timeout delays no one.
        assert met - b.spawned < 4.0
        await b.wait_status(lambda s: a.peer_id in sessions(s), 5, "session with A")
        await a.wait_status(lambda s: peers(s) == {b.peer_id}, 8, "only B in A's table")
        failed_nobody = f"could not reach {re.escape(NOBODY)}"
        with trio.fail_after(15):  # still trying, and still holding B
            while len(a.log_lines(failed_nobody)) < 2:
                status = a.status()
                assert status is not None and b.peer_id in sessions(status)
                await trio.sleep(0.2)
    finally:
        a.stop()
        if b is not None:
            b.stop()


async def test_a_static_peer_pinned_to_another_id_is_never_believed(
    lan: NetnsLan, tmp_path: Path
) -> None:
    """A pins B's mailbox to an id B does not hold: A keeps dialling, every handshake
    fails on the identity, and B never becomes A's peer or session."""
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    a_id, b_id = identities(dialer_higher=True)
    wrong = Identity.generate().peer_id
    b = StaticPeerAgent(tmp_path, ledger, "b", lan, 2, FEED, identity=b_id)
    a = StaticPeerAgent(tmp_path, ledger, "a", lan, 1, WANT, identity=a_id,
                        static_peers=[f"{wrong}@{mailbox(lan, 2)}"])  # fmt: skip
    try:
        refused = f"could not reach {re.escape(mailbox(lan, 2))}.*expected {wrong}"
        looked = 0
        with trio.fail_after(30):
            while len(a.log_lines(refused)) < 3 or not looked:
                status = a.status()  # raises if A exited; None until it answers
                if status is not None:
                    assert b.peer_id not in sessions(status) and not peers(status), status
                    looked += 1
                await trio.sleep(0.2)
    finally:
        a.stop()
        b.stop()


@contextmanager
def running_pair(tmp_path: Path, lan: NetnsLan, *, dialer_higher: bool
                 ) -> Iterator[tuple[StaticPeerAgent, StaticPeerAgent]]:  # fmt: skip
    """A and B of `start_pair`, in session for the block; stopped afterwards."""
    a, b = start_pair(tmp_path, lan, dialer_higher=dialer_higher)
    try:
        a.wait(lambda s: b.peer_id in sessions(s), 30, "session with B")
        b.wait(lambda s: a.peer_id in sessions(s), 5, "session with A")
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def pair(lan: NetnsLan, tmp_path: Path) -> Iterator[tuple[StaticPeerAgent, StaticPeerAgent]]:
    """A and B in session, A's peer id the higher one."""
    with running_pair(tmp_path, lan, dialer_higher=True) as agents:
        yield agents


def test_the_dialled_agent_lists_its_static_peer(
    pair: tuple[StaticPeerAgent, StaticPeerAgent],
) -> None:
    a, b = pair
    b.wait(lambda s: a.peer_id in peers(s), 3, "A in B's peer table")


def test_readings_are_bought_from_a_static_peer(
    pair: tuple[StaticPeerAgent, StaticPeerAgent],
) -> None:
    a, _ = pair
    a.wait(lambda s: delivered(s) >= 10, 15, "readings from B")


@pytest.mark.parametrize(
    "dialer_higher",
    [
        pytest.param(False, id="dialer-id-lower"),
        pytest.param(True, id="dialer-id-higher"),
    ],
)
def test_a_static_pair_meets_again_after_a_cut(
    lan: NetnsLan, tmp_path: Path, dialer_higher: bool
) -> None:
    """B's cable is cut for longer than `dead_after`, then restored: the pair meets again."""
    with running_pair(tmp_path, lan, dialer_higher=dialer_higher) as (a, b):
        lan.set_link(2, up=False)
        a.wait(lambda s: b.peer_id not in sessions(s), DEAD_AFTER + 3, "session with B ends")
        lan.set_link(2, up=True)
        healed = time.monotonic()
        back = a.wait(lambda s: b.peer_id in sessions(s), 10, "session with B again")
        print(f"\nMEASURE static peer after a cut: session again {back - healed:.1f} s later")
