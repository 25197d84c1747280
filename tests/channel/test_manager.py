"""The channel manager over real sockets, a real ledger file and real SQLite stores."""

from __future__ import annotations

import functools
import os
import random
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.channels import ChannelConfig, ChannelFailure
from mesh.chain.base import OutputState, OutputStatus
from mesh.chain.errors import ChainAuthError, TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.channel import Payer, State, Terms
from mesh.channel.admission import AdmissionLimits
from mesh.channel.config import FundingRefused
from mesh.channel.frames import ChannelAck, ChannelClosed, ChannelError, ChannelPay, ChannelPays
from mesh.channel.journal import RECORD_SIZE
from mesh.channel.store import ChannelStore, journal_path
from mesh.channel.txs import PaymentSigner, sign_digest
from mesh.identity import Identity
from mesh.net.node import PeerSession
from mesh.store import Store
from mesh.wire import Frame
from tests.channel.harness import Agentlet, agentlet
from tests.channel.helpers import check_spends_funding

CAPACITY = 200_000


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    LocalLedger.create(path).close()
    return path


async def funded_channel(
    buyer: Agentlet,
    seller: Agentlet,
    ledger_path: Path,
    *,
    close_fee: int = 20,
    service: str = "x",
) -> bytes:
    """Fund the buyer, connect it to the seller and open a channel of `CAPACITY`."""
    await buyer.fund(ledger_path, 1_000_000)
    await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
    return await buyer.manager.open(seller.node.peer_id, service, CAPACITY, close_fee)


def ledger_value(ledger_path: Path, script: bytes) -> int:
    with LocalLedger.open(ledger_path) as ledger:
        return sum(u.satoshis for u in ledger.utxos(script))


def check_settled(ledger_path: Path, txid: str, terms: Terms, paid: int) -> None:
    """Settled to the satoshi by `txid`: the payee holds `paid`, the payer the rest less
    the close fee; the ledger balances and bsv-sdk's interpreter accepts `txid`."""
    assert ledger_value(ledger_path, terms.payee_payout) == paid
    assert ledger_value(ledger_path, terms.payer_payout) == CAPACITY - terms.close_fee - paid
    with LocalLedger.open(ledger_path) as ledger:
        assert ledger.balance().balanced
        raw = ledger.raw_tx(txid)
    assert raw is not None
    check_spends_funding(raw, terms)


async def test_open_pay_close_settles_to_the_satoshi(tmp_path: Path, ledger_path: Path) -> None:
    paid: list[int] = []
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(
            tmp_path / "seller", ledger_path, on_paid=lambda c, p, s, total: paid.append(total)
        ) as seller,
    ):
        cid = await funded_channel(buyer, seller, ledger_path, service="spindle-time")
        assert seller.manager.record(cid).state is State.OPEN
        for _ in range(500):
            await buyer.manager.pay(cid, 7)
        final = await buyer.manager.wait_acked(cid)
        assert final.total == 3_500 and final.acked_total == 3_500
        assert paid[-1] == 3_500 and paid == sorted(paid)
        closed = await buyer.manager.close(cid)
        assert closed.state is State.CLOSED
        seller_record = seller.manager.record(cid)
        assert seller_record.state is State.CLOSED and seller_record.total == 3_500
        terms = seller_record.terms
        await buyer.chain.mine()
    check_settled(ledger_path, seller_record.close_txid, terms, paid=3_500)


async def test_payee_refuses_bad_terms_and_buyer_gets_coins_back(
    tmp_path: Path, ledger_path: Path
) -> None:
    strict = ChannelConfig(max_capacity=1_000)
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path, config=strict) as seller,
    ):
        await buyer.fund(ledger_path, 1_000_000)
        await buyer.node.connect(seller.node.address)
        with pytest.raises(ChannelFailure, match="capacity"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 20)
        balance = await trio.to_thread.run_sync(buyer.wallet.balance, limiter=buyer.db)
        assert balance.available == 1_000_000 and balance.reserved == 0


