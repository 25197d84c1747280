"""A deliberate payer against a real provider process: every attack of issue 24 (1-3).

The provider is the reliability helper's `provider` role (a real process: identity,
SQLite store, nng mailbox, channel manager) on a shared LocalLedger. The attacker is
an agentlet in the test process speaking through the project's own node, channel
manager and frames: it completes a real handshake and sends only valid frames, with
bad intent.

1. Funding already spent: the attacker broadcasts the funding, waits until the refund
   the payee signed is final, broadcasts it, and only then sends `ChannelFunded`.
2. Channel id reused after a restart: open, pay, close; restart the payee; offer the
   same channel id and the spent funding again.
3. Free, unbounded opens: thousands of `ChannelOpen`s, from several identities.

Each test fails on the code before the fix (the payee acked what it could never
collect, overwrote a settled row, or signed a refund per open) and passes now.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from agents.channels import ChannelConfig, ChannelFailure
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.channel import Payer, State
from mesh.channel.effects import BroadcastFunding, Send
from mesh.channel.frames import ChannelError, ChannelFunded, ChannelOpen, ChannelRefundSigned
from mesh.identity import Identity
from mesh.net.node import ConnectError, NodeConfig
from mesh.wire import Frame
from tests.channel.harness import Agentlet, agentlet
from tests.discovery.helpers import AgentProcess, agents_running
from tests.reliability.invariants import stored_records
from tests.reliability.procs import command, event, free_port, new_ledger, rss, stop

SERVICE = "spindle-time"
CAPACITY = 100_000


@asynccontextmanager
async def provider_process(
    tmp_path: Path, ledger: Path, listen: str
) -> AsyncIterator[tuple[AgentProcess, dict[str, object]]]:
    async with agents_running() as start:
        provider = await start(
            "provider",
            command("provider", "--data", tmp_path / "p", "--ledger", ledger, "--listen", listen),
        )
        hello = await event(provider, "ready", 60)
        yield provider, hello


class Replies:
    """Channel frames the provider sends to an attacker about the channels it drives by
    hand (`manual`; every channel when None), kept for the test to read."""

    def __init__(self, manual: set[bytes] | None = None) -> None:
        self.frames: list[Frame] = []
        self.arrived = trio.Event()
        self.manual = manual

    async def intercept(self, _: str, frame: Frame) -> bool:
        if isinstance(frame, ChannelRefundSigned | ChannelError) and (
            self.manual is None or frame.channel_id in self.manual
        ):
            self.frames.append(frame)
            self.arrived.set()
            self.arrived = trio.Event()
            return True
        return False

    async def wait_for(self, channel_id: bytes, timeout: float = 10) -> Frame:
        with trio.fail_after(timeout):
            while True:
                for frame in self.frames:
                    if frame.channel_id == channel_id:  # type: ignore[attr-defined]
                        return frame
                await self.arrived.wait()

    def refunds_signed(self) -> int:
        return sum(isinstance(f, ChannelRefundSigned) for f in self.frames)


async def connect(me: Agentlet, hello: dict[str, object]) -> None:
    await me.node.connect(str(hello["address"]), expect_peer=str(hello["peer_id"]))


# --------------------------------------------------------------------------- 1


async def test_a_funding_spent_before_it_is_announced_is_never_served(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.db")
    async with (
        provider_process(tmp_path, ledger, "tcp://127.0.0.1:0") as (provider, hello),
        agentlet(tmp_path / "a", ledger) as me,
    ):
        peer = str(hello["peer_id"])
        await me.fund(ledger, 1_000_000)
        await connect(me, hello)
        manager = me.manager

        async def spend_first(effect: BroadcastFunding) -> None:
            """In place of broadcasting the funding and announcing it: broadcast it,
            wait until the payee's refund is final, broadcast the refund, and only then
            send `ChannelFunded`."""
            cid, raw = effect.channel_id, effect.raw
            payer = manager.protocol.book.end(cid)
            assert isinstance(payer, Payer)
            await me.chain.broadcast(parse_exact(raw))
            height = await me.chain.height()
            await me.chain.mine(max(1, payer.terms.expiry_height - height))
            await me.chain.broadcast(parse_exact(payer.signed_refund()))
            payer.event("funding-accepted")
            await manager.effects.run([Send(peer, ChannelFunded(cid, raw))])

        manager.effects._broadcast_funding = spend_first  # type: ignore[method-assign]
        with pytest.raises(ChannelFailure, match="spent"):
            await manager.open(peer, SERVICE, CAPACITY, 6)
        report = await stop(provider, "stats")

    # The payee never opened the channel and acked nothing against the spent output.
    [record] = report["records"]
    assert record["state"] == "failed", record
    assert record["acked_total"] == 0 and report["paid"] == {}
    assert report["channels"]["rejections"] >= 1


# --------------------------------------------------------------------------- 2


async def test_a_settled_channel_id_and_outpoint_are_never_served_again(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.db")
    listen = f"tcp://127.0.0.1:{free_port()}"
    manual: set[bytes] = set()
    replies = Replies(manual)
    async with agentlet(tmp_path / "a", ledger, intercept=replies.intercept) as me:
        await me.fund(ledger, 1_000_000)
        async with provider_process(tmp_path, ledger, listen) as (provider, hello):
            peer = str(hello["peer_id"])
            await connect(me, hello)
            cid = await me.manager.open(peer, SERVICE, CAPACITY, 50)
            await me.manager.pay(cid, 24)
            await me.manager.wait_acked(cid)
            closed = await me.manager.close(cid)
            assert closed.state is State.CLOSED and closed.close_txid
            await stop(provider, "stats")
        settled = stored_records(tmp_path / "p")[cid]
        assert settled.state is State.CLOSED and settled.close_txid

        # The payee restarts; the payer offers the same channel id, terms and (spent)
        # funding outpoint again.
        async with provider_process(tmp_path, ledger, listen) as (provider, hello):
            await connect(me, hello)
            t = closed.terms
            session = me.node.session(peer)
            assert session is not None
            other = secrets.token_bytes(32)
            manual.update((cid, other))
            await session.send(
                ChannelOpen(
                    cid, SERVICE, t.capacity, t.close_fee, t.refund_fee, t.expiry_height,
                    t.funding_txid, t.funding_vout, t.payer_payout,
                )
            )  # fmt: skip
            reply = await replies.wait_for(cid)
            # And the same outpoint under a fresh channel id.
            await session.send(
                ChannelOpen(
                    other, SERVICE, t.capacity, t.close_fee, t.refund_fee, t.expiry_height,
                    t.funding_txid, t.funding_vout, t.payer_payout,
                )
            )  # fmt: skip
            other_reply = await replies.wait_for(other)
            await session.send(ChannelFunded(cid, me.manager.protocol.book.funding[cid]))
            await trio.sleep(0.5)
            report = await stop(provider, "stats")

    assert isinstance(reply, ChannelError) and reply.code == "duplicate-channel", reply
    assert isinstance(other_reply, ChannelError) and other_reply.code == "duplicate-channel"
    assert report["paid"] == {} and report["records"] == []
    # The settled row is untouched: still closed, with its close txid.
    assert stored_records(tmp_path / "p")[cid] == settled


# --------------------------------------------------------------------------- 3


def _offer(height: int) -> ChannelOpen:
    """A well-formed offer no coin will ever back."""
    payout = p2pkh_script(Identity.generate().key.address())
    return ChannelOpen(
        secrets.token_bytes(32),
        SERVICE,
        10_000,
        10,
        10,
        height + 50,
        secrets.token_hex(32),
        0,
        payout,
    )


def _data_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file())


async def flood_and_buy(tmp_path: Path, opens: int, identities: int) -> dict[str, float]:
    """`opens` ChannelOpens from `identities` attackers, then an honest buyer's order."""
    ledger = new_ledger(tmp_path / "ledger.db")
    quick = NodeConfig(dead_after=60, connect_attempts=1, handshake_timeout=2.0)
    figures: dict[str, float] = {}
    async with provider_process(tmp_path, ledger, "tcp://127.0.0.1:0") as (provider, hello):
        peer = str(hello["peer_id"])
        await trio.sleep(0.5)
        disk_before, rss_before = _data_bytes(tmp_path / "p"), rss(provider)
        height = 1
        refunds = 0
        for i in range(identities):
            replies = Replies()
            async with agentlet(
                tmp_path / f"x{i}", ledger, intercept=replies.intercept, node_config=quick
            ) as attacker:
                sent = 0
                share = opens // identities
                with trio.move_on_after(60):
                    while sent < share:
                        session = attacker.node.session(peer)
                        if session is None:
                            try:
                                await connect(attacker, hello)
                            except ConnectError:
                                await trio.sleep(0.05)
                            continue
                        burst = [_offer(height) for _ in range(min(500, share - sent))]
                        sent += len(burst)
                        await session.send_many(burst)
                        await trio.sleep(0.05)
                assert sent == share
                await trio.sleep(0.3)
                refunds += replies.refunds_signed()
        figures["refunds_signed"] = refunds
        await trio.sleep(1.0)
        figures["disk_growth_kib"] = (_data_bytes(tmp_path / "p") - disk_before) / 1024
        figures["rss_growth_kib"] = rss(provider) - rss_before

        async with agentlet(tmp_path / "honest", ledger) as buyer:
            await buyer.fund(ledger, 1_000_000)
            started = trio.current_time()
            await connect(buyer, hello)
            cid = await buyer.manager.open(peer, SERVICE, CAPACITY, 50)
            await buyer.manager.pay(cid, 7)
            await buyer.manager.wait_acked(cid)
            figures["honest_order_s"] = trio.current_time() - started
        report = await stop(provider, "stats")
    figures["proposals_refused"] = report["channels"].get("proposals_refused", 0)
    figures["channels_held"] = len(report["records"])
    print(f"\nopen flood: {opens} opens from {identities} identities: {figures}")
    return figures


async def test_a_flood_of_opens_is_bounded(tmp_path: Path) -> None:
    figures = await flood_and_buy(tmp_path, 3_000, 3)
    limits = ChannelConfig().admission
    # At most `per_peer` refunds signed per identity; the rest refused or dropped.
    assert figures["refunds_signed"] <= 3 * limits.per_peer, figures
    assert figures["channels_held"] <= 3 * limits.per_peer + 1, figures
    assert figures["disk_growth_kib"] < 1024, figures
    assert figures["rss_growth_kib"] < 10 * 1024, figures
    assert figures["honest_order_s"] < 3.0, figures


@pytest.mark.slow
async def test_a_flood_of_20000_opens_is_bounded(tmp_path: Path) -> None:
    figures = await flood_and_buy(tmp_path, 20_000, 20)
    limits = ChannelConfig().admission
    assert figures["refunds_signed"] <= min(limits.total, 20 * limits.per_peer), figures
    assert figures["disk_growth_kib"] < 1024, figures
    assert figures["rss_growth_kib"] < 10 * 1024, figures
    assert figures["honest_order_s"] < 3.0, figures
