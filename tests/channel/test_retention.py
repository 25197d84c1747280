"""Agents run for months: what a final channel leaves behind is bounded.

In memory, a final channel is held while it is among the `keep_final` most recent ones
(status lists it), then released, once, with `on_final`. In the store, a channel final
for `keep_settled` is cut to a tombstone that still refuses its id and funding outpoint.
Real agentlets throughout: nng nodes, SQLite stores, a LocalLedger file.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from agents.channels import ChannelConfig, ChannelManager
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script
from mesh.channel import Record, State
from mesh.channel.admission import AdmissionLimits
from mesh.channel.frames import (
    ChannelClose,
    ChannelClosed,
    ChannelError,
    ChannelOpen,
    ChannelRefundSigned,
)
from mesh.channel.store import (
    _COLUMNS,
    CHANNEL_SCHEMA,
    ChannelStore,
    StoredChannel,
    _row,
    journal_path,
)
from mesh.identity import Identity
from mesh.store import Schema, Store
from mesh.wire import Frame
from tests.channel.harness import Agentlet, agentlet
from tests.channel.helpers import make_pair

CAPACITY = 20_000
LIFETIME = 500
SERVICE = "svc"


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    LocalLedger.create(path).close()
    return path


class Replies:
    """The seller's answers to frames the test sends by hand (the buyer's manager never
    sees them)."""

    def __init__(self) -> None:
        self.watched: set[bytes] = set()
        self.frames: dict[bytes, Frame] = {}

    async def intercept(self, _: str, frame: Frame) -> bool:
        cid = getattr(frame, "channel_id", None)
        answers = ChannelError | ChannelClosed | ChannelRefundSigned
        if cid not in self.watched or not isinstance(frame, answers):
            return False
        self.frames[cid] = frame
        return True

    async def ask(
        self, buyer: Agentlet, seller: Agentlet, frame: ChannelOpen | ChannelClose
    ) -> Frame:
        self.watched.add(frame.channel_id)
        session = buyer.node.session(seller.node.peer_id)
        assert session is not None
        await session.send(frame)
        with trio.fail_after(5):
            while frame.channel_id not in self.frames:
                await trio.sleep(0.01)
        return self.frames.pop(frame.channel_id)


def reoffer(record: Record, channel_id: bytes | None = None) -> ChannelOpen:
    """The channel of `record` offered again (under another id, if given)."""
    t = record.terms
    return ChannelOpen(
        channel_id or t.channel_id,
        SERVICE,
        t.capacity,
        t.close_fee,
        t.refund_fee,
        t.expiry_height,
        t.funding_txid,
        t.funding_vout,
        t.payer_payout,
    )


async def settle(buyer: Agentlet, seller: Agentlet, paid: int) -> bytes:
    """Open a channel, pay `paid` on it (0: nothing, it is released) and close it."""
    cid = await buyer.manager.open(seller.node.peer_id, SERVICE, CAPACITY, LIFETIME)
    if paid:
        await buyer.manager.pay(cid, paid)
        await buyer.manager.wait_acked(cid)
    assert (await buyer.manager.close(cid)).state is State.CLOSED
    return cid


async def started(buyer: Agentlet, seller: Agentlet, ledger_path: Path) -> None:
    await buyer.fund(ledger_path, 5_000_000)
    await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)


def held(manager: ChannelManager) -> dict[str, int]:
    """The size of every collection the manager, its parts and its store keep (but
    the book's fixed counters)."""
    parts = {
        "manager": manager,
        "protocol": manager.protocol,
        "book": manager.protocol.book,
        "effects": manager.effects,
        "admission": manager.admission,
        "commits": manager.effects.commits,
        "store": manager._channels,
    }
    return {
        f"{name}.{attr}": len(value)
        for name, part in parts.items()
        for attr, value in vars(part).items()
        if isinstance(value, dict | set | list) and f"{name}.{attr}" != "book.counts"
    }


async def test_a_hundred_settled_channels_leave_bounded_state_each_released_once(
    tmp_path: Path, ledger_path: Path
) -> None:
    replies = Replies()
    released: dict[str, list[bytes]] = {"buyer": [], "seller": []}
    async with (
        agentlet(tmp_path / "buyer", ledger_path, intercept=replies.intercept) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        buyer.manager.on_final = released["buyer"].append
        seller.manager.on_final = released["seller"].append
        await started(buyer, seller, ledger_path)
        ids = []
        for n in range(100):
            ids.append(await settle(buyer, seller, paid=n % 2 * 7))  # closes and releases
            if n % 10 == 9:
                await buyer.chain.mine()
        keep = ChannelConfig().keep_final
        for me in (buyer, seller):
            sizes = held(me.manager)
            assert max(sizes.values()) <= keep, sizes
            assert me.manager.statistics().channels_released == 100 - keep
            # Status lists the most recent final channels, in the order they ended.
            summaries = me.manager.summaries(await me.chain.height())
            assert [s["channel_id"] for s in summaries] == [cid.hex() for cid in ids[-keep:]]
            assert {s["state"] for s in summaries} == {"closed"}
        # Each released once, oldest first, on both ends.
        assert released["buyer"] == released["seller"] == ids[:-keep]

        # A released channel is still found in the store, and still refused.
        oldest = await buyer.manager.close(ids[1])  # answered from the store
        assert oldest.state is State.CLOSED and oldest.total == 7
        assert (await seller.manager.close(ids[1])).close_txid == oldest.close_txid
        again = await replies.ask(buyer, seller, reoffer(oldest))
        assert isinstance(again, ChannelError) and again.code == "duplicate-channel", again
        other = await replies.ask(buyer, seller, reoffer(oldest, secrets.token_bytes(32)))
        assert isinstance(other, ChannelError) and other.code == "duplicate-channel", other
        closed = await replies.ask(buyer, seller, ChannelClose(ids[1]))
        assert closed == ChannelClosed(ids[1], oldest.close_txid, 7)
        assert released["seller"] == ids[:-keep]  # nothing reloaded, nothing released again


async def test_status_keeps_open_channels_and_only_the_latest_final_ones(
    tmp_path: Path, ledger_path: Path
) -> None:
    config = ChannelConfig(keep_final=2)
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=config) as buyer,
        agentlet(tmp_path / "seller", ledger_path, config=config) as seller,
    ):
        await started(buyer, seller, ledger_path)
        kept_open = await buyer.manager.open(seller.node.peer_id, SERVICE, CAPACITY, LIFETIME)
        ids = [await settle(buyer, seller, paid=5) for _ in range(4)]
        for me in (buyer, seller):
            shown = {
                s["channel_id"]: s["state"] for s in me.manager.summaries(await me.chain.height())
            }
            assert shown == {
                kept_open.hex(): "open",
                ids[2].hex(): "closed",
                ids[3].hex(): "closed",
            }
            assert me.manager.record(ids[3]).state is State.CLOSED  # (what _check_channel reads)


