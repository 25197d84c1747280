"""Storage health: faults by component, one line a minute, recovery (an injected clock)."""

from __future__ import annotations

import errno
import logging
import sqlite3

import pytest
import trio

from mesh.health import StorageHealth, StorageStatistics, backoff

FULL = sqlite3.OperationalError("database or disk is full")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_faults_are_by_component_and_the_last_ok_makes_it_healthy() -> None:
    clock = Clock()
    health = StorageHealth(clock=clock)
    assert health.healthy and health.reason() is None
    assert health.statistics() == StorageStatistics(True, None, None, 0)
    health.fault("channels", FULL)
    clock.now += 2
    health.fault("anchoring", OSError(errno.ENOSPC, "No space left on device"))
    assert not health.healthy
    assert health.reason() == "channels: database or disk is full (also anchoring)"
    health.ok("channels")
    assert health.reason() == "anchoring: [Errno 28] No space left on device"
    assert health.statistics() == StorageStatistics(False, health.reason(), 1000.0, 2)
    health.ok("wallet")  # never faulted: nothing changes
    assert not health.healthy
    health.ok("anchoring")
    assert health.statistics() == StorageStatistics(True, None, None, 2)


def test_a_long_fault_writes_one_line_a_minute_and_one_when_it_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = StorageHealth(clock=clock)
    with caplog.at_level(logging.INFO, logger="mesh.health"):
        for _ in range(100):  # a failed write every 1.5 s for 150 s
            health.fault("channels", FULL)
            clock.now += 1.5
        health.ok("channels")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # at 0, 60 and 120 s, then the recovery
    assert lines[0].startswith("storage fault: channels: database or disk is full; refusing")
    assert lines[1] == (
        "storage fault for 60 s (40 failed writes since the last line):"
        " channels: database or disk is full"
    )
    assert lines[3] == "storage works again after 150.0 s (100 failed writes): taking new business"


def test_a_flapping_disk_still_writes_at_most_a_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = StorageHealth(clock=clock)
    with caplog.at_level(logging.INFO, logger="mesh.health"):
        for _ in range(30):  # fails, works, fails... every second for 30 s
            health.fault("channels", FULL)
            health.ok("channels")
            clock.now += 1
    assert len(caplog.records) == 2  # the first fault and its recovery; the rest unsaid
    assert health.statistics().faults == 30


async def test_wait_healthy_returns_when_the_last_fault_passes() -> None:
    health = StorageHealth()
    await health.wait_healthy()  # healthy: at once
    health.fault("channels", FULL)
    health.fault("anchoring", FULL)
    woke: list[float] = []

    async def waiter() -> None:
        await health.wait_healthy()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        health.ok("channels")
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        health.ok("anchoring")
    assert len(woke) == 1


def test_backoff_doubles_from_half_a_second_to_five() -> None:
    delays = [backoff(0.0)]
    for _ in range(5):
        delays.append(backoff(delays[-1]))
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


async def test_retry_repeats_a_write_until_it_works_and_reports_the_fault(
    autojump_clock: object,
) -> None:
    health = StorageHealth(clock=trio.current_time)
    seen: list[str] = []
    attempts = {"n": 0}

    async def write() -> str:
        attempts["n"] += 1
        if attempts["n"] <= 3:
            raise OSError(28, "No space left on device")
        assert not health.healthy  # reported before the write works again
        return "written"

    started = trio.current_time()
    assert await health.retry("x", write, lambda exc: seen.append(str(exc))) == "written"
    assert attempts["n"] == 4 and len(seen) == 3 and health.healthy
    assert trio.current_time() - started == 0.5 + 1.0 + 2.0  # the back-off
