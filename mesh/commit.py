"""Group commit: what a writer staged is durable before anything that follows from it.

`GroupCommit` owns the order "write, then act" for one writer of the agent store
(docs/ARCHITECTURE.md §7: persist before you send or acknowledge; a record is on disk
before anyone sees it). What a batch holds, how it is written and what follows from it
belong to the writer's `Staging`: the channel manager's dirty records and the frames
waiting for them, the Anchorer's signed records. Whatever is staged while a commit runs
shares the next one, so a burst costs one transaction, not one each.

Two ways in, one order out. The committer task (`run`) wakes on a mark (`wake`) and
gathers while the tasks that are runnable now keep marking (a burst being signed or
verified), until two scheduler passes in a row add nothing (Trio runs runnable tasks in
a random order, so one quiet pass proves little). `commit_inline` is the same commit made
by the calling task when it knows the batch is complete: no hand-off, no gathering. A
lock held from taking a batch until its `after` has run keeps batches leaving in commit
order. The write runs either in the Trio thread with the database limiter held (a WAL
commit takes tens of microseconds, while a worker-thread hop can cost the GIL switch
interval when this thread is busy) or, for writes that may take long, in a worker
thread -- the limiter held all the same.

A write that fails for want of storage (a full disk, an I/O error: `STORAGE_ERRORS`) is
not fatal and not half done: the batch goes back to its staging in front of what was
staged since, nothing of it is acted on, the fault goes to the agent's `StorageHealth`,
and the committer tries again after a back-off (0.5 s doubling to 5 s; inline commits
step aside meanwhile). The first write that works clears the fault. Any other error (a
constraint: a bug, or another writer) is loud: it leaves the committer, and every
`flush` waiting or to come raises `CommitFailed` -- a writer must not pretend to be
durable.

This module never decides what a batch means and does no I/O of its own: the staging
writes and acts; this only orders the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import trio

from mesh.errors import MeshError
from mesh.health import STORAGE_ERRORS, StorageHealth, backoff, describe
from mesh.locks import acquire

B = TypeVar("B")


class Staging(Protocol[B]):
    """What a `GroupCommit` commits: one writer's staged changes, taken as batches."""

    def take(self) -> B | None:
        """Hand over everything staged so far as one batch (None: nothing staged)."""
        ...

    def write(self, batch: B) -> None:
        """Write `batch` in one transaction (the database limiter is held; in a worker
        thread when the commit was made with ``in_thread``)."""
        ...

    def restore(self, batch: B, error: BaseException) -> None:
        """Writing `batch` failed for want of storage (`error`): stage it again, in
        front of anything staged since."""
        ...

    async def after(self, batch: B) -> None:
        """`batch` is durable: run what follows from it (sends...). The database is
        free again; the next batch waits, so this must not wait for a commit."""
        ...


@dataclass
class CommitCounters:
    """What a group commit did since start."""

    commits: int = 0
    """Batches written (a commit with nothing staged is not one)."""
    commit_seconds: float = 0.0
    """Time spent in the writes that worked."""
    failed_saves: int = 0
    """Writes that failed for want of storage (each retried)."""


