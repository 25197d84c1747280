"""A funding the payee refuses: offered once, recorded, refunded at the expiry.

Real agentlets over real sockets; the payee watches another ledger file than the payer,
so the payer's funding spends coins the payee's chain view has never seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from agents.channels import ChannelConfig, ChannelFailure, FundingRefused
from mesh.chain.base import OutputState
from mesh.chain.errors import ChainUnavailable
from mesh.chain.ledger import LocalLedger
from mesh.channel import ChannelStateError, Record, Role, State
from mesh.channel.frames import ChannelFunded
from mesh.channel.settle import channel_summary
from mesh.channel.store import ChannelStore
from mesh.channel.txs import Terms
from mesh.store import Store
from mesh.wire import Frame
from tests.channel.harness import Agentlet, agentlet

CAPACITY = 200_000
LIFETIME = 8


def new_ledger(path: Path) -> Path:
    LocalLedger.create(path).close()
    return path


async def reconnect(buyer: Agentlet, seller: Agentlet) -> bool:
    """End the buyer's session with the seller and open a new one (the buyer's
    `peer_connected` resends what a lost session may have lost); whether the seller
    took the new session (a payee sets aside a peer that keeps offering what it refused)."""
    seller_id, buyer_id = seller.node.peer_id, buyer.node.peer_id
    buyer.node.hang_up(seller_id, "test: reconnect")  # (none if the payee hung up)
    with trio.fail_after(5):
        while buyer.node.session(seller_id) or seller.node.session(buyer_id):
            await trio.sleep(0.01)
    with trio.move_on_after(5):
        await buyer.node.connect(seller.node.address, expect_peer=seller_id)
        while seller.node.session(buyer_id) is None:
            await trio.sleep(0.01)
        await trio.sleep(0.3)  # time for a resend to arrive
        return True
    return False


async def test_a_refused_funding_is_offered_once_and_refunded_at_the_expiry(
    tmp_path: Path,
) -> None:
    payer_ledger = new_ledger(tmp_path / "payer-ledger.db")
    payee_ledger = new_ledger(tmp_path / "payee-ledger.db")
    fundings: list[bytes] = []  # every ChannelFunded that reached the payee

    async def count(_: str, frame: Frame) -> bool:
        if isinstance(frame, ChannelFunded):
            fundings.append(frame.channel_id)
        return False

    buyer_dir = tmp_path / "buyer"
    config = ChannelConfig(open_timeout=5)
    async with agentlet(tmp_path / "seller", payee_ledger, intercept=count) as seller:
        async with agentlet(buyer_dir, payer_ledger, config=config) as buyer:
            await buyer.fund(payer_ledger, 1_000_000)
            await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
            with pytest.raises(FundingRefused, match=r"refused the funding: funding: .*missing"):
                await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, LIFETIME)
            [(record, service)] = buyer.manager.records()
            cid = record.terms.channel_id
            assert record.state is State.REFUSED
            assert record.refused.startswith("funding: ") and "missing-input" in record.refused
            assert fundings == [cid]
            # Its funding is on the payer's chain: the coins wait for the refund.
            funding = await buyer.chain.output(record.terms.funding_txid, 0)
            assert funding.state is OutputState.UNSPENT
            for _ in range(3):
                up = await reconnect(buyer, seller)
                assert fundings == [cid]  # never offered again
                assert up
            # Nothing pays on it, nor closes it (the payee never held it open).
            with pytest.raises(ChannelStateError):
                await buyer.manager.pay(cid, 1)
            assert (await buyer.manager.close(cid)).state is State.REFUSED
            summary = channel_summary(record, service, await buyer.chain.height())
            assert summary["state"] == "refused" and summary["refused"] == record.refused
            assert summary["locked_until"] == record.terms.expiry_height
        # The payer restarts: still refused, still not offered.
        async with agentlet(buyer_dir, payer_ledger, config=config) as buyer:
            assert buyer.manager.record(cid) == record
            await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
            await trio.sleep(0.3)
            up = await reconnect(buyer, seller)
            assert fundings == [cid] and up
            before = await trio.to_thread.run_sync(buyer.wallet.balance, limiter=buyer.db)
            # At the expiry the watcher's refund takes the coins back.
            terms = record.terms
            await buyer.chain.mine(terms.expiry_height - await buyer.chain.height())
            with trio.fail_after(5):
                while buyer.manager.record(cid).state is not State.REFUNDED:
                    await trio.sleep(0.05)
            refunded = buyer.manager.record(cid)
            after = await trio.to_thread.run_sync(buyer.wallet.balance, limiter=buyer.db)
            await buyer.chain.mine()
        assert fundings == [cid]
    assert refunded.paid_on_chain == 0 and refunded.refused == record.refused
    refund = CAPACITY - terms.refund_fee
    assert after.available == before.available + refund
    assert payout_value(payer_ledger, terms) == refund
    assert payout_value(payee_ledger, terms) == 0
    assert stored(buyer_dir, cid).refused == record.refused


def payout_value(ledger_path: Path, terms: Terms) -> int:
    with LocalLedger.open(ledger_path) as ledger:
        return sum(u.satoshis for u in ledger.utxos(terms.payer_payout))


def stored(data_dir: Path, cid: bytes) -> Record:
    with Store(data_dir / "agent.db") as store:
        channels = ChannelStore(store)
        found = channels.find(cid)
        channels.close()
    assert found is not None and found.record.role is Role.PAYER
    return found.record


async def test_a_refusal_of_a_resent_funding_is_recorded_too(tmp_path: Path) -> None:
    """The first `ChannelFunded` is lost and the open gives up; the payee refuses the
    one resent on the next session, with no open waiting for its answer."""
    payer_ledger = new_ledger(tmp_path / "payer-ledger.db")
    payee_ledger = new_ledger(tmp_path / "payee-ledger.db")
    fundings: list[bytes] = []

    async def lose_the_first(_: str, frame: Frame) -> bool:
        if not isinstance(frame, ChannelFunded):
            return False
        fundings.append(frame.channel_id)
        return len(fundings) == 1

    async with (
        agentlet(tmp_path / "seller", payee_ledger, intercept=lose_the_first) as seller,
        agentlet(tmp_path / "buyer", payer_ledger, config=ChannelConfig(open_timeout=1)) as buyer,
    ):
        await buyer.fund(payer_ledger, 1_000_000)
        await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        with pytest.raises(ChannelFailure, match="opening"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, LIFETIME)
        [(record, _)] = buyer.manager.records()
        cid = record.terms.channel_id
        assert record.state is State.FUNDED and fundings == [cid]
        assert await reconnect(buyer, seller)
        with trio.fail_after(5):
            while buyer.manager.record(cid).state is not State.REFUSED:
                await trio.sleep(0.01)
        assert fundings == [cid, cid]
        assert "missing-input" in buyer.manager.record(cid).refused
        assert await reconnect(buyer, seller)
        assert fundings == [cid, cid]


class Unanswering:
    """The real chain, except that broadcasts fail as a chain that does not answer."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain
        self.down = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def broadcast(self, tx: Any) -> str:
        if self.down:
            raise ChainUnavailable("test: no answer")
        txid: str = await self._chain.broadcast(tx)
        return txid


async def test_a_payee_whose_chain_does_not_answer_refuses_nothing(
    tmp_path: Path,
) -> None:
    """No verdict on the funding is no refusal: the payer offers it again on the next
    session, and the channel opens once the payee's chain answers."""
    ledger = new_ledger(tmp_path / "ledger.db")
    async with (
        agentlet(tmp_path / "seller", ledger) as seller,
        agentlet(tmp_path / "buyer", ledger, config=ChannelConfig(open_timeout=5)) as buyer,
    ):
        chain = Unanswering(seller.manager.chain)
        seller.manager.chain = chain
        await buyer.fund(ledger, 1_000_000)
        await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        with pytest.raises(ChannelFailure, match="did not open the channel: chain-unavailable"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, LIFETIME)
        [(record, _)] = buyer.manager.records()
        cid = record.terms.channel_id
        assert (record.state, record.refused) == (State.FUNDED, "")
        chain.down = False
        assert await reconnect(buyer, seller)
        with trio.fail_after(5):
            while buyer.manager.record(cid).state is not State.OPEN:
                await trio.sleep(0.01)
            await buyer.manager.pay(cid, 5)
            assert (await buyer.manager.wait_acked(cid)).acked_total == 5
        assert seller.manager.record(cid).state is State.OPEN
