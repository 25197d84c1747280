"""Taking a Trio lock on a hot path.

`await lock.acquire()` always passes through the scheduler, even when the lock is
free; on paths run once per packet or per commit that trip is a measurable share of
the work. This module never decides what a lock protects. (docs/ARCHITECTURE.md §9)
"""

from __future__ import annotations

import trio


async def acquire(lock: trio.Lock | trio.CapacityLimiter) -> None:
    """Take `lock` at once when it is free; otherwise wait for it like `acquire()`."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


__all__ = ["acquire"]
