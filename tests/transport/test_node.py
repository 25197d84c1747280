"""Node behaviour over real loopback sockets: reconnects, heartbeats, limits, logs."""

from __future__ import annotations

import socket

import pynng
import pytest
import trio

from mesh.identity import Identity
from mesh.net.node import ConnectError, NodeConfig, SessionClosed, open_node
from mesh.session import HS3, Handshake, LocalIdentity
from mesh.session_frames import Error, Heartbeat, Message
from mesh.wire import Frame
from tests.transport.mitm import Relay, port_of

FAST = NodeConfig(handshake_timeout=1.0, connect_attempts=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_connect_before_the_peer_listens_succeeds_once_it_does() -> None:
    """nng redials with backoff and connect() retries the handshake."""
    address = f"tcp://127.0.0.1:{free_port()}"
    config = NodeConfig(handshake_timeout=0.5, connect_attempts=6)
    bob = Identity.generate()
    async with open_node(Identity.generate(), config=config) as alice, trio.open_nursery() as n:

        async def late_listener() -> None:
            await trio.sleep(0.8)
            async with open_node(bob, address) as node:
                assert await node.receive() == (alice.peer_id, Message("late", b""))

        n.start_soon(late_listener)
        session = await alice.connect(address, expect_peer=bob.peer_id)
        await session.send(Message("late", b""))


async def test_unreachable_peer_gives_a_clear_error() -> None:
    async with open_node(Identity.generate(), config=FAST) as alice:
        with pytest.raises(ConnectError, match="timed out"):
            await alice.connect(f"tcp://127.0.0.1:{free_port()}")
        assert alice.statistics().outboxes == 0  # nothing left dialing


async def test_heartbeats_keep_a_session_and_silence_ends_it() -> None:
    async with open_node(Identity.generate()) as alice, open_node(Identity.generate()) as bob:
        session = await alice.connect(bob.address)
        now = trio.current_time()
        # Idle past the heartbeat interval: alice pings, bob answers.
        alice.handle_timer(now + alice.config.heartbeat_interval + 0.1)
        with trio.fail_after(2):
            while session.last_received <= now:
                await trio.sleep(0.01)
        # Seen from bob, alice goes silent for longer than dead_after.
        bob.handle_timer(trio.current_time() + bob.config.dead_after + 1)
        assert bob.session(alice.peer_id) is None
        assert bob.sessions() == []


async def test_fatal_error_frame_is_delivered_then_ends_the_session() -> None:
    async with open_node(Identity.generate()) as alice, open_node(Identity.generate()) as bob:
        session = await alice.connect(bob.address)
        await session.send(Error("bad-channel", "no such channel", fatal=True))
        assert await bob.receive() == (alice.peer_id, Error("bad-channel", "no such channel", True))
        assert bob.session(alice.peer_id) is None


async def test_close_is_seen_by_the_peer_and_send_after_close_fails() -> None:
    async with open_node(Identity.generate()) as alice, open_node(Identity.generate()) as bob:
        session = await alice.connect(bob.address)
        with trio.fail_after(2):
            while bob.session(alice.peer_id) is None:
                await trio.sleep(0.01)
        await session.aclose("done for today")
        with trio.fail_after(2):
            while bob.session(alice.peer_id) is not None:
                await trio.sleep(0.01)
        with pytest.raises(SessionClosed):
            await session.send(Message("late", b""))


async def test_pending_handshakes_are_capped_and_expire() -> None:
    # Not too short a timeout: on a loaded machine a 1 s one expired stalled
    # handshakes before the flood was through, so they were never evicted.
    config = NodeConfig(max_pending_handshakes=8, handshake_timeout=5.0)
    async with open_node(Identity.generate(), config=config) as bob:
        stalled = LocalIdentity.create(Identity.generate(), "tcp://127.0.0.1:9")
        with pynng.Pair1(send_timeout=5000) as push, trio.fail_after(10):
            push.dial(bob.address, block=True)
            for _ in range(30):
                await push.asend(Handshake(stalled, initiator=True).start())
            with trio.fail_after(10):
                while bob.statistics().handshakes_evicted < 22:
                    await trio.sleep(0.01)
        assert bob.statistics().pending_handshakes == 8
        bob.handle_timer(trio.current_time() + 6)
        assert bob.statistics().pending_handshakes == 0
        with trio.fail_after(10):  # HS2 writes to the dead mailbox give up by their deadline
            while bob.statistics().outboxes:
                await trio.sleep(0.05)


async def test_bad_input_is_logged_with_peer_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    async with open_node(Identity.generate()) as alice, open_node(Identity.generate()) as bob:
        session = await alice.connect(bob.address)
        # Corrupt alice's sending cipher: her next packet fails authentication at bob.
        session.core._send._k = bytes(32)
        await session.send(Heartbeat(1, False))
        with trio.fail_after(2):
            while bob.session(alice.peer_id) is not None:
                await trio.sleep(0.01)
    assert f"session with {alice.peer_id} ended" in caplog.text
    assert "failed authentication" in caplog.text


async def test_frames_keep_their_order_across_the_inline_and_queued_send_paths() -> None:
    """An idle session writes inline; a busy one queues. Mixing the two (bursts after
    pauses longer than IDLE_FAST_PATH, send_nowait and send_many) must never reorder frames --
    the payee would reject the overtaken payment as stale."""
    import random

    rng = random.Random(5)
    async with open_node(Identity.generate()) as alice, open_node(Identity.generate()) as bob:
        session = await alice.connect(bob.address)
        for i in range(600):
            if rng.random() < 0.1:
                await trio.sleep(0.002)  # idle long enough for the inline path
            if rng.random() < 0.2:
                assert session.send_nowait(Message(str(i), b""))
            else:
                await session.send(Message(str(i), b""))
        for i in range(600, 1200, 3):  # batches: inline when nothing is queued
            if rng.random() < 0.2:
                await trio.sleep(0.002)
            if rng.random() < 0.3:
                assert session.send_nowait(Message(str(i), b""))
                await session.send_many([Message(str(i + 1), b""), Message(str(i + 2), b"")])
            else:
                await session.send_many([Message(str(i + k), b"") for k in range(3)])
        for i in range(1200):
            with trio.fail_after(5):
                _, frame = await bob.receive()
            assert frame == Message(str(i), b"")


async def test_a_late_watcher_can_replay_the_sessions_already_up() -> None:
    async with open_node(Identity.generate()) as alice, open_node(Identity.generate()) as bob:
        await alice.connect(bob.address, expect_peer=bob.peer_id)
        with trio.fail_after(5):
            while bob.session(alice.peer_id) is None:
                await trio.sleep(0.01)
        plain = bob.watch_sessions()
        replayed = bob.watch_sessions(replay=True)
        event = replayed.receive_nowait()
        assert event.up and event.peer.peer_id == alice.peer_id
        with pytest.raises(trio.WouldBlock):
            plain.receive_nowait()  # without replay: only what happens from now on
        await bob.session(alice.peer_id).aclose()  # type: ignore[union-attr]
        with trio.fail_after(5):
            assert not (await replayed.receive()).up
            assert not (await plain.receive()).up


async def test_send_many_splits_a_large_batch_into_packets_in_order() -> None:
    """A batch larger than coalesce_bytes goes out as several packets, still in order."""
    config = NodeConfig(coalesce_bytes=2_000)
    async with (
        open_node(Identity.generate(), config=config) as alice,
        open_node(Identity.generate()) as bob,
    ):
        session = await alice.connect(bob.address)
        before = bob.statistics().packets_received
        await session.send_many([Message(str(i), bytes(300)) for i in range(40)])
        received = []
        with trio.fail_after(5):
            async for _, frame in bob.incoming():
                received.append(frame)
                if len(received) == 40:
                    break
        assert received == [Message(str(i), bytes(300)) for i in range(40)]
        assert bob.statistics().packets_received - before >= 40 * 300 // 2_000


async def test_no_frame_overtakes_the_handshake_s_last_packet() -> None:
    """The initiator's HS3 is written by the session's sender task; a frame sent before
    that task ran (an application reacting to the session at once) must queue behind
    it. Before the fix, `send_many` wrote straight to the socket: the responder dropped
    that packet (no session yet), then killed the session at the next one (counter 1,
    expected 0). Real sockets: a mailbox socket sees what leaves, in order."""
    from mesh.net.peer import Outbox, PeerSession
    from mesh.session import DATA, packet_kind
    from tests.test_session import pair

    initiator, responder = pair()
    address = f"tcp://127.0.0.1:{free_port()}"
    with pynng.Pair1(polyamorous=True, listen=address, recv_timeout=5_000) as pull:
        outbox = Outbox(address, NodeConfig())
        try:
            peer = PeerSession(NodeConfig(), initiator, outbox, lambda p, r: None, b"HS3")
            with trio.fail_after(1):  # both before the sender task runs
                await peer.send_many([Message("early", b"")])
                await peer.send(Message("early too", b""))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.run_sender)
                assert await trio.to_thread.run_sync(pull.recv) == b"HS3"
                packet = await trio.to_thread.run_sync(pull.recv)
                assert packet_kind(packet) == DATA
                # The responder opens it as the session's first packet (counter 0).
                assert responder.open(packet) == [Message("early", b""), Message("early too", b"")]
                nursery.cancel_scope.cancel()
        finally:
            outbox.close()


