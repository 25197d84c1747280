"""Three hosts on one LAN: network namespaces on a bridge, 169.254/16 addresses.

Each host runs one ``python -m mesh.discovery`` process bound to its own eth0
address. The tests show full discovery, then cut one host's cable at the switch
and show the others expire it (TTL 3 s, a test setting; the default is 120 s)
while keeping each other, then restore the cable and show it found again.
Everything is created by the test and removed afterwards (processes killed by
PID, namespaces deleted), failures included. Skipped unless root with `ip`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import trio

from tests.discovery.helpers import (
    AgentProcess,
    NetnsLan,
    StartAgent,
    added,
    agents_running,
    browsing_at,
    discovery_command,
    meshed,
    netns_unavailable,
    seconds,
    stop,
)

_why_not = netns_unavailable()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

TTL = 3
REBROWSE = 2.0
PORT = 5555


@pytest.fixture
def lan() -> Iterator[NetnsLan]:
    """Three hosts and a switch, torn down whatever happens."""
    lan = NetnsLan(3)
    lan.destroy()  # leftovers of a killed earlier run with the same pid
    try:
        lan.create()
    except subprocess.CalledProcessError as exc:
        lan.destroy()
        pytest.skip(f"cannot build network namespaces here: {exc.stderr.strip()}")
    try:
        yield lan
    finally:
        errors = lan.destroy()
        assert not lan.existing(), f"namespaces left behind: {lan.existing()} {errors}"


async def start_hosts(start: StartAgent, lan: NetnsLan) -> list[AgentProcess]:
    agents = []
    for i, netns in enumerate(lan.hosts, start=1):
        command = discovery_command(
            lan.address(i), PORT, name=f"host{i}", ttl=TTL, extra=["--rebrowse", str(REBROWSE)]
        )
        agents.append(await start(f"h{i}", command, netns=netns))
    return agents


def removed(agent: AgentProcess, peer_id: str) -> list[dict[str, object]]:
    return [e for e in agent.events if e["event"] == "removed" and e["peer_id"] == peer_id]


async def test_three_hosts_discover_expire_a_cut_host_and_find_it_again(lan: NetnsLan) -> None:
    async with agents_running() as start:
        agents = await start_hosts(start, lan)
        h1, h2, h3 = agents
        await meshed(agents, timeout=15)
        last_up = max(browsing_at(a) for a in agents)
        done = max(added(a, o.peer_id)["time"] for a in agents for o in agents if o is not a)
        print(f"\nMEASURE 3 namespaces: meshed {seconds(done - last_up)} after all browsing")
        assert done - last_up <= 2.0
        for i, agent in enumerate(agents, start=1):
            for other in agents:
                if other is not agent:
                    seen = added(other, agent.peer_id)
                    assert seen["addresses"] == [lan.address(i)]
                    assert seen["mailbox"] == f"tcp://{lan.address(i)}:{PORT}"

        # Sessions across namespaces: see test_sessions_across_namespaces below.

        cut = time.time()
        lan.set_link(3, up=False)
        for agent in (h1, h2):
            await agent.wait_event(
                lambda e: e["event"] == "removed" and e["peer_id"] == h3.peer_id, TTL + 3
            )
        gone = [removed(a, h3.peer_id)[0] for a in (h1, h2)]
        worst = max(float(str(e["time"])) for e in gone) - cut
        print(f"MEASURE cut cable, ttl={TTL}: removed from both others after {seconds(worst)}")
        assert all(e["reason"] == "expired" for e in gone)
        assert worst <= TTL + 1.0
        # The cut host hears nobody and drops both others too.
        await h3.wait_for(lambda a: not a.peers() & {h1.peer_id, h2.peer_id}, TTL + 3)
        # The two still connected never lost each other.
        await trio.sleep(1.0)
        assert not removed(h1, h2.peer_id) and not removed(h2, h1.peer_id)
        assert h2.peer_id in h1.peers() and h1.peer_id in h2.peers()

        healed = time.time()
        lan.set_link(3, up=True)
        await meshed(agents, timeout=REBROWSE + 5)
        back = max(
            [e["time"] for e in h3.events if e["event"] == "added" and e["time"] > healed]
            + [e["time"] for a in (h1, h2) for e in a.events
               if e["event"] == "added" and e["peer_id"] == h3.peer_id and e["time"] > healed]
        )  # fmt: skip
        print(f"MEASURE cable restored: meshed again after {seconds(back - healed)}")
        assert back - healed <= REBROWSE + 2.0

        for agent in agents:
            await stop(agent)


@pytest.mark.slow
async def test_repeated_partitions_soak(lan: NetnsLan) -> None:
    """Five cut/restore cycles of each host in turn: the table always converges."""
    async with agents_running() as start:
        agents = await start_hosts(start, lan)
        await meshed(agents, timeout=15)
        for _cycle in range(5):
            for host, agent in enumerate(agents, start=1):
                others = [a for a in agents if a is not agent]
                lan.set_link(host, up=False)
                for other in others:

                    def dropped(a: AgentProcess, gone: str = agent.peer_id) -> bool:
                        return gone not in a.peers()

                    await other.wait_for(dropped, TTL + 3)
                lan.set_link(host, up=True)
                await meshed(agents, timeout=REBROWSE + 5)
        for agent in agents:
            closed = await stop(agent)
            # Each cycle it expires each of the two others when their cable is cut (when its
            # own is cut it usually expires both others too, unless the cable returns first).
            assert closed["stats"]["expired"] >= 5 * 2
            assert closed["stats"]["resolve_failures"] == 0


async def test_sessions_across_namespaces(lan: NetnsLan) -> None:
    """PLACE FOR SESSIONS: not built yet.

    Once mesh/session.py and mesh/transport.py are wired to discovery, this test
    starts one *agent* (runtime, not bare discovery) per namespace, waits for the
    peer tables to fill as above, opens a Noise session from every host to every
    other one through `Peer.mailbox`, calls `PeerTable.confirm` for each, and
    shows frames flowing; then cuts host 3 and shows hosts 1 and 2 keep exchanging
    frames while host 3's sessions die and it leaves both tables.
    """
    pytest.skip("sessions across namespaces: waiting for mesh.session/mesh.transport wiring")