class CommitFailed(MeshError):
    """A write failed for a reason other than storage, or the committer stopped:
    nothing more is committed and what was staged is not known to be durable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GroupCommit(Generic[B]):
    """Commits one `Staging`'s batches in order, each before what follows from it (see
    the module docstring). One `run` per instance: make a new one to start again."""

    def __init__(
        self,
        staging: Staging[B],
        db: trio.CapacityLimiter,
        *,
        health: StorageHealth,
        component: str,
        in_thread: bool,
        gather: int = 16,
    ) -> None:
        """`db` serialises every use of the store's connection (capacity 1); failed
        writes are reported to `health` as `component`; `in_thread` writes in a worker
        thread; `gather` bounds the scheduler passes the committer waits for more."""
        self._staging = staging
        self._db = db
        self._health = health
        self._component = component
        self._in_thread = in_thread
        self._gather = gather
        # One write at a time anyway (the lock); never queued behind others' threads.
        self._threads = trio.CapacityLimiter(1)
        self._wake = trio.Event()
        self._marks = 0
        self._lock = trio.Lock()
        self._taken = 0  # commits started, empty ones too
        self._done_upto = 0  # every commit up to this one wrote and ran `after`
        self._done = trio.Event()
        # > 0 while writes fail: how long the committer waits before it tries again.
        self._retry_delay = 0.0
        self._failure: str | None = None
        self._cause: BaseException | None = None
        self.counters = CommitCounters()

    def wake(self, *, soon: bool = True) -> None:
        """Something was staged: commit it with the next commit (`soon`: have the
        committer make one; otherwise it only counts as a mark while it gathers)."""
        self._marks += 1
        if soon:
            self._wake.set()

    def fail(self, reason: str) -> None:
        """Commit nothing more: every `flush` waiting or to come raises `CommitFailed`
        (the first reason given is kept)."""
        self._stop(reason, None)

    async def flush(self) -> None:
        """Have the committer commit, and wait until everything staged before this call
        is durable and followed up (while writes fail for want of storage, until one
        works). Raises `CommitFailed` if the commit failed or the committer stopped."""
        target = self._taken + 1
        self.wake()
        while self._done_upto < target:
            if self._failure is not None:
                raise CommitFailed(self._failure) from self._cause
            await self._done.wait()

    async def run(self) -> None:
        """The committer task: commit whenever woken, and retry a failed write with
        back-off (run in a nursery). A write's non-storage error ends it."""
        try:
            while True:
                await self._wake.wait()
                if self._failure is not None:
                    return
                if self._retry_delay:  # the last write failed: what is staged meanwhile joins
                    await trio.sleep(self._retry_delay)
                quiet = 0
                for _ in range(self._gather):
                    marks = self._marks
                    await trio.lowlevel.checkpoint()
                    quiet = quiet + 1 if self._marks == marks else 0
                    if quiet == 2:
                        break
                self._wake = trio.Event()
                await acquire(self._lock)
                try:
                    await acquire(self._db)
                    await self._commit()
                finally:
                    self._lock.release()
        finally:
            self._stop("the committer stopped", None)  # else `flush` would wait for ever

    async def commit_inline(self) -> bool:
        """Commit what is staged from the calling task, if nothing else is committing or
        using the database right now, writes are not failing and none failed loudly;
        False (nothing done: wake the committer) otherwise. A write failing here for
        want of storage is retried by the committer (True: it is taken care of)."""
        if self._retry_delay or self._failure is not None:
            return False
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            return False
        try:
            try:
                self._db.acquire_nowait()
            except trio.WouldBlock:
                return False
            await self._commit()
        finally:
            self._lock.release()
        return True

    async def _commit(self) -> None:
        """Take and write a batch, let go of the database, then run its `after` (the
        caller holds the lock and the database)."""
        try:
            if self._failure is not None:
                return
            batch = self._staging.take()
            self._taken += 1
            generation = self._taken
            if batch is not None and not await self._write(batch):
                return
        finally:
            self._db.release()
        if batch is not None:
            await self._staging.after(batch)
        self._done_upto = generation
        self._done.set()
        self._done = trio.Event()

    async def _write(self, batch: B) -> bool:
        """Write `batch` (the database is held); False when storage failed (the batch
        is staged again and the committer will retry)."""
        started = trio.current_time()
        try:
            if self._in_thread:
                await trio.to_thread.run_sync(self._staging.write, batch, limiter=self._threads)
            else:
                self._staging.write(batch)
        except STORAGE_ERRORS as exc:
            # Nothing of it counts as written: all of it waits for the next try.
            self._staging.restore(batch, exc)
            self.counters.failed_saves += 1
            self._retry_delay = backoff(self._retry_delay)
            self._health.fault(self._component, exc)
            self._wake.set()
            return False
        except Exception as exc:  # a bug or another writer: loud, never retried
            self._stop(f"write failed: {describe(exc)}", exc)
            raise
        if self._retry_delay:
            self._retry_delay = 0.0
            self._health.ok(self._component)
        self.counters.commit_seconds += trio.current_time() - started
        self.counters.commits += 1
        return True

    def _stop(self, reason: str, cause: BaseException | None) -> None:
        """Commit nothing more; wake every `flush` to raise `CommitFailed(reason)`."""
        if self._failure is None:
            self._failure, self._cause = reason, cause
        self._wake.set()
        self._done.set()
        self._done = trio.Event()


__all__ = ["CommitCounters", "CommitFailed", "GroupCommit", "Staging"]
