"""A node's inbox: received application frames on their way to the application.

The node (`mesh.net.node`) opens packets and `deliver`s their frames here; the
application takes them from `incoming()` / `receive()` in a task of its own, or has
them handled by a handler (`Node.serve`), which runs in whichever of the node's
reading tasks queued them, between turns at reading the mailbox (`reading`).
Frames from one peer leave in the order they arrived, and the handler never runs
twice at once. The handler is told which frame is the last of what has arrived (its
`last` argument: nothing waits behind it), so it can end a group commit there.
`queued()` says how many wait (an observation, for tests and statistics).

This module reads no socket and makes no protocol decision. (docs/ARCHITECTURE.md §2, §9)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from mesh.locks import acquire
from mesh.wire import Frame

Handler = Callable[[str, Frame, bool], Awaitable[None]]
"""handler(peer_id, frame, last): what `Node.serve` does with each application frame;
`last` is the end of a burst: no frame is queued behind this one."""


class Inbox:
    """Application frames waiting, and who takes them: a consumer task or a handler."""

    def __init__(self, capacity: int) -> None:
        """Hold at most `capacity` frames; `deliver` waits while it is full."""
        self._send, self._recv = trio.open_memory_channel[tuple[str, Frame]](capacity)
        self._queued = 0  # cheaper to count than to ask the channel
        self.reading = trio.Lock()
        """Held by the task whose turn it is to read the mailbox."""
        self.handler: Handler | None = None
        self._handling = False  # a task is running the handler: frames wait

    def queued(self) -> int:
        """How many frames wait behind the one being handled."""
        return self._queued

    async def deliver(self, peer_id: str, frame: Frame) -> None:
        """Queue a frame for the application; waits only while the inbox is full.

        No checkpoint when there is room: the reading task then opens every packet
        that is ready before the application runs, and it handles them as one burst.
        """
        self._queued += 1  # before: the application may take it before we resume
        try:
            self._send.send_nowait((peer_id, frame))
        except trio.WouldBlock:
            try:
                await self._send.send((peer_id, frame))
            except BaseException:
                self._queued -= 1
                raise

    async def incoming(self) -> AsyncIterator[tuple[str, Frame]]:
        """Every frame, checkpointing once per burst rather than once per frame."""
        self._not_served()
        receive = self._recv
        while True:
            try:
                item = await receive.receive()
            except trio.EndOfChannel:
                return
            self._queued -= 1
            yield item
            while True:
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._queued -= 1
                yield item

    async def receive(self) -> tuple[str, Frame]:
        """The next frame and the peer id that sent it."""
        self._not_served()
        item = await self._recv.receive()
        self._queued -= 1
        return item

    async def handle_queued(self) -> None:
        """Run the handler on every queued frame, unless none is set or another task
        is at it already (it will take these too, in order)."""
        handler = self.handler
        if handler is None or self._handling:
            return
        self._handling = True
        try:
            while self._queued:  # (not ending on WouldBlock: an exception per burst)
                try:
                    peer_id, frame = self._recv.receive_nowait()
                except trio.WouldBlock:  # not while `_queued` counts right
                    return
                self._queued -= 1
                await handler(peer_id, frame, self._queued == 0)
        finally:
            self._handling = False

    async def take_turn(self) -> None:
        """Wait for the turn to read the mailbox (release `reading` to pass it on)."""
        await acquire(self.reading)

    def _not_served(self) -> None:
        if self.handler is not None:
            raise RuntimeError("this node is being served: its frames go to the handler")


__all__ = ["Handler", "Inbox"]
