"""Buyer-side money safety (issue 34): inbound channels cost nothing until funded, and
each end's accounting follows the chain -- real agentlets, a real ledger file."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.agent_cli import channel_line
from agents.channels import ChannelConfig, ChannelFailure
from agents.channels.effects import payout_label
from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.channel import State
from mesh.channel.admission import AdmissionLimits
from mesh.channel.frames import (
    ChannelClose,
    ChannelClosed,
    ChannelOpen,
    ChannelPay,
    ChannelPays,
    ChannelRefundSigned,
)
from mesh.channel.store import ChannelStore
from mesh.identity import Identity
from mesh.store import Store
from mesh.wire import Frame
from tests.channel.harness import Agentlet, agentlet

CAPACITY = 200_000
LIFETIME = 50  # blocks


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    LocalLedger.create(path).close()
    return path


async def open_channel(buyer: Agentlet, seller: Agentlet, ledger_path: Path) -> bytes:
    await buyer.fund(ledger_path, 1_000_000)
    await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
    return await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, LIFETIME)


async def in_thread(agent: Agentlet, fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args, limiter=agent.db)


def ledger_value(ledger_path: Path, script: bytes) -> int:
    with LocalLedger.open(ledger_path) as ledger:
        return sum(u.satoshis for u in ledger.utxos(script))


# ------------------------------------------------------------------ A: payouts


async def test_unfunded_proposals_add_no_wallet_key(tmp_path: Path, ledger_path: Path) -> None:
    """20 proposals no coin backs: each gets a payout, none a wallet key (the runtime's
    wallet sync asks the chain about every key, every 5 s)."""
    replies: dict[bytes, bytes] = {}

    async def collect(_: str, frame: Frame) -> bool:
        if isinstance(frame, ChannelRefundSigned):
            replies[frame.channel_id] = frame.payee_payout
            return True
        return False

    roomy = ChannelConfig(admission=AdmissionLimits(per_peer=50, total=50))
    async with (
        agentlet(tmp_path / "stranger", ledger_path, intercept=collect) as stranger,
        agentlet(tmp_path / "seller", ledger_path, config=roomy) as seller,
    ):
        before = await in_thread(seller, seller.wallet.addresses)
        await stranger.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        session = stranger.node.session(seller.node.peer_id)
        assert session is not None
        height = await stranger.chain.height()
        payout = p2pkh_script(Identity.generate().key.address())
        for _ in range(20):
            await session.send(
                ChannelOpen(
                    secrets.token_bytes(32), "x", 10_000, 10, 10, height + 100,
                    secrets.token_hex(32), 0, payout,
                )
            )  # fmt: skip
        with trio.fail_after(10):
            while len(replies) < 20:
                await trio.sleep(0.02)
        assert await in_thread(seller, seller.wallet.addresses) == before
        for cid, script in replies.items():  # distinct, and the wallet's to claim later
            assert script == p2pkh_script(seller.wallet.payout_address(payout_label(cid)))
        assert len(set(replies.values())) == 20


async def test_a_payee_owns_and_spends_what_a_close_pays_it(
    tmp_path: Path, ledger_path: Path
) -> None:
    async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
        async with agentlet(tmp_path / "seller", ledger_path) as seller:
            cid = await open_channel(buyer, seller, ledger_path)
            for _ in range(5):
                await buyer.manager.pay(cid, 1_000)
            await buyer.manager.wait_acked(cid)
            assert await in_thread(seller, seller.wallet.addresses) == []  # paid, not closed
            await buyer.manager.close(cid)
            payout = seller.manager.record(cid).terms.payee_payout
            addresses = await in_thread(seller, seller.wallet.addresses)
            assert [p2pkh_script(a) for a in addresses] == [payout]
            assert (await in_thread(seller, seller.wallet.balance)).available == 5_000
        async with agentlet(tmp_path / "seller", ledger_path) as seller:  # restarted
            assert (await in_thread(seller, seller.wallet.balance)).available == 5_000
            elsewhere = p2pkh_script(Identity.generate().key.address())
            draft = await in_thread(
                seller, lambda: seller.wallet.fund([(elsewhere, 3_000)], reservation="spend")
            )
            await seller.chain.broadcast(parse_exact(draft.raw))
            await in_thread(seller, seller.wallet.mark_broadcast, draft.txid)
    assert ledger_value(ledger_path, payout) == 0
    assert ledger_value(ledger_path, elsewhere) == 3_000


class RefusesBroadcasts:
    """The real chain, except that broadcasts are refused while `refusing` is set."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain
        self.refusing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def broadcast(self, tx: Any) -> str:
        if self.refusing:
            raise TxRejected("unavailable", "try again later")
        txid: str = await self._chain.broadcast(tx)
        return txid


