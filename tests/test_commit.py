"""GroupCommit against a real SQLite file: write, then act; in commit order; and
through storage faults (retried) and other errors (loud).

The staging here writes integers to a table in one transaction per batch and logs what
happened, in order; `after` reads the file from a second connection, so "durable
before after" is checked on disk, not on the staging's word.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh.commit import CommitFailed, GroupCommit
from mesh.health import StorageHealth

FULL = sqlite3.OperationalError("database or disk is full")


class Items:
    """A `Staging` of integers, written to ``items`` in `path`; the first `failures`
    writes raise `FULL`. `gate`, when given, holds the first batch's `after`."""

    def __init__(self, path: Path, db: trio.CapacityLimiter, failures: int = 0) -> None:
        self.path = path
        self.db = db
        self.failures = failures
        self.gate: trio.Event | None = None
        self.staged: list[int] = []
        self.log: list[tuple[str, object]] = []
        self.during_write: list[int] = []  # the db limiter's borrowed tokens in each write
        self.during_after: list[int] = []
        self.stage_while_writing: int | None = None
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY AUTOINCREMENT, n UNIQUE)")
        conn.close()

    def stage(self, *items: int) -> None:
        self.staged.extend(items)

    def on_disk(self) -> list[int]:
        """What another connection sees, in the order it was written."""
        conn = sqlite3.connect(self.path)
        try:
            return [n for (n,) in conn.execute("SELECT n FROM items ORDER BY seq")]
        finally:
            conn.close()

    def take(self) -> list[int] | None:
        batch, self.staged = self.staged, []
        return batch or None

    def write(self, batch: list[int]) -> None:
        self.during_write.append(self.db.borrowed_tokens)
        if self.stage_while_writing is not None:  # in a worker thread: stage from Trio's
            trio.from_thread.run_sync(self.stage, self.stage_while_writing)
            self.stage_while_writing = None
        if self.failures:
            self.failures -= 1
            self.log.append(("fail", list(batch)))
            raise FULL
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.executemany("INSERT INTO items (n) VALUES (?)", [(n,) for n in batch])
        finally:
            conn.close()
        self.log.append(("write", list(batch)))

    def restore(self, batch: list[int], error: BaseException) -> None:
        self.staged[:0] = batch
        self.log.append(("restore", str(error)))

    async def after(self, batch: list[int]) -> None:
        self.during_after.append(self.db.borrowed_tokens)
        self.log.append(("after", self.on_disk()))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        self.log.append(("done", list(batch)))


def _commit(
    tmp_path: Path, *, in_thread: bool = False, failures: int = 0, gather: int = 16
) -> tuple[Items, GroupCommit[list[int]], StorageHealth]:
    db = trio.CapacityLimiter(1)
    items = Items(tmp_path / "items.db", db, failures)
    health = StorageHealth()
    commits = GroupCommit(
        items, db, health=health, component="items", in_thread=in_thread, gather=gather
    )
    return items, commits, health


@pytest.mark.parametrize("in_thread", [False, True])
async def test_a_batch_is_on_disk_before_its_after_runs(tmp_path: Path, in_thread: bool) -> None:
    items, commits, health = _commit(tmp_path, in_thread=in_thread)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        items.stage(1, 2, 3)
        await commits.flush()
        assert items.log == [("write", [1, 2, 3]), ("after", [1, 2, 3]), ("done", [1, 2, 3])]
        # the database is held while writing, and free again for `after`
        assert (items.during_write, items.during_after) == ([1], [0])
        assert commits.counters.commits == 1 and commits.counters.failed_saves == 0
        with trio.fail_after(5):
            await commits.flush()  # nothing staged: returns, writes nothing
        assert len(items.log) == 3 and commits.counters.commits == 1
        nursery.cancel_scope.cancel()
    assert health.healthy