async def test_payer_refund_after_expiry_when_payee_vanishes(
    tmp_path: Path, ledger_path: Path
) -> None:
    async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
        await buyer.fund(ledger_path, 1_000_000)
        async with agentlet(tmp_path / "seller", ledger_path) as seller:
            await buyer.node.connect(seller.node.address)
            cid = await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 8)
        # The seller is gone (no payment was ever made, so it had nothing to close).
        record = buyer.manager.record(cid)
        refund = parse_exact(buyer.manager.protocol.book.end(cid).signed_refund())  # type: ignore[union-attr]
        with pytest.raises(Exception, match="non-final"):
            await buyer.chain.broadcast(refund)
        # One block short of the expiry the refund is still non-final: nothing happens.
        await buyer.chain.mine(record.terms.expiry_height - await buyer.chain.height() - 1)
        await buyer.manager.check_expiry(await buyer.chain.height())
        assert buyer.manager.record(cid).state is State.OPEN
        with pytest.raises(Exception, match="non-final"):
            await buyer.chain.broadcast(refund)
        await buyer.chain.mine()
        await buyer.manager.check_expiry(await buyer.chain.height())
        assert buyer.manager.record(cid).state is State.REFUNDED
        await buyer.chain.mine()
        terms = record.terms
    assert ledger_value(ledger_path, terms.payer_payout) == CAPACITY - terms.refund_fee


async def test_payee_watcher_closes_before_expiry(tmp_path: Path, ledger_path: Path) -> None:
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        cid = await funded_channel(buyer, seller, ledger_path, close_fee=10)
        await buyer.manager.pay(cid, 1_234)
        await buyer.manager.wait_acked(cid)
        expiry = seller.manager.record(cid).terms.expiry_height
        # The payer goes quiet; one block before the safety margin nothing happens...
        margin = seller.manager.config.close_margin_blocks
        await buyer.chain.mine(expiry - margin - 1 - await buyer.chain.height())
        await seller.manager.check_expiry(await seller.chain.height())
        assert seller.manager.record(cid).state is State.OPEN
        # ...and within the margin (still before expiry) the payee closes.
        await buyer.chain.mine()
        await seller.manager.check_expiry(await seller.chain.height())
        assert seller.manager.record(cid).state is State.CLOSED
        terms = seller.manager.record(cid).terms
        await buyer.chain.mine()
    assert ledger_value(ledger_path, terms.payee_payout) == 1_234


async def test_an_unused_channel_is_released_at_once(tmp_path: Path, ledger_path: Path) -> None:
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        cid = await funded_channel(buyer, seller, ledger_path, close_fee=50)
        closed = await buyer.manager.close(cid)  # nothing paid: released, not refunded
        assert closed.state is State.CLOSED and closed.total == 0
        seller_record = seller.manager.record(cid)
        assert seller_record.state is State.CLOSED and seller_record.total == 0
        assert closed.close_txid == seller_record.close_txid
        terms = seller_record.terms
        await buyer.chain.mine()
        assert await buyer.chain.height() < terms.expiry_height  # long before the refund
    check_settled(ledger_path, seller_record.close_txid, terms, paid=0)


async def test_a_channel_the_payer_never_heard_opened_is_released_too(
    tmp_path: Path, ledger_path: Path
) -> None:
    """The payee's open acknowledgement is lost: the payer holds the channel funded, the
    payee holds it open. Closing it releases it, and the payer books the coins back."""

    async def lose_open_ack(_: str, frame: Frame) -> bool:
        return isinstance(frame, ChannelAck) and frame.seq == 0

    config = ChannelConfig(open_timeout=1)
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=config, intercept=lose_open_ack) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        await buyer.fund(ledger_path, 1_000_000)
        await buyer.node.connect(seller.node.address)
        with pytest.raises(ChannelFailure, match="open"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 50)
        [(record, _)] = buyer.manager.records()
        assert record.state is State.FUNDED
        cid = record.terms.channel_id
        assert seller.manager.record(cid).state is State.OPEN
        closed = await buyer.manager.close(cid)
        assert closed.state is State.CLOSED and closed.total == 0
        await buyer.chain.mine()
        released = CAPACITY - record.terms.close_fee
        coins = {(c.txid, c.vout, c.satoshis) for c in buyer.wallet.coins()}
        assert (closed.close_txid, 0, released) in coins  # booked back in the wallet
    assert ledger_value(ledger_path, record.terms.payer_payout) == released