async def test_a_close_finished_after_a_restart_adopts_its_payout(
    tmp_path: Path, ledger_path: Path
) -> None:
    """A payee stopped after recording its close and before its payout key was adopted:
    the restart finishes the close, adopts the key (once) and books the coin."""
    async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
        async with agentlet(tmp_path / "seller", ledger_path) as seller:
            cid = await open_channel(buyer, seller, ledger_path)
            await buyer.manager.pay(cid, 700)
            await buyer.manager.wait_acked(cid)
            seller.manager.chain = RefusesBroadcasts(seller.manager.chain)
            assert (await seller.manager.close(cid)).state is State.CLOSING
        # As if killed before the adoption: the key is not in the wallet.
        with Store(tmp_path / "seller" / "agent.db") as store, store.write() as db:
            gone = db.execute("DELETE FROM wallet_keys WHERE label = ?", (payout_label(cid),))
            assert gone.rowcount == 1
        for _ in range(2):  # and once more: nothing is adopted twice
            async with agentlet(tmp_path / "seller", ledger_path) as seller:
                assert len(await in_thread(seller, seller.wallet.addresses)) == 1
                assert (await in_thread(seller, seller.wallet.balance)).available == 700
    with Store(tmp_path / "seller" / "agent.db") as store:
        stored = ChannelStore(store).find(cid)
    assert stored is not None and stored.record.state is State.CLOSED
    assert ledger_value(ledger_path, stored.record.terms.payee_payout) == 700


# ------------------------------------------------------------------ B: accounting


async def test_a_close_on_an_old_state_shows_what_the_chain_paid(
    tmp_path: Path, ledger_path: Path
) -> None:
    """The payee closes with total 2 while the payer signed 80: the payer's record says
    the chain paid 2 (and keeps the 80 it signed), and so does `mesh status`."""
    holding = False

    async def hold_payments(_: str, frame: Frame) -> bool:
        return holding and isinstance(frame, ChannelPay | ChannelPays)

    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path, intercept=hold_payments) as seller,
    ):
        cid = await open_channel(buyer, seller, ledger_path)
        await buyer.manager.pay(cid, 2)
        await buyer.manager.wait_acked(cid)
        holding = True  # the seller keeps the state paying 2
        await buyer.manager.pay(cid, 78)
        closed = await buyer.manager.close(cid)
        assert closed.state is State.CLOSED
        assert (closed.total, closed.acked_total, closed.paid_on_chain) == (80, 2, 2)
        assert seller.manager.record(cid).paid_on_chain == 2
        [summary] = buyer.manager.summaries(await buyer.chain.height())
        assert (summary["paid_on_chain"], summary["signed_total"]) == (2, 80)
        assert summary["locked_until"] is None and not summary["refund_due"]
        assert channel_line(summary) == "closed: chain paid 2 of 80 signed"
        terms = closed.terms
    assert ledger_value(ledger_path, terms.payee_payout) == 2
    with Store(tmp_path / "buyer" / "agent.db") as store:
        [stored] = ChannelStore(store).load(include_final=True)
    assert (stored.record.total, stored.record.paid_on_chain) == (80, 2)


async def test_a_payer_whose_close_is_ignored_sees_its_coins_locked_until_the_expiry(
    tmp_path: Path, ledger_path: Path
) -> None:
    async def ignore_close(_: str, frame: Frame) -> bool:
        return isinstance(frame, ChannelClose)

    quick = ChannelConfig(open_timeout=1)
    still = ChannelConfig(watch_interval=3_600)  # the seller never closes on its own
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=quick) as buyer,
        agentlet(tmp_path / "seller", ledger_path, config=still, intercept=ignore_close) as seller,
    ):
        cid = await open_channel(buyer, seller, ledger_path)
        await buyer.manager.pay(cid, 80)
        await buyer.manager.wait_acked(cid)
        with pytest.raises(ChannelFailure, match="not closed in time"):
            await buyer.manager.close(cid)
        expiry = buyer.manager.record(cid).terms.expiry_height
        height = await buyer.manager.chain_height()
        assert height is not None and expiry - height == LIFETIME
        [summary] = buyer.manager.summaries(height)
        assert summary["state"] == "closing" and summary["paid_on_chain"] is None
        assert (summary["locked_until"], summary["blocks_left"]) == (expiry, LIFETIME)
        assert channel_line(summary).startswith(
            f"closing: locked until height {expiry} ({LIFETIME} blocks)"
        )
        [seen_by_seller] = seller.manager.summaries(height)  # a payee's coins are not locked
        assert seen_by_seller["locked_until"] is None and not seen_by_seller["refund_due"]
        await buyer.chain.mine(LIFETIME)
        [due] = buyer.manager.summaries(expiry)
        assert due["locked_until"] is None and due["refund_due"]
        await buyer.manager.check_expiry(expiry)
        [refunded] = buyer.manager.summaries(expiry)
        assert (refunded["state"], refunded["paid_on_chain"]) == ("refunded", 0)
        assert channel_line(refunded) == "refunded: chain paid 0 of 80 signed"


async def test_a_refund_beaten_by_the_payees_close_books_what_the_close_paid(
    tmp_path: Path, ledger_path: Path
) -> None:
    """The payer never heard the payee's close; at the expiry its refund is refused as
    a double spend, and the chain says which transaction closed it and what it paid."""

    async def deaf(_: str, frame: Frame) -> bool:
        return isinstance(frame, ChannelClosed)

    async with (
        agentlet(tmp_path / "buyer", ledger_path, intercept=deaf) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        cid = await open_channel(buyer, seller, ledger_path)
        await buyer.manager.pay(cid, 300)
        await buyer.manager.wait_acked(cid)
        await seller.manager.close(cid)
        close_txid = seller.manager.record(cid).close_txid
        expiry = buyer.manager.record(cid).terms.expiry_height
        await buyer.chain.mine(expiry - await buyer.chain.height())
        await buyer.manager.check_expiry(expiry)
        record = buyer.manager.record(cid)
    assert record.state is State.CLOSED
    assert (record.close_txid, record.paid_on_chain, record.total) == (close_txid, 300, 300)
