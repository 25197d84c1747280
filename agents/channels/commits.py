"""What the channel manager stages for the group commit, and what follows each commit.

The channel protocol marks a channel dirty whenever its state changes (`Persist`,
`CommitNow`, `Flush`) and queues the frames that may only leave once that state is
durable (the payer's payments: `SendAfterCommit`). `ChannelCommits` is the staging of
the project's one group commit (`mesh.commit.GroupCommit`, in the Trio thread: a WAL
commit takes tens of microseconds, a worker-thread hop can cost the GIL switch
interval): each commit writes every dirty record in one transaction and only then

* asks the protocol which acknowledgements the durable state allows (the payee's
  cumulative `ChannelAck`s, with the `Paid` they confirm),
* lets the protocol release channels final long enough (`ChannelBook.committed`),
* sends every queued frame, one batch per peer (one encrypted packet).

A save that fails for want of storage leaves every record dirty, every frame queued
and no acknowledgement made (docs/ARCHITECTURE.md §7). This module never decides what
a state means; it only orders "write, then send".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from mesh.channel.effects import Effect
from mesh.channel.protocol import ChannelProtocol
from mesh.channel.store import ChannelStore
from mesh.commit import GroupCommit
from mesh.health import StorageHealth
from mesh.wire import Frame

SendMany = Callable[[str, list[Frame]], Awaitable[None]]
"""send_many(peer_id, frames): best effort, in order, as one packet where possible."""


@dataclass
class ChannelBatch:
    """One commit's channels, frames and re-acknowledgements."""

    dirty: dict[bytes, None]
    outbox: list[tuple[str, Frame]]
    reack: set[bytes]
    sends: dict[str, list[Frame]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelCommitCounters:
    """What the channel commits did since start."""

    commits: int
    records_committed: int
    acks_sent: int
    commit_seconds: float
    failed_saves: int


class ChannelCommits:
    """Dirty channel records and the frames waiting for them (see the module doc)."""

    def __init__(
        self,
        protocol: ChannelProtocol,
        store: ChannelStore,
        send_many: SendMany,
        effect_now: Callable[[Effect], bool],
        db: trio.CapacityLimiter,
        health: StorageHealth,
        gather: int,
    ) -> None:
        """`effect_now` does an effect that needs no waiting (`Paid`, `Wake`,
        `Released`), inside the commit."""
        self._protocol = protocol
        self._store = store
        self._send_many = send_many
        self._effect_now = effect_now
        self._dirty: dict[bytes, None] = {}
        self._outbox: list[tuple[str, Frame]] = []
        self._reack: set[bytes] = set()
        self._records = 0
        self._acks = 0
        self._commit = GroupCommit(
            self, db, health=health, component="channels", in_thread=False, gather=gather
        )

    @property
    def counters(self) -> ChannelCommitCounters:
        """A snapshot of the counters."""
        c = self._commit.counters
        return ChannelCommitCounters(
            c.commits, self._records, self._acks, c.commit_seconds, c.failed_saves
        )

    # ---------------------------------------------------------------- staging

    def mark(self, channel_id: bytes, *, wake: bool = True) -> None:
        """`channel_id` changed: write it with the next commit (`wake`: soon)."""
        self._dirty[channel_id] = None
        self._commit.wake(soon=wake)

    def wake(self) -> None:
        """Have the committer task commit what is marked."""
        self._commit.wake()

    def send_after_commit(self, peer_id: str, frame: Frame) -> None:
        """Send `frame` right after the next commit (a state must be durable first)."""
        self._outbox.append((peer_id, frame))

    def reack(self, channel_id: bytes) -> None:
        """Acknowledge this channel again after the next commit (a resend arrived)."""
        self._reack.add(channel_id)

    def marked(self, channel_id: bytes) -> bool:
        """Whether `channel_id` waits to be written by the next commit."""
        return channel_id in self._dirty

    def waiting(self) -> int:
        """How many frames wait for the next commit."""
        return len(self._outbox)

    async def flush(self, channel_id: bytes) -> None:
        """Persist `channel_id` now and wait until it is durable (while saves fail,
        until one works)."""
        self._dirty[channel_id] = None
        await self._commit.flush()

    async def run(self) -> None:
        """The committer task (run in a nursery)."""
        await self._commit.run()

    async def commit_inline(self) -> bool:
        """Commit and send what is marked from the calling task if nothing else is
        committing now and saves are not failing (False: nothing done)."""
        return await self._commit.commit_inline()

    # ---------------------------------------------------------------- the Staging protocol

    def take(self) -> ChannelBatch | None:
        """Everything staged, as one batch."""
        if not (self._dirty or self._outbox or self._reack):
            return None
        batch = ChannelBatch(self._dirty, self._outbox, self._reack)
        self._dirty, self._outbox, self._reack = {}, [], set()
        return batch

    def write(self, batch: ChannelBatch) -> None:
        """Write the batch's records as they are now, then make the acks they allow."""
        book = self._protocol.book
        records = [book.current(cid) for cid in batch.dirty if cid in book.ends]
        self._store.save(records)
        self._records += len(records)
        outbox = batch.outbox
        for record, _ in records:
            acked = self._protocol.acknowledge(record, record.terms.channel_id in batch.reack)
            if acked is not None:
                ack, paid = acked
                outbox.append((record.peer_id, ack))
                self._acks += 1
                self._effect_now(paid)
        for effect in book.committed([r for r, _ in records], self.marked):
            self._effect_now(effect)
        for peer_id, frame in outbox:
            batch.sends.setdefault(peer_id, []).append(frame)

    def restore(self, batch: ChannelBatch, error: BaseException) -> None:
        """The save failed: nothing of it counts as durable; all of it waits for the
        next try, in front of what was staged since."""
        self._dirty = {**batch.dirty, **self._dirty}
        self._outbox = batch.outbox + self._outbox
        self._reack |= batch.reack

    async def after(self, batch: ChannelBatch) -> None:
        """The batch is durable: its frames go out, one packet per peer."""
        for peer_id, frames in batch.sends.items():
            await self._send_many(peer_id, frames)


__all__ = ["ChannelBatch", "ChannelCommitCounters", "ChannelCommits"]