async def test_a_payee_restarted_after_closing_answers_a_repeated_close(
    tmp_path: Path, ledger_path: Path
) -> None:
    deaf = True  # the payer does not hear the payee's own close

    async def intercept(_: str, frame: Frame) -> bool:
        return deaf and isinstance(frame, ChannelClosed)

    async with agentlet(tmp_path / "buyer", ledger_path, intercept=intercept) as buyer:
        async with agentlet(tmp_path / "seller", ledger_path) as seller:
            cid = await funded_channel(buyer, seller, ledger_path, close_fee=50)
            await buyer.manager.pay(cid, 1_234)
            await buyer.manager.wait_acked(cid)
            await seller.manager.close(cid)
            close_txid = seller.manager.record(cid).close_txid
        assert buyer.manager.record(cid).state is State.OPEN
        deaf = False
        # Restarted, the payee holds no final channel, yet answers from its store.
        async with agentlet(tmp_path / "seller", ledger_path) as seller:
            with pytest.raises(ChannelFailure):
                seller.manager.record(cid)
            await buyer.node.connect(seller.node.address)
            closed = await buyer.manager.close(cid)
            assert closed.state is State.CLOSED and closed.close_txid == close_txid
            assert seller.manager.statistics().rejections == 0


async def test_a_restart_frees_coins_an_unfinished_open_reserved(
    tmp_path: Path, ledger_path: Path
) -> None:
    """A payer killed after reserving a funding's coins and before storing the channel
    (or while failing it) gets them back at its next start; others' reservations stay."""
    orphan = secrets.token_bytes(32).hex()
    anchor = "anchor:0123456789abcdef:temp:1"  # the anchoring service's, not ours
    async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
        await buyer.fund(ledger_path, 1_000_000)
        await buyer.fund(ledger_path, 500_000)
        wallet = buyer.wallet
        script = p2pkh_script(wallet.new_address())
        for reservation, amount in ((orphan, 200_000), (anchor, 100_000)):
            await trio.to_thread.run_sync(
                lambda r=reservation, a=amount: wallet.fund([(script, a)], reservation=r),
                limiter=buyer.db,
            )
        assert wallet.reservations() == {orphan, anchor}
    async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
        assert buyer.wallet.reservations() == {anchor}
        assert buyer.wallet.balance().reserved == 1_000_000


async def test_channels_survive_a_restart(tmp_path: Path, ledger_path: Path) -> None:
    async with agentlet(tmp_path / "seller", ledger_path) as seller:
        async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
            cid = await funded_channel(buyer, seller, ledger_path)
            for _ in range(10):
                await buyer.manager.pay(cid, 100)
            await buyer.manager.wait_acked(cid)
        # The buyer restarts from its data dir and continues the same channel.
        async with agentlet(tmp_path / "buyer", ledger_path) as buyer:
            assert buyer.manager.record(cid).total == 1_000
            await buyer.node.connect(seller.node.address)
            await buyer.manager.pay(cid, 1)
            assert (await buyer.manager.wait_acked(cid)).acked_total == 1_001
            assert (await buyer.manager.close(cid)).state is State.CLOSED
    store = Store(tmp_path / "seller" / "agent.db")
    [stored] = ChannelStore(store).load(include_final=True)
    store.close()
    assert stored.record.state is State.CLOSED and stored.record.total == 1_001


async def paid_then_power_cut(
    seller: Agentlet,
    buyer_dir: Path,
    ledger_path: Path,
    config: ChannelConfig,
    amounts: list[int],
    keep: Callable[[int], int],
) -> bytes:
    """A buyer at `buyer_dir` opens a channel to `seller`, pays `amounts` and sees them
    acked; then a power cut keeps only the first `keep(size)` bytes of its payment
    journal of `size` bytes. Returns the channel id."""
    async with agentlet(buyer_dir, ledger_path, config=config) as buyer:
        cid = await funded_channel(buyer, seller, ledger_path)
        for amount in amounts:
            await buyer.manager.pay(cid, amount)
        await buyer.manager.wait_acked(cid)
    journal = journal_path(buyer_dir / "agent.db")
    os.truncate(journal, keep(journal.stat().st_size))
    return cid