async def test_a_forgotten_proposal_is_released_once_too(tmp_path: Path, ledger_path: Path) -> None:
    """An offer never funded is forgotten after its lifetime: its state is released
    like a final channel's, and `on_final` hears of it."""
    config = ChannelConfig(admission=AdmissionLimits(lifetime=0.2))
    replies = Replies()
    released: list[bytes] = []
    async with (
        agentlet(tmp_path / "buyer", ledger_path, intercept=replies.intercept) as buyer,
        agentlet(tmp_path / "seller", ledger_path, config=config) as seller,
    ):
        seller.manager.on_final = released.append
        await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        offer = ChannelOpen(
            secrets.token_bytes(32),
            SERVICE,
            CAPACITY,
            10,
            10,
            await buyer.chain.height() + LIFETIME,
            secrets.token_hex(32),
            0,
            p2pkh_script(Identity.generate().key.address()),
        )
        assert isinstance(await replies.ask(buyer, seller, offer), ChannelRefundSigned)
        assert [r.terms.channel_id for r, _ in seller.manager.records()] == [offer.channel_id]
        with trio.fail_after(5):
            while not released:
                await trio.sleep(0.02)
        assert released == [offer.channel_id] and seller.manager.records() == []
        assert max(held(seller.manager).values()) == 0


