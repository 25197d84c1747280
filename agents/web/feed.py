"""One snapshot shared by every viewer: whatever the number of open dashboards, SSE
streams and scrapes, the status is computed at most once per `max_age` seconds, and
not at all while nobody looks (so an agent with no browser open pays nothing).

The event streams keep time with the snapshot, not each with its own clock: each
sleeps until one interval after the snapshot was computed, the first awake computes
the next, and the others send that same one -- so every page gets a snapshot at most
~`interval` old, and any number of pages costs one snapshot per interval.
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

Snapshot = dict[str, Any]


class SnapshotCache:
    """The latest result of `compute`, refreshed when older than `max_age` seconds."""

    def __init__(self, compute: Callable[[], Awaitable[Snapshot]], max_age: float = 0.5) -> None:
        """Nothing computed until the first `get`."""
        self._compute = compute
        self.max_age = max_age
        self._value: Snapshot | None = None
        self._lock = trio.Lock()
        self.computed_at = -float("inf")
        """Trio time the last computation started (its age counts from there)."""

    async def get(self) -> Snapshot:
        """A snapshot at most `max_age` old; concurrent callers share one computation."""
        async with self._lock:
            if self._value is None or trio.current_time() - self.computed_at >= self.max_age:
                started = trio.current_time()
                self._value = await self._compute()
                self.computed_at = started
            return self._value


def sse_message(event: str, data: Snapshot) -> bytes:
    """One server-sent event: its name and its data as one line of JSON."""
    body = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()


async def sse_stream(cache: SnapshotCache, event: str, interval: float) -> AsyncIterator[bytes]:
    """Server-sent events of `cache`'s snapshot, the first at once, then one `interval`
    after each computation of it (`cache.max_age` must be below `interval`); a comment
    line first so the browser sees the stream open."""
    yield b": m2mesh\n\n"
    while True:
        yield sse_message(event, await cache.get())
        await trio.sleep_until(max(cache.computed_at + interval, trio.current_time() + 0.05))