async def test_marks_made_while_the_committer_gathers_share_one_commit(tmp_path: Path) -> None:
    """Eight tasks stage one item each, a scheduler pass apart: one commit takes them all."""
    items, commits, _ = _commit(tmp_path)

    async def stage_later(n: int) -> None:
        for _ in range(n):
            await trio.lowlevel.checkpoint()
        items.stage(n)
        commits.wake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        for n in range(8):
            nursery.start_soon(stage_later, n)
        await trio.testing.wait_all_tasks_blocked()
        assert [batch for kind, batch in items.log if kind == "write"] == [list(range(8))]
        nursery.cancel_scope.cancel()


async def test_a_mark_that_is_not_soon_waits_for_the_next_wake(tmp_path: Path) -> None:
    items, commits, _ = _commit(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        items.stage(1)
        commits.wake(soon=False)
        await trio.testing.wait_all_tasks_blocked()
        assert items.log == []
        commits.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert items.on_disk() == [1]
        nursery.cancel_scope.cancel()


async def test_an_inline_commit_writes_at_once_and_steps_aside_when_the_db_is_busy(
    tmp_path: Path,
) -> None:
    items, commits, _ = _commit(tmp_path)  # no committer running
    items.stage(1)
    assert await commits.commit_inline()
    assert items.log == [("write", [1]), ("after", [1]), ("done", [1])]
    release = trio.Event()

    async def other_db_work(task_status: trio.TaskStatus[None]) -> None:
        async with items.db:  # e.g. a wallet write in a worker thread
            task_status.started()
            await release.wait()

    items.stage(2)
    async with trio.open_nursery() as nursery:
        await nursery.start(other_db_work)
        assert not await commits.commit_inline()
        assert items.on_disk() == [1] and items.staged == [2]  # nothing taken
        release.set()
    assert await commits.commit_inline()
    assert items.on_disk() == [1, 2]


async def test_batches_leave_in_commit_order_under_the_lock(tmp_path: Path) -> None:
    """While batch 1's `after` runs, batch 2 waits: neither the committer nor an inline
    commit writes it until batch 1 is done, though the database is free. A `flush`
    returns once its batch's `after` is done too."""
    items, commits, _ = _commit(tmp_path)
    gate = items.gate = trio.Event()
    first, second = trio.Event(), trio.Event()

    async def flush(flushed: trio.Event) -> None:
        await commits.flush()
        flushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        items.stage(1)
        nursery.start_soon(flush, first)
        await trio.testing.wait_all_tasks_blocked()
        assert items.log == [("write", [1]), ("after", [1])]  # held in `after`
        assert items.db.borrowed_tokens == 0 and not first.is_set()
        items.stage(2)
        nursery.start_soon(flush, second)
        assert not await commits.commit_inline()
        await trio.testing.wait_all_tasks_blocked()
        assert len(items.log) == 2 and not (first.is_set() or second.is_set())
        items.log.append(("open", None))
        gate.set()
        with trio.fail_after(5):
            await second.wait()
        assert first.is_set()
        assert items.log == [
            ("write", [1]),
            ("after", [1]),
            ("open", None),
            ("done", [1]),
            ("write", [2]),
            ("after", [1, 2]),
            ("done", [2]),
        ]
        nursery.cancel_scope.cancel()


async def test_a_full_disk_puts_the_batch_back_and_retries_with_back_off(
    tmp_path: Path, autojump_clock: object
) -> None:
    """Three writes fail for want of storage: nothing is acted on, the health says why,
    `flush` waits, inline commits step aside; the committer retries after 0.5, 1 and
    2 s, and the fourth write stores everything, in order, and clears the fault."""
    items, commits, health = _commit(tmp_path, failures=3)
    flushed: list[float] = []

    async def flush() -> None:
        await commits.flush()
        flushed.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        items.stage(1)
        nursery.start_soon(flush)
        await trio.sleep(1.0)  # two writes failed by now
        assert [kind for kind, _ in items.log] == ["fail", "restore", "fail", "restore"]
        assert items.staged == [1] and items.on_disk() == [] and flushed == []
        assert health.reason() == "items: database or disk is full"
        items.stage(2)
        assert not await commits.commit_inline()  # steps aside: the committer retries
        assert items.staged == [1, 2]
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(kind, batch) for kind, batch in items.log if kind != "restore"] == [
        ("fail", [1]),
        ("fail", [1]),
        ("fail", [1, 2]),
        ("write", [1, 2]),
        ("after", [1, 2]),
        ("done", [1, 2]),
    ]
    assert flushed == [3.5]
    assert health.healthy and health.statistics().faults == 3
    counters = commits.counters
    assert (counters.commits, counters.failed_saves) == (1, 3)