def row_sizes(db_path: Path) -> dict[bytes, int]:
    """Bytes each channel's row holds (the lengths of its values)."""
    with Store(db_path) as store, store.read() as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(channels)")]
        total = " + ".join(f"coalesce(length({c}), 0)" for c in columns)
        return {
            bytes(r[0]): int(r[1]) for r in db.execute(f"SELECT channel_id, {total} FROM channels")
        }


def stored(channels: ChannelStore, cid: bytes) -> StoredChannel:
    found = channels.find(cid)
    assert found is not None
    return found


async def test_compaction_keeps_tombstones_that_still_refuse_the_id_and_the_outpoint(
    tmp_path: Path, ledger_path: Path
) -> None:
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        await started(buyer, seller, ledger_path)
        settled = [await settle(buyer, seller, paid=n * 3) for n in range(4)]  # the first released
        open_cid = await buyer.manager.open(seller.node.peer_id, SERVICE, CAPACITY, LIFETIME)
        for _ in range(5):
            await buyer.manager.pay(open_cid, 2)
        await buyer.manager.wait_acked(open_cid)
    for end in ("buyer", "seller"):
        compact_and_check(tmp_path / end / "agent.db", settled, open_cid)

    # Restarted, the payee refuses a compacted channel's id and outpoint, and answers a
    # repeated close from its tombstone.
    replies = Replies()
    async with (
        agentlet(tmp_path / "seller", ledger_path) as seller,
        agentlet(tmp_path / "buyer", ledger_path, intercept=replies.intercept) as buyer,
    ):
        await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        found = await trio.to_thread.run_sync(seller.manager._channels.find, settled[2])
        assert found is not None and found.compacted
        record = found.record
        again = await replies.ask(buyer, seller, reoffer(record))
        assert isinstance(again, ChannelError) and again.code == "duplicate-channel", again
        other = await replies.ask(buyer, seller, reoffer(record, secrets.token_bytes(32)))
        assert isinstance(other, ChannelError) and other.code == "duplicate-channel", other
        closed = await replies.ask(buyer, seller, ChannelClose(settled[2]))
        assert closed == ChannelClosed(settled[2], record.close_txid, 6)
        assert seller.manager.record(open_cid).total == 10  # reloaded whole


def funding(record: Record) -> tuple[str, int]:
    return record.terms.funding_txid, record.terms.funding_vout


def bulk(item: StoredChannel) -> int:
    """Bytes of a row that a tombstone drops: raw transactions and signatures."""
    raw = len(item.funding_raw or b"") + len(item.close_raw or b"")
    return raw + len(item.record.payer_sig) + len(item.record.refund_sig)


