"""A node in its own process, driven by the transport tests.

Prints one JSON line {"address", "peer_id"} once listening, then plays a role:
  echo    answer every Message with the same Message; exit after --count of them
  stream  connect to --connect, send --count numbered Messages, read the echoes
  idle    only listen, for --seconds; then print the node's statistics
  hs1flood  (no node) send first handshake packets that are never finished to
          --connect from --source, as fast as they go, for --seconds
and prints one JSON result line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import pynng
import trio

from mesh.identity import Identity
from mesh.net.node import open_node
from mesh.session import Handshake, LocalIdentity
from mesh.session_frames import Message


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def echo(count: int, listen: str) -> None:
    async with open_node(Identity.generate(), listen) as node:
        emit(address=node.address, peer_id=node.peer_id)
        expected = 0
        in_order = True
        async for peer_id, frame in node.incoming():
            if not isinstance(frame, Message):
                continue
            in_order &= int(frame.topic) == expected
            expected += 1
            session = node.session(peer_id)
            assert session is not None
            await session.send(frame)
            if expected == count:
                break
        stats = node.statistics()
        emit(
            received=expected,
            in_order=in_order,
            sessions_failed=stats.sessions_failed,
            handshakes_failed=stats.handshakes_failed,
            dropped=stats.packets_dropped,
        )
        await trio.sleep(0.5)  # let the last echoes leave


async def stream(count: int, size: int, target: str, expect: str) -> None:
    async with open_node(Identity.generate()) as node:
        emit(address=node.address, peer_id=node.peer_id)
        session = await node.connect(target, expect_peer=expect)
        started = time.perf_counter()
        received = 0
        in_order = True

        async def read_echoes() -> None:
            nonlocal received, in_order
            async for _, frame in node.incoming():
                assert isinstance(frame, Message)
                in_order &= int(frame.topic) == received
                received += 1
                if received == count:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_echoes)
            body = bytes(size)
            for i in range(count):
                await session.send(Message(str(i), body))
        emit(sent=count, echoed=received, in_order=in_order, seconds=time.perf_counter() - started)


async def idle(seconds: float, listen: str) -> None:
    async with open_node(Identity.generate(), listen) as node:
        emit(address=node.address, peer_id=node.peer_id)
        await trio.sleep(seconds)
        emit(**asdict(node.statistics()))


def hs1flood(target: str, source: str, seconds: float) -> None:
    me = LocalIdentity.create(Identity.generate(), f"tcp://{source}:9")
    packets = [Handshake(me, initiator=True).start() for _ in range(500)]
    with pynng.Pair1(send_buffer_size=256) as push:
        push.dial(f"tcp://{source};{target.removeprefix('tcp://')}", block=True)
        emit(flooding=True)
        sent = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for packet in packets:
                try:
                    push.send(packet, block=False)
                    sent += 1
                except pynng.TryAgain:
                    time.sleep(0.0005)
        emit(sent=sent)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["echo", "stream", "idle", "hs1flood"])
    parser.add_argument("--source", default="127.0.0.1")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--listen", default="tcp://127.0.0.1:0")
    parser.add_argument("--connect")
    parser.add_argument("--expect")
    args = parser.parse_args()
    if args.role == "echo":
        trio.run(echo, args.count, args.listen)
    elif args.role == "hs1flood":
        hs1flood(args.connect, args.source, args.seconds)
    elif args.role == "idle":
        trio.run(idle, args.seconds, args.listen)
    else:
        trio.run(stream, args.count, args.size, args.connect, args.expect)


if __name__ == "__main__":
    sys.exit(main())
