"""One side of a messaging benchmark, run as its own process by bench.messaging.

Every role prints JSON lines: first {"address": ...} when it listens, then its result.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable

import pynng
import trio

from mesh.identity import Identity
from mesh.net.node import NodeConfig, open_node
from mesh.session_frames import Message

MAX = 1 << 20


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


# ---------------------------------------------------------------- raw pynng (sync API)


def raw_sink(count: int) -> None:
    with pynng.Pair1(polyamorous=True, recv_max_size=MAX) as sock:
        sock.listen("tcp://127.0.0.1:0")
        emit(address="tcp://" + str(sock.listeners[0].local_address))
        sock.recv_msg()
        start = time.perf_counter()
        for _ in range(count - 1):
            sock.recv_msg()
        emit(rate=(count - 1) / (time.perf_counter() - start))


def raw_source(address: str, count: int, size: int) -> None:
    with pynng.Pair1(send_buffer_size=1024) as sock:
        sock.dial(address, block=True)
        body = bytes(size)
        for _ in range(count):
            sock.send(body)
        time.sleep(0.5)


def raw_echo() -> None:
    with pynng.Pair1(polyamorous=True, recv_max_size=MAX) as inbox, pynng.Pair1() as outbox:
        inbox.listen("tcp://127.0.0.1:0")
        emit(address="tcp://" + str(inbox.listeners[0].local_address))
        reply_to = inbox.recv_msg().bytes.decode()
        outbox.dial(reply_to, block=True)
        outbox.send(b"ready")
        while True:
            message = inbox.recv_msg().bytes
            if message == b"stop":
                return
            outbox.send(message)


def raw_ping(address: str, count: int, size: int) -> None:
    with pynng.Pair1(polyamorous=True, recv_max_size=MAX) as inbox, pynng.Pair1() as outbox:
        inbox.listen("tcp://127.0.0.1:0")
        outbox.dial(address, block=True)
        outbox.send(("tcp://" + str(inbox.listeners[0].local_address)).encode())
        inbox.recv_msg()
        body = bytes(size)
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            outbox.send(body)
            inbox.recv_msg()
            samples.append(time.perf_counter() - start)
        outbox.send(b"stop")
        emit(rtts=samples)


# ---------------------------------------------------------------- raw Trio TCP


async def tcp_sink(count: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    emit(address=f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    stream = await listeners[0].accept()
    buffer = bytearray()
    received = 0
    start = 0.0
    while received < count:
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 4:
            (size,) = struct.unpack_from("<I", buffer)
            if len(buffer) < 4 + size:
                break
            del buffer[: 4 + size]
            received += 1
            if received == 1:
                start = time.perf_counter()
    emit(rate=(received - 1) / (time.perf_counter() - start))


async def tcp_source(address: str, count: int, size: int) -> None:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = struct.pack("<I", size) + bytes(size)
    for _ in range(count):
        await stream.send_all(frame)
    await stream.aclose()


async def tcp_echo() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    emit(address=f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    stream = await listeners[0].accept()
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async for chunk in stream:
        await stream.send_all(chunk)


async def tcp_ping(address: str, count: int, size: int) -> None:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = bytes(size)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await stream.send_all(body)
        got = 0
        while got < size:
            got += len(await stream.receive_some(size - got))
        samples.append(time.perf_counter() - start)
    emit(rtts=samples)


# ---------------------------------------------------------------- m2mesh


async def mesh_sink(count: int) -> None:
    async with open_node(Identity.generate(), config=NodeConfig(dead_after=120)) as node:
        emit(address=node.address, peer_id=node.peer_id)
        received = 0
        start = 0.0
        async for _, frame in node.incoming():
            if isinstance(frame, Message):
                received += 1
                if received == 1:
                    start = time.perf_counter()
                elif received == count:
                    break
        emit(rate=(received - 1) / (time.perf_counter() - start))


async def mesh_source(address: str, count: int, size: int) -> None:
    async with open_node(Identity.generate(), config=NodeConfig(dead_after=120)) as node:
        session = await node.connect(address)
        frame = Message("b", bytes(size))
        for _ in range(count):
            await session.send(frame)
        await trio.sleep(1.0)


async def mesh_echo() -> None:
    async with open_node(Identity.generate(), config=NodeConfig(dead_after=120)) as node:
        emit(address=node.address, peer_id=node.peer_id)
        async for peer_id, frame in node.incoming():
            if isinstance(frame, Message) and frame.topic == "stop":
                return
            session = node.session(peer_id)
            if session is not None:
                await session.send(frame)


async def mesh_ping(address: str, count: int, size: int) -> None:
    async with open_node(Identity.generate(), config=NodeConfig(dead_after=120)) as node:
        session = await node.connect(address)
        frame = Message("b", bytes(size))
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await session.send(frame)
            await node.receive()
            samples.append(time.perf_counter() - start)
        await session.send(Message("stop", b""))
        emit(rtts=samples)
        await trio.sleep(0.2)


def main() -> None:
    role, *rest = sys.argv[1:]
    args = [int(a) if a.isdigit() else a for a in rest]
    sync_roles: dict[str, Callable[..., None]] = {
        "raw-sink": raw_sink,
        "raw-source": raw_source,
        "raw-echo": raw_echo,
        "raw-ping": raw_ping,
    }
    trio_roles: dict[str, Callable[..., Awaitable[None]]] = {
        "tcp-sink": tcp_sink,
        "tcp-source": tcp_source,
        "tcp-echo": tcp_echo,
        "tcp-ping": tcp_ping,
        "mesh-sink": mesh_sink,
        "mesh-source": mesh_source,
        "mesh-echo": mesh_echo,
        "mesh-ping": mesh_ping,
    }
    if role in sync_roles:
        sync_roles[role](*args)
    else:
        trio.run(trio_roles[role], *args)


if __name__ == "__main__":
    main()
