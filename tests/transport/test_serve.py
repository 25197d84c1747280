"""`Node.serve`: frames handled by whichever task read them, in order, one at a time,
while the node keeps receiving (over real loopback sockets)."""

from __future__ import annotations

import pynng
import pytest
import trio

from mesh.identity import Identity
from mesh.net.node import Node, open_node
from mesh.session_frames import Message
from mesh.wire import Frame


def queued(node: Node) -> int:
    """How many received frames wait behind the one being handled (the node's inbox,
    looked into: the application learns the end of a burst from the handler's `last`)."""
    return node.tables.inbox.queued()


async def test_a_slow_handler_never_stops_the_node_receiving() -> None:
    """While the handler is stuck on one frame, a new peer completes its handshake and
    frames queue up; then every frame is handled in order and never two at once."""
    handled: list[tuple[str, str]] = []
    running = 0
    release = trio.Event()

    async with open_node(Identity.generate()) as bob:

        async def handler(peer_id: str, frame: Frame, last: bool) -> None:
            nonlocal running
            assert isinstance(frame, Message)
            running += 1
            assert running == 1, "the handler ran twice at once"
            if frame.topic == "stuck":
                await release.wait()
            else:
                await trio.sleep(0)  # let the other task read meanwhile
            handled.append((peer_id, frame.topic))
            running -= 1

        async with (
            trio.open_nursery() as nursery,
            open_node(Identity.generate()) as alice,
            open_node(Identity.generate()) as carol,
        ):
            nursery.start_soon(bob.serve, handler)
            to_bob = await alice.connect(bob.address)
            await to_bob.send(Message("stuck", b""))
            with trio.fail_after(5):
                while queued(bob) or not running:
                    await trio.sleep(0.01)
                late = await carol.connect(bob.address)  # handshakes go on meanwhile
            for i in range(50):
                await to_bob.send(Message(f"a{i}", b""))
                await late.send(Message(f"c{i}", b""))
            with trio.fail_after(5):
                while queued(bob) < 100:
                    await trio.sleep(0.01)
            release.set()
            with trio.fail_after(5):
                while len(handled) < 101:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert handled[0] == (alice.peer_id, "stuck")
    assert [t for p, t in handled if p == alice.peer_id] == ["stuck"] + [f"a{i}" for i in range(50)]
    assert [t for p, t in handled if p == carol.peer_id] == [f"c{i}" for i in range(50)]


async def test_the_last_frame_of_a_burst_is_marked_last() -> None:
    """A batch sent as one packet is queued whole before it is handled: the handler is
    told `last` on the frame with nothing queued behind it (it ends a group commit)."""
    seen: list[int] = []
    lasts: list[bool] = []
    async with open_node(Identity.generate()) as bob, open_node(Identity.generate()) as alice:

        async def handler(peer_id: str, frame: Frame, last: bool) -> None:
            seen.append(queued(bob))
            lasts.append(last)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bob.serve, handler)
            session = await alice.connect(bob.address)
            await session.send_many([Message(str(i), b"") for i in range(20)])
            with trio.fail_after(5):
                while len(seen) < 20:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert seen == list(range(19, -1, -1))
    assert lasts == [False] * 19 + [True]


@pytest.mark.parametrize("served", [False, True])
async def test_empty_and_tiny_packets_are_dropped_not_fatal(served: bool) -> None:
    """nng delivers a zero-length message as NULL: the receive loop must survive it."""
    got: list[Frame] = []
    async with open_node(Identity.generate()) as bob, trio.open_nursery() as nursery:

        async def handler(peer_id: str, frame: Frame, last: bool) -> None:
            got.append(frame)

        async def take(node: Node) -> None:
            async for _, frame in node.incoming():
                got.append(frame)

        if served:
            nursery.start_soon(bob.serve, handler)
        else:
            nursery.start_soon(take, bob)
        # asynchronous sends under a deadline: a synchronous send waits for the
        # receiving pipe, and so can block the very loop that would drain it.
        with pynng.Pair1(send_timeout=5000) as raw, trio.fail_after(10):
            raw.dial(bob.address, block=True)
            for junk in (b"", b"\x00", b"\x03", b"\x01" + bytes(3)):
                await raw.asend(junk)
        async with open_node(Identity.generate()) as alice:
            session = await alice.connect(bob.address)
            await session.send(Message("still here", b""))
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.01)
        assert got == [Message("still here", b"")]
        assert bob.statistics().packets_dropped >= 3
        nursery.cancel_scope.cancel()


async def test_a_served_node_refuses_incoming() -> None:
    async with open_node(Identity.generate()) as node, trio.open_nursery() as nursery:

        async def handler(peer_id: str, frame: Frame, last: bool) -> None:
            pass

        nursery.start_soon(node.serve, handler)
        await trio.sleep(0.01)
        with pytest.raises(RuntimeError, match="served"):
            await node.receive()
        with pytest.raises(RuntimeError, match="already"):
            await node.serve(handler)
        nursery.cancel_scope.cancel()
