"""The channel commits order "write, then send" (doubles for the store and the sessions),
also while the store cannot be written.

The real path -- a payer and a payee agent over nng with SQLite -- is checked by
`tests/channel/test_manager.py::test_nothing_is_sent_or_acked_before_it_is_durable`.
"""

from __future__ import annotations

import sqlite3

import pytest
import trio

from agents.channels.commits import ChannelCommits
from mesh.channel.config import ChannelConfig
from mesh.channel.effects import Effect
from mesh.channel.protocol import ChannelProtocol
from mesh.channel.state import Record
from mesh.health import StorageHealth
from mesh.session_frames import Message
from mesh.wire import Frame
from tests.channel.helpers import make_pair


class World:
    """A log of what was saved and sent, in order; the first `failures` saves raise
    `error` (a full disk, by default). The protocol holds one channel: as payee with
    a payment not acknowledged yet (`paid`: each commit makes its ack), else as payer."""

    def __init__(
        self, failures: int = 0, error: Exception | None = None, *, paid: bool = False
    ) -> None:
        payer, payee, buyer, seller = make_pair()
        self.protocol = ChannelProtocol(seller if paid else buyer, ChannelConfig(), bytes)
        if paid:
            signed = payer.pay(100)
            assert payee.accept_payment(signed.seq, signed.total, signed.payer_sig)
        self.protocol.book.hold(payee if paid else payer, "svc")
        self.record = (payee if paid else payer).record()
        self.cid = self.record.terms.channel_id
        self.log: list[tuple[str, object]] = []
        self.db = trio.CapacityLimiter(1)
        self.failures = failures
        self.error = error or sqlite3.OperationalError("database or disk is full")
        self.health = StorageHealth()
        self.paid: list[Effect] = []
        self.commits = ChannelCommits(
            self.protocol, self, self.send_many, self.effect, self.db, self.health, 16
        )

    def save(self, batch: list[tuple[Record, str]]) -> None:
        if self.failures:
            self.failures -= 1
            self.log.append(("fail", trio.current_time()))
            raise self.error
        self.log.append(("save", [r.seq for r, _ in batch]))

    def forget_written(self, channel_id: bytes) -> None:
        raise AssertionError("nothing is final here")

    def effect(self, effect: Effect) -> bool:
        self.paid.append(effect)
        return True

    async def send_many(self, peer_id: str, frames: list[Frame]) -> None:
        self.log.append(("send", [type(f).__name__ for f in frames]))


async def test_frames_wait_for_the_commit_and_acks_follow_it() -> None:
    world = World(paid=True)
    commits = world.commits
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        commits.send_after_commit(world.record.peer_id, Message("a", b""))
        commits.send_after_commit(world.record.peer_id, Message("b", b""))
        commits.reack(world.cid)
        assert world.log == []
        await commits.flush(world.cid)
        await trio.testing.wait_all_tasks_blocked()
        assert world.log == [("save", [1]), ("send", ["Message", "Message", "ChannelAck"])]
        assert [type(e).__name__ for e in world.paid] == ["Paid"]
        assert (commits.counters.commits, commits.counters.acks_sent) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_an_inline_commit_steps_back_while_the_database_is_in_use() -> None:
    world = World()
    commits = world.commits
    commits.mark(world.cid, wake=False)
    release = trio.Event()

    async def wallet_work(task_status: trio.TaskStatus[None]) -> None:
        async with world.db:  # e.g. a wallet operation in a worker thread
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(wallet_work)
        assert not await commits.commit_inline()
        assert world.log == []
        release.set()
    assert await commits.commit_inline()
    assert world.log == [("save", [0])]


async def test_a_failing_save_sends_nothing_until_a_save_works(autojump_clock: object) -> None:
    """Three saves fail (a full disk): nothing is sent or acknowledged, `flush` waits,
    the health says why; the committer retries after 0.5, 1 and 2 s, and the fourth
    save sends everything queued, in order, then the ack it allows."""
    world = World(failures=3, paid=True)
    commits, peer = world.commits, world.record.peer_id
    flushed: list[float] = []

    async def flush() -> None:
        await commits.flush(world.cid)
        flushed.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        commits.send_after_commit(peer, Message("a", b""))
        commits.reack(world.cid)
        nursery.start_soon(flush)
        await trio.sleep(1.0)  # two saves failed by now
        assert [kind for kind, _ in world.log] == ["fail", "fail"]
        assert not world.health.healthy and flushed == []
        assert world.health.reason() == "channels: database or disk is full"
        assert not await commits.commit_inline()  # steps aside: the committer retries
        commits.send_after_commit(peer, Message("b", b""))
        commits.mark(world.cid)
        assert [kind for kind, _ in world.log] == ["fail", "fail"]
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert world.log == [
        ("fail", 0.0),
        ("fail", 0.5),
        ("fail", 1.5),
        ("save", [1]),
        ("send", ["Message", "Message", "ChannelAck"]),
    ]
    assert flushed == [3.5]
    assert world.health.healthy and world.health.statistics().faults == 3
    counters = commits.counters
    assert (counters.commits, counters.failed_saves, counters.acks_sent) == (1, 3, 1)


async def test_an_inline_commit_that_fails_is_retried_by_the_committer(
    autojump_clock: object,
) -> None:
    world = World(failures=1)
    commits = world.commits
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        commits.send_after_commit(world.record.peer_id, Message("a", b""))
        commits.mark(world.cid, wake=False)
        assert await commits.commit_inline()  # it tried; the committer takes over
        assert world.log == [("fail", 0.0)] and not world.health.healthy
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert world.log[1:] == [("save", [0]), ("send", ["Message"])]
    assert world.health.healthy


async def test_a_save_failing_for_another_reason_stays_loud() -> None:
    """A constraint error is a bug (or another writer), not a full disk: it ends the
    committer rather than being retried for ever."""
    world = World(failures=1, error=sqlite3.IntegrityError("UNIQUE constraint failed"))
    world.commits.mark(world.cid, wake=False)
    with pytest.raises(sqlite3.IntegrityError):
        await world.commits.commit_inline()
    assert world.health.healthy