def compact_and_check(db_path: Path, settled: list[bytes], open_cid: bytes) -> None:
    """Compact the store at `db_path`: every settled channel becomes a tombstone that
    still refuses its id and outpoint; the open channel is untouched."""
    assert journal_path(db_path).stat().st_size > 0  # payments of every channel
    before = row_sizes(db_path)
    with Store(db_path) as store:
        channels = ChannelStore(store)
        full = {cid: stored(channels, cid) for cid in [*settled, open_cid]}
        assert channels.compact(time.time() - 3600) == 0  # not final for an hour yet
        assert channels.compact(time.time() + 1) == len(settled)
        assert channels.compact(time.time() + 1) == 0  # each once
        for cid in settled:
            tomb = stored(channels, cid)
            assert tomb.compacted and tomb.final_at is not None
            assert (tomb.funding_raw, tomb.close_raw) == (None, None)
            assert (tomb.record.payer_sig, tomb.record.refund_sig) == (b"", b"")
            was = full[cid].record
            assert tomb.record.terms == was.terms and tomb.service == full[cid].service
            kept = ("state", "total", "acked_total", "close_txid", "paid_on_chain", "refused")
            assert [getattr(tomb.record, f) for f in kept] == [getattr(was, f) for f in kept]
            assert channels.seen(cid, "00" * 32, 0) is not None
            assert channels.seen(secrets.token_bytes(32), *funding(was)) is not None
        assert stored(channels, open_cid) == full[open_cid]  # an open channel is untouched
        assert channels.load() == [full[open_cid]]
        channels.close()
    # The journal held payments of the compacted channels: folded in, then emptied.
    assert journal_path(db_path).stat().st_size == 0
    after = row_sizes(db_path)
    for cid in settled:
        assert bulk(full[cid]) > 300 and after[cid] == before[cid] - bulk(full[cid])


async def test_the_manager_compacts_what_settled_longer_ago_than_keep_settled(
    tmp_path: Path, ledger_path: Path
) -> None:
    config = ChannelConfig(keep_settled=0.0, compact_every=0.1)
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=config) as buyer,
        agentlet(tmp_path / "seller", ledger_path, config=config) as seller,
    ):
        await started(buyer, seller, ledger_path)
        ids = [await settle(buyer, seller, paid=4) for _ in range(3)]
        with trio.fail_after(5):
            for me in (buyer, seller):
                while me.manager.statistics().channels_compacted < len(ids):
                    await trio.sleep(0.05)
        for me in (buyer, seller):
            for cid in ids:
                tomb = await trio.to_thread.run_sync(me.manager._channels.find, cid, limiter=me.db)
                assert tomb is not None and tomb.compacted and tomb.record.total == 4


async def test_a_compaction_that_cannot_write_is_a_storage_fault_until_it_can(
    tmp_path: Path, ledger_path: Path
) -> None:
    config = ChannelConfig(compact_every=0.1)
    async with agentlet(
        tmp_path / "seller", ledger_path, config=config, busy_timeout=0.1
    ) as seller:
        health = seller.manager.health
        assert health.healthy
        # Another writer holds the database: the compaction cannot take the write lock.
        with Store(tmp_path / "seller" / "agent.db") as other, other.write():
            with trio.fail_after(5):
                while health.healthy:
                    await trio.sleep(0.02)
            assert "channel-records" in (health.reason() or "")
        with trio.fail_after(5):
            await health.wait_healthy()
        assert health.statistics().faults >= 1


def test_rows_final_before_the_migration_count_from_it(tmp_path: Path) -> None:
    """A store written before channels recorded when they became final: its final rows
    are dated at the migration (compacted `keep_settled` after the upgrade), open ones
    not at all."""
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    closed = replace(payer.record(), state=State.CLOSED, close_txid="ab" * 32)
    opened = replace(payer.record(), terms=replace(payer.terms, channel_id=b"\1" * 32))
    with Store(path) as store:
        store.register(Schema("channels", CHANNEL_SCHEMA.migrations[:4]))
        marks = ", ".join("?" * len(_COLUMNS.split(",")))
        with store.write() as db:
            for record in (closed, opened):
                db.execute(f"INSERT INTO channels ({_COLUMNS}) VALUES ({marks})", _row(record, "s"))
    upgraded = time.time()
    with Store(path) as store:
        channels = ChannelStore(store)
        old, still_open = stored(channels, closed.terms.channel_id), stored(channels, b"\1" * 32)
        assert old.final_at is not None and abs(old.final_at - upgraded) < 5
        assert still_open.final_at is None
        assert channels.compact(upgraded - 60) == 0
        assert channels.compact(upgraded + 60) == 1
        assert stored(channels, closed.terms.channel_id).compacted
        assert stored(channels, b"\1" * 32) == still_open
        channels.close()
