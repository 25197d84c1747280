"""Per-source limits over real loopback sockets from several source addresses.

Every address in 127.0.0.0/8 is this host's, and nng dials from a chosen one
(``tcp://127.0.0.2;host:port``), so one machine plays a hostile neighbour at
127.0.0.2 beside an honest peer at 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pynng
import pytest
import trio

from mesh.identity import Identity
from mesh.net.node import Node, NodeConfig, open_node
from mesh.net.sockets import outbox_socket
from mesh.session import Handshake, LocalIdentity
from tests.transport.procs import Proc
from tests.transport.test_adversaries import wait_until

HOSTILE = "127.0.0.2"


@contextmanager
def dialers(node: Node, count: int, source: str = HOSTILE) -> Iterator[list[pynng.Pair1]]:
    """`count` outbox sockets dialling `node`'s mailbox once each, from `source`."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(outbox_socket(send_buffer_size=8))
            sock.dial(f"tcp://{source};{node.address.removeprefix('tcp://')}", block=False)
            socks.append(sock)
        yield socks


def stalled_hs1s(count: int) -> list[bytes]:
    """First handshake packets that name a mailbox no one listens on."""
    me = LocalIdentity.create(Identity.generate(), f"tcp://{HOSTILE}:9")
    return [Handshake(me, initiator=True).start() for _ in range(count)]


async def test_connections_past_a_sources_share_are_turned_away_and_others_still_connect() -> None:
    config = NodeConfig(max_connections_per_source=4)
    async with open_node(Identity.generate(), config=config) as bob:
        with dialers(bob, 10):
            await wait_until(lambda: bob.statistics().connections_refused == 6, timeout=10)
            assert bob.connections_from(HOSTILE) == 4
            # The honest peer, from another address, is not held up by the full share.
            async with open_node(Identity.generate(), config=config) as alice:
                session = await alice.connect(bob.address, attempts=1)
                assert bob.connections_from("127.0.0.1") == 1
                await session.aclose("done")
        # Connections that close give their place back.
        await wait_until(lambda: bob.connections_from(HOSTILE) == 0, timeout=10)
        with dialers(bob, 4):
            await wait_until(lambda: bob.connections_from(HOSTILE) == 4, timeout=10)
            assert bob.statistics().connections_refused == 6


async def test_a_handshake_flood_from_one_source_is_cut_to_its_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = NodeConfig(handshakes_per_source_per_s=5, handshake_burst_per_source=10)
    async with open_node(Identity.generate(), config=config) as bob:
        with dialers(bob, 1) as [push]:
            for packet in stalled_hs1s(50):
                push.send(packet)
            await wait_until(lambda: bob.statistics().handshakes_limited >= 35, timeout=10)
            assert bob.statistics().pending_handshakes <= 12  # the burst, and a refill
            async with open_node(Identity.generate()) as alice:
                await alice.connect(bob.address, attempts=1)  # its budget is its own
        # A timer pass says what was turned away since the last (not a line per packet).
        bob.handle_timer(trio.current_time())
        bob.handle_timer(trio.current_time())  # nothing new: no line
        lines = [r.getMessage() for r in caplog.records if "per-source limits" in r.getMessage()]
        reported = [int(line.split(" and ")[1].split()[0]) for line in lines]
        assert sum(reported) == bob.statistics().handshakes_limited and len(lines) <= 3


async def test_a_full_handshake_table_evicts_from_the_source_holding_the_most() -> None:
    """A process floods unfinished handshakes from one address, faster than a round
    trip: with the oldest evicted, an honest peer's half-done handshake was evicted
    before it could finish; now the flood evicts its own. The per-source budget is
    lifted here so that only the eviction rule acts."""
    config = NodeConfig(
        max_pending_handshakes=8,
        handshake_timeout=2.0,
        handshakes_per_source_per_s=1e9,
        handshake_burst_per_source=1e9,
    )
    async with open_node(Identity.generate(), config=config) as bob:
        flood = Proc("hs1flood", "--connect", bob.address, "--source", HOSTILE, "--seconds", "30")
        try:
            flood.line()
            await wait_until(lambda: bob.statistics().handshakes_evicted > 200, timeout=10)
            async with open_node(Identity.generate(), config=config) as alice:
                # Five handshakes during which the flood turned the whole table over
                # (more evictions than slots): under the oldest-first rule each would
                # have lost its slot. A connect the flood did not outpace (a loaded
                # machine slows the flood too) proves nothing either way: try again.
                under_flood = 0
                for _ in range(25):
                    evicted = bob.statistics().handshakes_evicted
                    session = await alice.connect(bob.address, attempts=1)
                    turned_over = bob.statistics().handshakes_evicted > evicted + 8
                    await session.aclose("again")
                    under_flood += turned_over
                    if under_flood == 5:
                        break
                assert under_flood == 5
        finally:
            flood.stop()