async def test_hanging_up_on_a_peer_that_stopped_reading_holds_up_no_one() -> None:
    """A handler hangs up on a peer whose connection no longer drains, so the goodbye
    cannot be written: it goes straight on, and another peer's frame is handled at
    once, not after `close_grace` (SECURITY risk 5). Nothing the peer sends after the
    hang-up is delivered, and its session ends once the grace is over."""
    grace = 3.0
    handled: list[tuple[str, str, float]] = []
    config = NodeConfig(close_grace=grace)
    port = free_port()
    relay = Relay(port, lambda _, body: [body])
    mailbox = f"tcp://127.0.0.1:{port}"  # reached through the relay only
    async with trio.open_nursery() as nursery, open_node(Identity.generate(), config=config) as bob:
        await nursery.start(relay.run)

        async def handler(peer_id: str, frame: Frame, last: bool) -> None:
            assert isinstance(frame, Message)
            handled.append((peer_id, frame.topic, trio.current_time()))
            if frame.topic == "violation":
                assert bob.hang_up(peer_id, "repeated channel violations")

        nursery.start_soon(bob.serve, handler)
        async with (
            open_node(Identity.generate(), mailbox, advertise=relay.address) as victor,
            open_node(Identity.generate()) as carol,
        ):
            from_victor = await victor.connect(bob.address, expect_peer=bob.peer_id)
            from_carol = await carol.connect(bob.address, expect_peer=bob.peer_id)
            to_victor = bob.session(victor.peer_id)
            assert to_victor is not None
            relay.stall()
            filler = Message("fill", bytes(60_000))
            while to_victor.send_nowait(filler):  # ~60 MB: more than nng and TCP hold
                pass
            await trio.sleep(0.5)  # the sender task is now stuck writing
            await from_victor.send(Message("violation", b""))
            with trio.fail_after(5):
                while not handled:
                    await trio.sleep(0.01)
            assert to_victor.hanging_up and bob.session(victor.peer_id) is to_victor
            await from_victor.send(Message("late", b""))
            await from_carol.send(Message("hello", b""))
            with trio.fail_after(grace + 3):
                while bob.session(victor.peer_id) is not None:
                    await trio.sleep(0.01)
            hung_up = handled[0][2]
            assert [(p, t) for p, t, _ in handled] == [
                (victor.peer_id, "violation"),
                (carol.peer_id, "hello"),
            ]
            assert handled[1][2] - hung_up < 1.0, "the hang-up held up another peer"
            with pytest.raises(SessionClosed):
                await to_victor.send(Message("after", b""))
            relay.resume()
        nursery.cancel_scope.cancel()


async def test_a_handshake_the_responder_never_confirms_raises_and_leaves_no_session() -> None:
    """The initiator has a session once HS2 arrives, but the responder has none until
    HS3: with HS3 lost (or the responder's half evicted), connect used to return that
    session as established when the wait for confirmation timed out."""
    drop_hs3 = lambda _, body: [] if body[:1] == bytes([HS3]) else [body]  # noqa: E731
    async with trio.open_nursery() as nursery:
        async with open_node(Identity.generate(), config=FAST) as bob:
            relay = Relay(port_of(bob.address), drop_hs3)
            await nursery.start(relay.run)
            async with open_node(Identity.generate(), config=FAST) as alice:
                with pytest.raises(ConnectError, match="timed out"):
                    await alice.connect(relay.address, expect_peer=bob.peer_id)
                assert alice.sessions() == [] and alice.session(bob.peer_id) is None
                with trio.fail_after(5):  # the outbox goes once the goodbye has had its grace
                    while alice.statistics().outboxes:
                        await trio.sleep(0.05)
            assert bob.sessions() == []
        nursery.cancel_scope.cancel()