async def test_a_batch_put_back_goes_in_front_of_what_was_staged_meanwhile(
    tmp_path: Path,
) -> None:
    """In a worker thread, 99 is staged while the write of [1] fails: [1] is written
    first, and the write that works ends the fault."""
    items, commits, health = _commit(tmp_path, in_thread=True, failures=1)
    items.stage_while_writing = 99
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        items.stage(1)
        with trio.fail_after(5):
            await commits.flush()
        nursery.cancel_scope.cancel()
    assert items.log[:2] == [("fail", [1]), ("restore", "database or disk is full")]
    assert items.on_disk() == [1, 99]
    assert health.healthy and health.statistics().faults == 1
    assert commits.counters.failed_saves == 1


async def test_an_inline_write_that_fails_for_storage_is_retried_by_the_committer(
    tmp_path: Path, autojump_clock: object
) -> None:
    items, commits, health = _commit(tmp_path, failures=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        items.stage(1)
        assert await commits.commit_inline()  # it tried; the committer takes over
        assert items.log == [("fail", [1]), ("restore", "database or disk is full")]
        assert not health.healthy
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert items.on_disk() == [1] and health.healthy


async def test_another_error_fails_every_flush_and_ends_the_committer(tmp_path: Path) -> None:
    """A constraint error (here a real one: 1 is stored already) is not a full disk:
    it is not retried, every flush waiting or to come raises, and it leaves `run`."""
    items, commits, health = _commit(tmp_path)
    items.stage(1)
    assert await commits.commit_inline()
    errors: list[str] = []
    ended: list[BaseException] = []

    async def committer() -> None:
        try:
            await commits.run()
        except sqlite3.IntegrityError as exc:
            ended.append(exc)

    async def flush() -> None:
        with pytest.raises(CommitFailed) as caught:
            await commits.flush()
        errors.append(caught.value.reason)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            items.stage(2, 1)
            nursery.start_soon(flush)
            nursery.start_soon(flush)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(committer)
    assert errors == ["write failed: UNIQUE constraint failed: items.n"] * 2
    assert len(ended) == 1
    assert items.on_disk() == [1] and health.healthy and commits.counters.failed_saves == 0
    with trio.fail_after(5), pytest.raises(CommitFailed, match="UNIQUE"):
        await commits.flush()
    items.stage(3)
    assert not await commits.commit_inline()
    assert items.on_disk() == [1]


async def test_a_flush_fails_when_the_committer_stops_or_is_failed(tmp_path: Path) -> None:
    """A flush never waits for a committer that is gone (here cancelled while it waits
    for the database); `fail` keeps its first reason."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    items, commits, _ = _commit(tmp_path / "a")
    errors: list[str] = []

    async def committer(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await commits.run()

    async def flush() -> None:
        with pytest.raises(CommitFailed) as caught:
            await commits.flush()
        errors.append(caught.value.reason)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(committer)
            async with items.db:  # the committer waits for it
                items.stage(1)
                nursery.start_soon(flush)
                await trio.testing.wait_all_tasks_blocked()
                assert errors == []
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
    assert errors == ["the committer stopped"] and items.on_disk() == []
    with trio.fail_after(5), pytest.raises(CommitFailed, match="the committer stopped"):
        await commits.flush()
    _, other, _ = _commit(tmp_path / "b")
    other.fail("the log stopped")
    other.fail("a later reason")
    with trio.fail_after(5), pytest.raises(CommitFailed, match="the log stopped"):
        await other.flush()
