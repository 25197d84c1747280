"""Storage health: whether the agent's stores can be written, and why not.

A full disk or an I/O error must never end the agent (docs/ARCHITECTURE.md §10, money rules). The
components that write -- the channel group commit, the signed log and its anchoring --
report each failed write (`fault`) and each write that worked (`ok`) to one
`StorageHealth`. While any component is faulted the agent takes no new channels or
orders and delivers only what is already paid; every writer keeps what it could not
write and tries again (`backoff`), and the first write that works clears its fault.

This module owns the log lines about it: at most one fault line a minute however many
writes fail (a failing disk must not also fill the log), and one line when writes work
again. It does no other I/O; time comes from the injected `clock`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from mesh.store import StoreError

log = logging.getLogger("mesh.health")
T = TypeVar("T")

STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.OperationalError, StoreError, OSError)
"""What a store write raises when the disk is full or failing. Not every `sqlite3.Error`:
a constraint or programming error is a bug (or a foreign writer) and must stay loud."""
RETRY_FIRST = 0.5
"""Seconds before the first retry of a failed write."""
RETRY_MAX = 5.0
"""The longest wait between two retries."""
LOG_EVERY = 60.0
"""Seconds between two log lines about a fault."""


def backoff(delay: float) -> float:
    """The wait before the next try, after a failed try that had waited `delay` (0: the
    first failure): 0.5 s, doubling, at most 5 s."""
    return RETRY_FIRST if delay <= 0 else min(delay * 2, RETRY_MAX)


def describe(exc: BaseException) -> str:
    """An error as one short line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@dataclass(frozen=True)
class StorageStatistics:
    """A snapshot of the storage health (the ``storage`` part of `mesh status`)."""

    healthy: bool
    reason: str | None
    """One line, component and error, while a fault lasts."""
    since: float | None
    """When the current fault began (the clock's time, wall time by default)."""
    faults: int
    """Failed writes reported since start."""


class StorageHealth:
    """Which components cannot write right now, and the log lines about it."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, log_every: float = LOG_EVERY
    ) -> None:
        self._clock = clock
        self._log_every = log_every
        self._faults: dict[str, str] = {}  # component -> its latest error, first fault first
        self._since: float | None = None
        self._count = 0
        self._episode = 0  # failed writes since this fault began
        self._unlogged = 0  # failed writes since the last line
        self._logged_at = -math.inf
        self._said = False  # whether this fault's line was written
        self._recovered = trio.Event()
        self._recovered.set()

    @property
    def healthy(self) -> bool:
        """Whether every component can write."""
        return not self._faults

    def reason(self) -> str | None:
        """Why storage is faulted, in one line (None when healthy)."""
        if not self._faults:
            return None
        (component, error), *others = self._faults.items()
        also = f" (also {', '.join(name for name, _ in others)})" if others else ""
        return f"{component}: {error}{also}"

    def fault(self, component: str, exc: BaseException) -> None:
        """A write of `component` failed with `exc`; it keeps its data and retries."""
        now = self._clock()
        if not self._faults:
            self._since = now
            self._episode = 0
            self._said = False
            self._recovered = trio.Event()
        self._faults[component] = describe(exc)
        self._count += 1
        self._episode += 1
        self._unlogged += 1
        if now - self._logged_at < self._log_every:
            return
        if self._said:
            log.warning(
                "storage fault for %.0f s (%d failed writes since the last line): %s",
                now - (self._since or now),
                self._unlogged,
                self.reason(),
            )
        else:
            log.warning(
                "storage fault: %s; refusing new channels and orders, delivering only what"
                " is paid, retrying until a write succeeds",
                self.reason(),
            )
        self._logged_at = now
        self._unlogged = 0
        self._said = True

    def ok(self, component: str) -> None:
        """A write of `component` worked: its fault (if any) is over."""
        if self._faults.pop(component, None) is None or self._faults:
            return
        now = self._clock()
        if self._said:
            log.warning(
                "storage works again after %.1f s (%d failed writes): taking new business",
                now - (self._since or now),
                self._episode,
            )
        self._since = None
        self._unlogged = 0
        self._recovered.set()

    async def retry(
        self,
        component: str,
        write: Callable[[], Awaitable[T]],
        on_fault: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Run `write` until it works: each failure for want of storage is reported
        (`fault`, then `on_fault`) and the same write tried again after `backoff` --
        never skipped, so whatever must follow it (an ack, a broadcast) waits for it."""
        delay = 0.0
        while True:
            try:
                result = await write()
            except STORAGE_ERRORS as exc:
                self.fault(component, exc)
                if on_fault is not None:
                    on_fault(exc)
                delay = backoff(delay)
                await trio.sleep(delay)
                continue
            self.ok(component)
            return result

    async def wait_healthy(self) -> None:
        """Return once every component can write (at once when healthy)."""
        await trio.lowlevel.checkpoint()
        while self._faults:
            await self._recovered.wait()

    def statistics(self) -> StorageStatistics:
        """A frozen snapshot for the status JSON."""
        return StorageStatistics(self.healthy, self.reason(), self._since, self._count)


__all__ = [
    "RETRY_FIRST",
    "RETRY_MAX",
    "STORAGE_ERRORS",
    "StorageHealth",
    "StorageStatistics",
    "backoff",
    "describe",
]
