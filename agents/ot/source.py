"""What a bridged feed shares: readings that arrive from outside, handed to every order.

A *source* (an OPC UA node, a Sparkplug metric) runs in the agent's nursery (`run`),
connects, reconnects with back-off, and `publish`es each reading it receives into its
`ChangeFeed`. Each order of the feed reads from the feed with a cursor of its own
(`next`): every order sees every reading published after it started, in order; an
order that falls more than `ChangeFeed.capacity` readings behind skips the oldest
(counted in `skipped`). While the source is disconnected nothing is published, so the
feed delivers nothing and bills nothing.

The feed is a ring of the last `capacity` readings: memory is bounded whatever the rate
or the number of orders. (docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Protocol

import trio

from mesh.readings import Reading

MAX_CURSORS = 1024
"""Orders remembered per feed (the least recently read is forgotten first: it starts
again from the newest reading)."""


class ChangeFeed:
    """The last `capacity` readings of one source, numbered, with a cursor per order."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.published = 0
        """Readings published so far (the next one's number)."""
        self.skipped = 0
        """Readings some order never saw because it fell behind."""
        self._ring: deque[Reading] = deque(maxlen=capacity)
        self._cursors: OrderedDict[bytes, int] = OrderedDict()
        self._changed = trio.Event()

    def publish(self, reading: Reading) -> None:
        """A new reading from the source (non-blocking; call from Trio)."""
        self._ring.append(reading)
        self.published += 1
        self._changed.set()
        self._changed = trio.Event()

    def latest(self) -> Reading | None:
        """The newest reading, if any."""
        return self._ring[-1] if self._ring else None

    def take(self, order: bytes) -> Reading | None:
        """The next reading for `order` if one is there (an order's first cursor is
        the next reading published), else None."""
        cursor = self._cursors.pop(order, self.published)
        oldest = self.published - len(self._ring)
        if cursor < oldest:
            self.skipped += oldest - cursor
            cursor = oldest
        self._cursors[order] = cursor
        if len(self._cursors) > MAX_CURSORS:
            self._cursors.popitem(last=False)
        if cursor >= self.published:
            return None
        self._cursors[order] = cursor + 1
        return self._ring[cursor - oldest]

    async def next(self, order: bytes) -> Reading:
        """Wait for the next reading for `order`."""
        while True:
            reading = self.take(order)
            if reading is not None:
                return reading
            await self._changed.wait()

    def forget(self, order: bytes) -> None:
        """`order` ended: drop its cursor."""
        self._cursors.pop(order, None)


class ReadingSource(Protocol):
    """A bridged feed: `run` keeps the connection (in the agent's nursery); its `feed`
    holds what arrived."""

    feed: ChangeFeed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, keep connected (back-off between attempts), publish readings."""
        ...

    def status(self) -> str:
        """One line: connected or not, and why."""
        ...


__all__ = ["MAX_CURSORS", "ChangeFeed", "ReadingSource"]
