"""Group commit: channel states are durable before any frame that depends on them leaves.

The channel manager (`agents.channels`) marks a channel dirty whenever its state
changes and queues the frames that may only leave once that state is on disk (the
payer's `ChannelPay`s). `GroupCommit` writes every dirty record in one SQLite
transaction and only then

* asks the manager which acknowledgements the new durable state allows (the payee's
  cumulative `ChannelAck`s, via `acknowledge`), and
* sends every queued frame, one batch per peer (`send_many`: one encrypted packet).

Two ways in, one order out. The committer task (`run`) wakes on a mark and gathers
while the tasks that are runnable now keep marking (a burst being signed or
verified), until two scheduler passes in a row add nothing (Trio runs runnable tasks
in a random order, so one quiet pass proves little). `commit_inline` is the same
commit made by the calling task when it knows the batch is complete (a lone payment,
the last payment of a delivered burst): no hand-off, no gathering. A lock held from
taking a batch until its frames are written keeps batches leaving in commit order.

The commit runs in the Trio thread: a WAL commit takes tens of microseconds, while a
worker-thread hop can cost the GIL switch interval (5 ms) when this thread is busy.
A save that fails for want of storage (a full disk, an I/O error: `STORAGE_ERRORS`)
is not fatal and not half done: every record stays dirty, every queued frame stays
queued and no acknowledgement is made, the fault goes to the agent's `StorageHealth`,
and the committer tries again after a back-off (0.5 s doubling to 5 s; inline commits
step aside meanwhile). The first save that works clears the fault and sends it all;
`flush` returns only then.

This module never decides what a state means; it only orders "write, then send".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from mesh.channel.state import Record
from mesh.health import STORAGE_ERRORS, StorageHealth, backoff
from mesh.locks import acquire
from mesh.wire import Frame

Save = Callable[[list[tuple[Record, str]]], None]
"""save(batch): write (record, service) pairs in one transaction."""
Acknowledge = Callable[[Record, str, bool], Frame | None]
"""acknowledge(record, service, reack): the ack the durable `record` allows, if any."""
SendMany = Callable[[str, list[Frame]], Awaitable[None]]
"""send_many(peer_id, frames): best effort, in order, as one packet where possible."""
Committed = Callable[[list[Record]], None]
"""committed(records): these records are durable now (called once per commit, after
its acknowledgements were made and before its frames go out; the database is held)."""


@dataclass
class CommitCounters:
    """What the group commit did since start."""

    commits: int = 0
    records_committed: int = 0
    acks_sent: int = 0
    commit_seconds: float = 0.0
    failed_saves: int = 0


class GroupCommit:
    """Dirty channel records and the frames waiting for them to be durable."""

    def __init__(
        self,
        current: Callable[[bytes], tuple[Record, str]],
        save: Save,
        acknowledge: Acknowledge,
        send_many: SendMany,
        db: trio.CapacityLimiter,
        *,
        gather: int = 16,
        health: StorageHealth | None = None,
        committed: Committed | None = None,
    ) -> None:
        """`current(channel_id)` is a channel's record and service now; `db` serialises
        every use of the SQLite connection (capacity 1); failed saves are reported to
        `health` (as component ``channels``); `committed` hears of every batch written."""
        self._current = current
        self._on_committed = committed
        self._save = save
        self._acknowledge = acknowledge
        self._send_many = send_many
        self._db = db
        self._gather = gather
        self._dirty: dict[bytes, None] = {}
        self._outbox: list[tuple[str, Frame]] = []
        self._reack: set[bytes] = set()
        self._wake = trio.Event()
        # Held from taking a batch until its frames are written: the committer task's
        # commits and inline ones go out in commit order.
        self._lock = trio.Lock()
        self._generation = 0
        self._committed_generation = 0
        self._committed = trio.Event()
        self._marks = 0
        self._health = health or StorageHealth()
        # > 0 while saves fail: how long the committer waits before it tries again.
        self._retry_delay = 0.0
        self.counters = CommitCounters()

    def mark(self, channel_id: bytes, *, wake: bool = True) -> None:
        """`channel_id` changed: write it with the next commit (`wake`: soon)."""
        self._dirty[channel_id] = None
        self._marks += 1
        if wake:
            self._wake.set()

    def wake(self) -> None:
        """Have the committer task commit what is marked."""
        self._wake.set()

    def send_after_commit(self, peer_id: str, frame: Frame) -> None:
        """Send `frame` right after the next commit (a state must be durable first)."""
        self._outbox.append((peer_id, frame))

    def marked(self, channel_id: bytes) -> bool:
        """Whether `channel_id` waits to be written by the next commit."""
        return channel_id in self._dirty

    def waiting(self) -> int:
        """How many frames wait for the next commit."""
        return len(self._outbox)

    def reack(self, channel_ids: Iterable[bytes]) -> None:
        """Acknowledge these channels again after the next commit (a resend arrived)."""
        self._reack.update(channel_ids)

    async def flush(self, channel_id: bytes) -> None:
        """Persist `channel_id` now (through the committer) and wait for the commit;
        while saves fail, that is until one works."""
        self.mark(channel_id)
        target = self._generation + 1
        while self._committed_generation < target:
            await self._committed.wait()

    async def run(self) -> None:
        """The committer task: commit whenever something is marked, and retry a failed
        save with back-off (run in a nursery)."""
        while True:
            await self._wake.wait()
            if self._retry_delay:  # the last save failed: what is marked meanwhile joins
                await trio.sleep(self._retry_delay)
            quiet = 0
            for _ in range(self._gather):
                marks = self._marks
                await trio.lowlevel.checkpoint()
                quiet = quiet + 1 if self._marks == marks else 0
                if quiet == 2:
                    break
            self._wake = trio.Event()
            if not (self._dirty or self._outbox or self._reack):
                continue  # taken by an inline commit meanwhile
            await acquire(self._lock)
            try:
                await acquire(self._db)
                await self._commit_and_send()
            finally:
                self._lock.release()

    async def commit_inline(self) -> bool:
        """Commit and send what is marked from the calling task, if nothing else is
        committing or using the database right now and saves are not failing; False
        (nothing done: wake the committer) otherwise. A save failing here is retried by
        the committer."""
        if self._retry_delay:
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
            await self._commit_and_send()
        finally:
            self._lock.release()
        return True

    async def _commit_and_send(self) -> None:
        """Write the batch, let go of the database, send its frames (the caller holds
        the lock and the database); nothing is sent when the write failed."""
        try:
            sends = self._write_batch()
        finally:
            self._db.release()
        for peer_id, frames in sends.items():
            await self._send_many(peer_id, frames)

    def _write_batch(self) -> dict[str, list[Frame]]:
        """Persist every dirty record in one transaction (the caller holds the database);
        returns the frames that may now go out, by peer (none when the write failed)."""
        dirty, self._dirty = self._dirty, {}
        outbox, self._outbox = self._outbox, []
        reack, self._reack = self._reack, set()
        self._generation += 1
        batch = [self._current(cid) for cid in dirty]
        started = trio.current_time()
        counters = self.counters
        try:
            self._save(batch)
        except STORAGE_ERRORS as exc:
            # Nothing of it counts as durable: all of it waits for the next try (this
            # runs in one go, so nothing was marked or queued meanwhile).
            self._dirty, self._outbox, self._reack = dirty, outbox, reack
            counters.failed_saves += 1
            self._retry_delay = backoff(self._retry_delay)
            self._health.fault("channels", exc)
            self._wake.set()
            return {}
        if self._retry_delay:
            self._retry_delay = 0.0
            self._health.ok("channels")
        counters.commit_seconds += trio.current_time() - started
        counters.commits += 1
        counters.records_committed += len(batch)
        self._committed_generation = self._generation
        self._committed.set()
        self._committed = trio.Event()
        for record, service in batch:
            ack = self._acknowledge(record, service, record.terms.channel_id in reack)
            if ack is not None:
                outbox.append((record.peer_id, ack))
                counters.acks_sent += 1
        if self._on_committed is not None:
            self._on_committed([record for record, _ in batch])
        by_peer: dict[str, list[Frame]] = {}
        for peer_id, frame in outbox:
            by_peer.setdefault(peer_id, []).append(frame)
        return by_peer


__all__ = ["CommitCounters", "GroupCommit"]
