"""Two nodes in separate processes over real nng sockets on loopback."""

from __future__ import annotations

import json

import trio

from tests.transport.procs import Proc, hostile


async def test_two_processes_exchange_10000_frames_in_order_both_ways() -> None:
    echo = Proc("echo", "--count", "10000")
    streamer: Proc | None = None
    try:
        hello = await trio.to_thread.run_sync(echo.line)
        streamer = Proc(
            "stream",
            "--count",
            "10000",
            "--connect",
            hello["address"],
            "--expect",
            hello["peer_id"],
        )
        await trio.to_thread.run_sync(streamer.line)  # its own address line
        result = await trio.to_thread.run_sync(streamer.line)
        assert result == {**result, "sent": 10_000, "echoed": 10_000, "in_order": True}
        done = await trio.to_thread.run_sync(echo.line)
        assert done["received"] == 10_000 and done["in_order"]
        assert done["sessions_failed"] == 0 and done["handshakes_failed"] == 0
    finally:
        echo.stop()
        if streamer is not None:
            streamer.stop()


async def test_legitimate_stream_completes_under_200_hostile_connections() -> None:
    echo = Proc("echo", "--count", "10000")
    streamer: Proc | None = None
    attacker = None
    try:
        hello = await trio.to_thread.run_sync(echo.line)
        attacker = hostile(hello["address"], rounds=4)
        # The real peer arrives once the first 200 hostile connections are open (they
        # stay open); more rounds follow while the stream runs. Waiting for that line,
        # not a fixed time, keeps the overlap on a loaded machine where the attacker
        # takes a second just to start.
        assert attacker.stdout is not None
        first_round = json.loads(await trio.to_thread.run_sync(attacker.stdout.readline))
        assert sum(first_round.values()) >= 150, first_round
        streamer = Proc(
            "stream",
            "--count",
            "10000",
            "--connect",
            hello["address"],
            "--expect",
            hello["peer_id"],
        )
        await trio.to_thread.run_sync(streamer.line)
        result = await trio.to_thread.run_sync(streamer.line)
        assert result == {**result, "sent": 10_000, "echoed": 10_000, "in_order": True}
        done = await trio.to_thread.run_sync(echo.line)
        assert done["received"] == 10_000 and done["in_order"]
        assert done["sessions_failed"] == 0
        await trio.to_thread.run_sync(lambda: attacker.communicate(timeout=60))
        # The node saw the garbage and refused it.
        assert done["dropped"] + done["handshakes_failed"] > 50
    finally:
        echo.stop()
        if streamer is not None:
            streamer.stop()
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
