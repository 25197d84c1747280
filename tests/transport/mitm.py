"""A man in the middle for nng's TCP transport: relays, reads, and tampers.

nng over TCP starts with an 8-byte SP header each way, then every message is a
64-bit big-endian length and the body; pair1 (`mesh.net.sockets`) starts each body
with a 4-byte hop count. The relay parses that framing on the client-to-server
direction and lets a test inspect or rewrite each packet (the body after the hop
count, which it puts back).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import trio

Tamper = Callable[[int, bytes], list[bytes]]
HOP_COUNT = 4  # bytes: pair1's header on every message


class Relay:
    """Listens on loopback and relays every connection to `upstream`."""

    def __init__(self, upstream_port: int, tamper: Tamper) -> None:
        self.upstream_port = upstream_port
        self.tamper = tamper
        self.seen: list[bytes] = []
        self.port = 0
        self._flowing = trio.Event()
        self._flowing.set()

    def stall(self) -> None:
        """Stop reading from the client side (a peer that stopped reading)."""
        self._flowing = trio.Event()

    def resume(self) -> None:
        """Read from the client side again."""
        self._flowing.set()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_messages, client, server)
            nursery.start_soon(self._forward_raw, server, client)

    async def _forward_raw(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        async for chunk in src:
            await dst.send_all(chunk)

    async def _forward_messages(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        buffer = b""
        header_done = False
        while True:
            await self._flowing.wait()
            chunk = await src.receive_some()
            if not chunk:
                return
            buffer += chunk
            if not header_done and len(buffer) >= 8:
                await dst.send_all(buffer[:8])
                buffer, header_done = buffer[8:], True
            while header_done and len(buffer) >= 8:
                (size,) = struct.unpack(">Q", buffer[:8])
                if len(buffer) < 8 + size:
                    break
                body, buffer = buffer[8 : 8 + size], buffer[8 + size :]
                hops, packet = body[:HOP_COUNT], body[HOP_COUNT:]
                self.seen.append(packet)
                for out in self.tamper(len(self.seen) - 1, packet):
                    await dst.send_all(struct.pack(">Q", HOP_COUNT + len(out)) + hops + out)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])