async def test_a_payer_that_lost_its_latest_payments_takes_them_back_from_the_ack(
    tmp_path: Path, ledger_path: Path
) -> None:
    """A power cut took the payer's last journal records (SECURITY risk 15): restarted,
    it holds an older state than the payee acknowledged. The payee's ack on reconnect
    carries the payer's own signature on its latest state; the payer checks it, takes
    that state back, and pays on from there: nothing is paid twice or lost."""
    buyer_dir = tmp_path / "buyer"
    async with agentlet(tmp_path / "seller", ledger_path) as seller:
        config = ChannelConfig(window=1)  # one journal record per payment
        # The last records never reached the disk.
        cid = await paid_then_power_cut(
            seller, buyer_dir, ledger_path, config, [100] * 10, lambda _: 4 * RECORD_SIZE
        )
        async with agentlet(buyer_dir, ledger_path, config=config) as buyer:
            assert 0 < buyer.manager.record(cid).total < 1_000
            await buyer.node.connect(seller.node.address)
            with trio.fail_after(5):
                while buyer.manager.record(cid).total != 1_000:
                    await trio.sleep(0.01)
            await buyer.manager.pay(cid, 1)
            assert (await buyer.manager.wait_acked(cid)).acked_total == 1_001
            closed = await buyer.manager.close(cid)
            assert closed.state is State.CLOSED and closed.total == 1_001
            terms = closed.terms
            await buyer.chain.mine()
    check_settled(ledger_path, closed.close_txid, terms, paid=1_001)


async def test_a_restarted_payer_signs_nothing_before_the_payee_has_acked(
    tmp_path: Path, ledger_path: Path
) -> None:
    """The same power cut, and the payer pays at once after the restart: its window
    stays shut until the payee's first ack of the session, so it never signs from the
    older state (the payee would refuse those payments as reused seqs, count them as
    violations, and hang up at the third). Every payment counts on top of the state
    taken back."""
    buyer_dir = tmp_path / "buyer"
    async with agentlet(tmp_path / "seller", ledger_path) as seller:
        config = ChannelConfig(window=1)
        cid = await paid_then_power_cut(
            seller, buyer_dir, ledger_path, config, [100] * 10, lambda _: 4 * RECORD_SIZE
        )
        config = ChannelConfig(window=8)
        async with agentlet(buyer_dir, ledger_path, config=config) as buyer:
            assert buyer.manager.record(cid).total < 1_000
            async with trio.open_nursery() as nursery:  # paying before the session is up
                for _ in range(5):
                    nursery.start_soon(buyer.manager.pay, cid, 1)
                await trio.sleep(0.2)
                assert buyer.manager.statistics().payments_signed == 0
                await buyer.node.connect(seller.node.address)
            with trio.fail_after(10):
                final = await buyer.manager.wait_acked(cid)
            assert final.acked_total == final.total == 1_005
            assert seller.manager.statistics().rejections == 0
            assert seller.node.session(buyer.node.peer_id) is not None
            closed = await buyer.manager.close(cid)
            await buyer.chain.mine()
    check_settled(ledger_path, closed.close_txid, closed.terms, paid=1_005)


