"""GroupCommit orders "write, then send" (doubles for the store and the sessions).

The real path -- a payer and a payee agent over nng with SQLite -- is checked by
`tests/channel/test_manager.py::test_nothing_is_sent_or_acked_before_it_is_durable`.
"""

from __future__ import annotations

import trio

from agents.group_commit import GroupCommit
from mesh.channel.state import Record
from mesh.wire import ChannelAck, Frame, Message
from tests.channel.helpers import make_pair


class World:
    """A log of what was saved and sent, in order."""

    def __init__(self) -> None:
        payer, *_ = make_pair()
        self.record = payer.record()
        self.cid = self.record.terms.channel_id
        self.log: list[tuple[str, object]] = []
        self.db = trio.CapacityLimiter(1)
        self.commits = GroupCommit(
            lambda cid: (self.record, "svc"),
            lambda batch: self.log.append(("save", [r.seq for r, _ in batch])),
            self.acknowledge,
            self.send_many,
            self.db,
        )

    def acknowledge(self, record: Record, service: str, reack: bool) -> Frame | None:
        return ChannelAck(record.terms.channel_id, record.seq, record.total, b"") if reack else None

    async def send_many(self, peer_id: str, frames: list[Frame]) -> None:
        self.log.append(("send", [type(f).__name__ for f in frames]))


async def test_frames_wait_for_the_commit_and_acks_follow_it() -> None:
    world = World()
    commits = world.commits
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run)
        commits.send_after_commit(world.record.peer_id, Message("a", b""))
        commits.send_after_commit(world.record.peer_id, Message("b", b""))
        commits.reack([world.cid])
        assert world.log == []
        await commits.flush(world.cid)
        await trio.testing.wait_all_tasks_blocked()
        assert world.log == [("save", [0]), ("send", ["Message", "Message", "ChannelAck"])]
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