async def power_cut_trial(tmp_path: Path, ledger_path: Path, seed: int) -> None:
    """One random power cut of the payer: a stream at a random window, the journal cut
    at a random byte (a torn last record included), a restart that pays at once, then
    close. Nothing refused, nothing lost: every payment counts, settled to the satoshi."""
    rng = random.Random(seed)
    buyer_dir = tmp_path / "buyer"
    async with agentlet(tmp_path / "seller", ledger_path) as seller:
        config = ChannelConfig(window=rng.choice([1, 8, 64]))
        before = [rng.randint(1, 50) for _ in range(rng.randint(1, 150))]
        cut = functools.partial(rng.randint, 0)  # anywhere in the journal
        cid = await paid_then_power_cut(seller, buyer_dir, ledger_path, config, before, cut)
        after = [rng.randint(1, 50) for _ in range(rng.randint(1, 50))]
        async with agentlet(buyer_dir, ledger_path, config=config) as buyer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(buyer.node.connect, seller.node.address)
                for amount in after:  # in order, before and while the session comes up
                    await buyer.manager.pay(cid, amount)
            with trio.fail_after(10):
                final = await buyer.manager.wait_acked(cid)
            paid = sum(before) + sum(after)
            assert final.acked_total == final.total == paid, (seed, final, paid)
            assert seller.manager.statistics().rejections == 0, seed
            closed = await buyer.manager.close(cid)
            await buyer.chain.mine()
    check_settled(ledger_path, closed.close_txid, closed.terms, paid=paid)


@pytest.mark.parametrize("seed", range(5))
async def test_payer_power_cut_trials(tmp_path: Path, ledger_path: Path, seed: int) -> None:
    await power_cut_trial(tmp_path, ledger_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5, 1005))
async def test_payer_power_cut_trials_slow(tmp_path: Path, ledger_path: Path, seed: int) -> None:
    await power_cut_trial(tmp_path, ledger_path, seed)


async def test_a_restarted_payer_of_an_unpaid_channel_pays_once_the_payee_has_spoken(
    tmp_path: Path, ledger_path: Path
) -> None:
    """Nothing was paid before the restart: the payee, holding no payment to acknowledge
    again, still says so on the new session (an ack of seq 0), which opens the window."""
    buyer_dir = tmp_path / "buyer"
    async with agentlet(tmp_path / "seller", ledger_path) as seller:
        async with agentlet(buyer_dir, ledger_path) as buyer:
            cid = await funded_channel(buyer, seller, ledger_path)
        async with agentlet(buyer_dir, ledger_path) as buyer:
            await buyer.node.connect(seller.node.address)
            with trio.fail_after(10):
                await buyer.manager.pay(cid, 7)
                final = await buyer.manager.wait_acked(cid)
            assert final.acked_total == 7


@pytest.mark.parametrize("window", [1, 64])
async def test_nothing_is_sent_or_acked_before_it_is_durable(
    tmp_path: Path, ledger_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """Payments and acks leave only after the record they stand for is committed,
    whether the committer task or an inline commit (lone payment, end of a burst)
    wrote it."""
    durable: dict[str, int] = {}  # role -> highest seq committed
    checked = {"pay": 0, "ack": 0}
    save = ChannelStore.save

    def recording_save(self: ChannelStore, records: Any) -> None:
        records = list(records)
        save(self, records)
        for record, _ in records:
            role = record.role.value
            durable[role] = max(durable.get(role, 0), record.seq)

    send_many = PeerSession.send_many

    async def checking_send_many(self: PeerSession, frames: Any) -> None:
        for frame in frames:
            if isinstance(frame, ChannelPay):
                assert frame.seq <= durable.get("payer", 0), "payment sent before durable"
                checked["pay"] += 1
            elif isinstance(frame, ChannelPays):
                last = frame.seq + len(frame.totals) - 1
                assert last <= durable.get("payer", 0), "payments sent before durable"
                checked["pay"] += len(frame.totals)
            elif isinstance(frame, ChannelAck) and frame.seq:
                assert frame.seq <= durable.get("payee", 0), "ack sent before durable"
                checked["ack"] += 1
        await send_many(self, frames)

    monkeypatch.setattr(ChannelStore, "save", recording_save)
    monkeypatch.setattr(PeerSession, "send_many", checking_send_many)
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=ChannelConfig(window=window)) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        cid = await funded_channel(buyer, seller, ledger_path, service="spindle-time")
        for _ in range(300):
            await buyer.manager.pay(cid, 1)
        final = await buyer.manager.wait_acked(cid)
    assert final.acked_total == 300
    assert checked["pay"] == 300 and checked["ack"] >= 1


async def test_a_run_with_a_forged_payment_keeps_the_payments_before_it(
    tmp_path: Path, ledger_path: Path
) -> None:
    """A `ChannelPays` whose third signature is forged: the payee takes and acknowledges
    the first two, refuses the third with a `ChannelError`, and ignores the fourth."""
    errors: list[Frame] = []
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        await buyer.fund(ledger_path, 1_000_000)
        session = await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        cid = await buyer.manager.open(seller.node.peer_id, "spindle-time", CAPACITY, 20)
        payer = buyer.manager.protocol.book.end(cid)
        signer = PaymentSigner(payer.terms)
        sigs = [sign_digest(payer._key, signer.sighash(total)) for total in (5, 10, 15, 20)]
        sigs[2] = sign_digest(Identity.generate().key, signer.sighash(15))
        handle = buyer.manager.handle

        async def recording(peer_id: str, frame: Frame, last: bool = True) -> bool:
            if isinstance(frame, ChannelError | ChannelAck):
                errors.append(frame)
            return await handle(peer_id, frame, last)

        buyer.manager.handle = recording  # type: ignore[method-assign]
        await session.send(ChannelPays(cid, 1, (5, 10, 15, 20), tuple(sigs)))
        with trio.fail_after(5):
            while len(errors) < 2:
                await trio.sleep(0.01)
        record = seller.manager.record(cid)
        assert (record.seq, record.total, record.acked_seq) == (2, 10, 2)
        assert seller.manager.statistics().rejections == 1
    ack, error = errors
    assert ack == ChannelAck(cid, 2, 10, sigs[1])
    assert isinstance(error, ChannelError) and error.code == "bad-signature"


async def test_a_part_batch_goes_out_while_the_payer_does_other_things(
    tmp_path: Path, ledger_path: Path
) -> None:
    """A payer sends a batch (half a window) at a time; payments short of a batch
    are sent by the committer as soon as the payer's task yields, with no wait_acked."""
    paid = trio.Event()

    def on_paid(_: bytes, __: str, ___: str, total: int) -> None:
        if total == 3 + 5:
            paid.set()

    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=ChannelConfig(window=64)) as buyer,
        agentlet(tmp_path / "seller", ledger_path, on_paid=on_paid) as seller,
    ):
        cid = await funded_channel(buyer, seller, ledger_path, service="spindle-time")
        await buyer.manager.pay(cid, 3)  # lone: sent at once
        await buyer.manager.wait_acked(cid)
        for _ in range(5):  # the first goes alone, four wait for a batch of 32
            await buyer.manager.pay(cid, 1)
        with trio.fail_after(5):
            await paid.wait()  # the buyer only sleeps here: its committer sent them
            assert (await buyer.manager.wait_acked(cid)).acked_total == 8


class SpentFunding:
    """The real chain, except that it reports one outpoint spent by `spender` (what a
    payee's view shows after a double spend of an unconfirmed funding on a real network,
    which LocalLedger's first-seen rule never lets happen)."""

    def __init__(self, chain: Any, outpoint: tuple[str, int], spender: str) -> None:
        self._chain = chain
        self._outpoint = outpoint
        self._spender = spender

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def output(self, txid: str, vout: int) -> OutputStatus:
        status: OutputStatus = await self._chain.output(txid, vout)
        if (txid, vout) != self._outpoint:
            return status
        return replace(status, state=OutputState.SPENT, spent_by=self._spender)


async def test_a_funding_spent_while_open_ends_the_channel_at_once(
    tmp_path: Path, ledger_path: Path
) -> None:
    ended: list[bytes] = []
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        seller.manager.on_ended = ended.append
        cid = await funded_channel(buyer, seller, ledger_path, close_fee=50)
        await buyer.manager.pay(cid, 5)
        await buyer.manager.wait_acked(cid)
        terms = seller.manager.record(cid).terms
        seller.manager.chain = SpentFunding(
            seller.manager.chain, (terms.funding_txid, terms.funding_vout), "ab" * 32
        )
        await seller.manager.check_expiry(await buyer.chain.height())
        record = seller.manager.record(cid)
        assert record.state is State.REFUNDED and record.close_txid == "ab" * 32
        assert ended == [cid]
        assert seller.manager.statistics().fundings_lost == 1
        # Nothing more is acknowledged on it.
        before = seller.manager.statistics().acks_sent
        await buyer.manager.pay(cid, 5)
        await trio.sleep(0.3)
        assert seller.manager.statistics().acks_sent == before
        assert seller.manager.record(cid).total == 5


class BadCredentials:
    """The real chain, except that reading an output is refused as ARC and WhatsOnChain
    refuse a wrong API key (HTTP 401: `ChainAuthError`)."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def output(self, txid: str, vout: int) -> OutputStatus:
        raise ChainAuthError("ARC 401: check M2MESH_ARC_API_KEY")


async def test_a_payee_whose_chain_refuses_its_credentials_refuses_no_funding(
    tmp_path: Path, ledger_path: Path
) -> None:
    """A payee's wrong API key is its own fault: no payer's funding is called refused
    (that would lock the payer's coins until the refund) and nobody is struck."""
    strict = ChannelConfig(admission=AdmissionLimits(max_strikes=1))
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=ChannelConfig(open_timeout=3)) as buyer,
        agentlet(tmp_path / "seller", ledger_path, config=strict) as seller,
    ):
        seller.manager.chain = BadCredentials(seller.manager.chain)
        for _ in range(2):
            with pytest.raises(ChannelFailure) as failed:
                await funded_channel(buyer, seller, ledger_path)
            assert not isinstance(failed.value, FundingRefused), failed.value
        assert seller.manager.statistics().peers_set_aside == 0


class RisingPolicy:
    """The real chain, with a fee policy the test raises (what ARC's `/v1/policy` does
    when the miners' fee changes)."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain
        self.now = Policy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def policy(self) -> Policy:
        return self.now


async def test_each_open_takes_the_fee_policy_of_its_moment(
    tmp_path: Path, ledger_path: Path
) -> None:
    async with (
        agentlet(tmp_path / "buyer", ledger_path) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        ours, theirs = RisingPolicy(buyer.manager.chain), RisingPolicy(seller.manager.chain)
        buyer.manager.chain, seller.manager.chain = ours, theirs
        first = await funded_channel(buyer, seller, ledger_path)
        assert seller.manager.record(first).terms.close_fee == 10  # the floor
        ours.now = theirs.now = Policy(fee_rate=500)  # the network's fee rose
        second = await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 20)
        terms = seller.manager.record(second).terms
        assert (terms.close_fee, terms.refund_fee) == (268, 234)  # 2x the policy's fee
        # A payer that has not seen the rise is refused before anything is signed.
        ours.now = Policy()
        with pytest.raises(ChannelFailure, match="below the network's policy"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 20)


@pytest.fixture
def teranode_ledger(tmp_path: Path) -> Path:
    """A ledger that judges finality as Teranode does (a refund with nLockTime E is
    accepted once the height is E - 1): the strictest rule of any real node."""
    path = tmp_path / "teranode.db"
    LocalLedger.create(path, policy=Policy(finality="teranode")).close()
    return path


async def refund_attempts(payer: Agentlet, cid: bytes, until: float) -> list[str]:
    """A payer that broadcasts its refund every 50 ms (as soon as any node would take
    it), until `until`; the rules it was refused by."""
    end = payer.manager.protocol.book.ends[cid]
    assert isinstance(end, Payer)
    refusals: list[str] = []
    raw = end.signed_refund()
    while trio.current_time() < until:
        try:
            await payer.chain.broadcast(parse_exact(raw))
        except TxRejected as exc:
            refusals.append(exc.rule)
        else:
            refusals.append("ACCEPTED")
            break
        await trio.sleep(0.05)
    return refusals


async def test_at_one_block_a_second_under_teranode_the_close_beats_the_refund(
    tmp_path: Path, teranode_ledger: Path
) -> None:
    fast = ChannelConfig(watch_interval=1.0)
    async with (
        agentlet(tmp_path / "buyer", teranode_ledger) as buyer,
        agentlet(tmp_path / "seller", teranode_ledger, config=fast) as seller,
        trio.open_nursery() as nursery,
    ):
        cid = await funded_channel(buyer, seller, teranode_ledger, close_fee=8)
        await buyer.manager.pay(cid, 48)
        await buyer.manager.wait_acked(cid)
        await nursery.start(buyer.chain.run_miner, 1.0)
        attempts = await refund_attempts(buyer, cid, trio.current_time() + 12)
        nursery.cancel_scope.cancel()
        record = seller.manager.record(cid)
    assert "ACCEPTED" not in attempts, attempts
    assert record.state is State.CLOSED and record.total == 48
    assert ledger_value(teranode_ledger, record.terms.payee_payout) == 48


async def test_a_payee_restarted_inside_its_margin_closes_at_once(
    tmp_path: Path, teranode_ledger: Path
) -> None:
    async with agentlet(tmp_path / "buyer", teranode_ledger) as buyer:
        async with agentlet(tmp_path / "seller", teranode_ledger) as seller:
            cid = await funded_channel(buyer, seller, teranode_ledger, close_fee=20)
            await buyer.manager.pay(cid, 30)
            await buyer.manager.wait_acked(cid)
            expiry = seller.manager.record(cid).terms.expiry_height
        # The payee is down; the chain reaches one block before the refund is final.
        await buyer.chain.mine(expiry - 2 - await buyer.chain.height())
        with trio.fail_after(0.9):  # at start, not after a first watch interval (1 s)
            async with agentlet(tmp_path / "seller", teranode_ledger) as seller:
                while seller.manager.record(cid).state is not State.CLOSED:
                    await trio.sleep(0.01)
                record = seller.manager.record(cid)
        await buyer.chain.mine()
        refusals = await refund_attempts(buyer, cid, trio.current_time() + 0.1)
        assert refusals and set(refusals) == {"spent-input"}, refusals
    assert ledger_value(teranode_ledger, record.terms.payee_payout) == 30


async def test_a_payee_with_a_storage_fault_takes_no_new_channel_and_strikes_no_one(
    tmp_path: Path, ledger_path: Path
) -> None:
    async with (
        agentlet(tmp_path / "buyer", ledger_path, config=ChannelConfig(open_timeout=3)) as buyer,
        agentlet(tmp_path / "seller", ledger_path) as seller,
    ):
        seller.manager.health.fault("channels", OSError(28, "No space left on device"))
        for _ in range(4):  # more than the strikes that would set a peer aside
            with pytest.raises(ChannelFailure, match="storage fault here"):
                await funded_channel(buyer, seller, ledger_path)
        assert buyer.manager.records() == [] or all(
            r.state is State.FAILED for r, _ in buyer.manager.records()
        )
        balance = await trio.to_thread.run_sync(buyer.wallet.balance, limiter=buyer.db)
        assert balance.reserved == 0 and balance.available == 4_000_000
        seller.manager.health.ok("channels")
        cid = await funded_channel(buyer, seller, ledger_path)
        assert seller.manager.record(cid).state is State.OPEN
        # ... and a payer whose own storage fails does not try.
        buyer.manager.health.fault("channels", OSError(5, "Input/output error"))
        with pytest.raises(ChannelFailure, match="storage fault"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 50)


async def test_no_channel_with_a_peer_of_another_network_even_with_a_session(
    tmp_path: Path,
) -> None:
    """Two ledgers are two networks. Nodes told the same (wrong) network id get a
    session, but the channel layer asks its own chain and refuses, both ways."""
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    for path in (ours, theirs):
        LocalLedger.create(path).close()
    claimed = "ab" * 32
    async with (
        agentlet(tmp_path / "buyer", ours, network=claimed) as buyer,
        agentlet(tmp_path / "seller", theirs, network=claimed) as seller,
    ):
        await buyer.fund(ours, 1_000_000)
        await buyer.node.connect(seller.node.address, expect_peer=seller.node.peer_id)
        assert buyer.node.session(seller.node.peer_id) is not None
        # The seller's node says "ab…", the buyer's chain is another: refused at once.
        with pytest.raises(ChannelFailure, match="network"):
            await buyer.manager.open(seller.node.peer_id, "x", CAPACITY, 50)
        assert buyer.manager.records() == []
