"""Every channel rule of the conversation, without an event loop, sockets or SQLite.

Two `ChannelProtocol`s joined in memory (`tests.channel.sansio`); the assertions are
on the effects each asked for, in order. The same conversations over real nng
sessions, SQLite and a LocalLedger are `test_manager.py`, `test_refusal.py`,
`test_accounting.py` and `tests/reliability/`.
"""

from __future__ import annotations

import secrets

import pytest

from mesh.chain.base import OutputState, OutputStatus
from mesh.channel.admission import AdmissionLimits
from mesh.channel.config import ChannelConfig, ChannelRefused, FundingRefused
from mesh.channel.effects import (
    AddCoins,
    AdoptPayout,
    BroadcastClose,
    BroadcastRefund,
    CheckOffer,
    CommitNow,
    Effect,
    Ended,
    Flush,
    ForgetUnfunded,
    HangUp,
    Paid,
    Persist,
    Released,
    SaveRaw,
    Send,
    SendAfterCommit,
    Wake,
)
from mesh.channel.fees import ChannelFees
from mesh.channel.frames import (
    ChannelAck,
    ChannelClosed,
    ChannelError,
    ChannelOpen,
    ChannelPay,
    ChannelRefundSigned,
)
from mesh.channel.pays import latest_payment
from mesh.channel.state import Payer, State
from mesh.channel.txs import p2pkh_for_key
from mesh.identity import Identity
from tests.channel.sansio import (
    FakeChain,
    Side,
    converse,
    deliver,
    open_channel,
    propose,
    settle_link,
    side,
)

FEES = ChannelFees(10, 10)


def pair(config: ChannelConfig | None = None) -> tuple[Side, Side, FakeChain]:
    chain = FakeChain()
    return side(chain, config), side(chain, config), chain


def errors(s: Side) -> list[str]:
    return [e.frame.code for e in s.of(Send) if isinstance(e.frame, ChannelError)]


def an_offer() -> ChannelOpen:
    """A fresh, acceptable offer of 10 000 sat until height 200."""
    payout = p2pkh_for_key(Identity.generate().public_key)
    return ChannelOpen(
        secrets.token_bytes(32), "svc", 10_000, 10, 10, 200, secrets.token_hex(32), 0, payout
    )


def index(s: Side, match: Effect) -> int:
    return s.log.index(match)


# ---------------------------------------------------------------- opening


def test_an_open_persists_before_each_answer_and_the_funding_before_its_broadcast() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    assert payer.protocol.book.end(cid).state is State.OPEN
    assert payee.protocol.book.end(cid).state is State.OPEN
    # The payee: its refund signature leaves only after the proposal is durable.
    refund = next(e for e in payee.of(Send) if isinstance(e.frame, ChannelRefundSigned))
    assert index(payee, Flush(cid)) < index(payee, refund)
    # The payer: the refund and the signed funding are recorded before the broadcast.
    saved = next(e for e in payer.of(SaveRaw))
    broadcast = next(e for e in payer.log if type(e).__name__ == "BroadcastFunding")
    assert index(payer, Flush(cid)) < index(payer, saved) < index(payer, broadcast)
    assert payee.protocol.admission.statistics(0).pending == 0  # funded: not a proposal


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"capacity": 0}, "capacity"),
        ({"close_fee": 0}, "fee"),
        ({"payer_payout": b"\x6a"}, "bad-terms"),
        ({"funding_txid": "zz"}, "bad-terms"),
        ({"expiry_height": 101}, "expiry"),
        ({"expiry_height": 600_000_000}, "expiry"),
    ],
)
def test_an_offer_breaking_a_rule_is_refused_by_name_and_nothing_is_held(
    change: dict[str, object], code: str
) -> None:
    payer, payee, _ = pair()
    fields: dict[str, object] = {
        "channel_id": secrets.token_bytes(32),
        "service": "svc",
        "capacity": 10_000,
        "close_fee": 10,
        "refund_fee": 10,
        "expiry_height": 200,
        "funding_txid": secrets.token_hex(32),
        "funding_vout": 0,
        "payer_payout": p2pkh_for_key(Identity.generate().public_key),
    }
    fields.update(change)
    payee.receive(payer, ChannelOpen(**fields))
    assert errors(payee) == [code]
    assert payee.protocol.book.ends == {} and not payee.of(Flush)


def test_a_lookup_is_asked_only_for_an_offer_that_passed_the_cheap_checks() -> None:
    payer, payee, _ = pair(ChannelConfig(admission=AdmissionLimits(per_peer=2)))
    for _ in range(3):
        offer = an_offer()
        payee.receive(payer, offer)
    assert len(payee.of(CheckOffer)) == 2  # the third is refused before any lookup
    assert errors(payee) == ["too-many-proposals"]


def test_a_channel_id_seen_before_is_never_opened_again() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    # the same id offered again (say, after the payee released it): the store says so
    payee.protocol.book.ends.pop(cid)
    payee.seen[cid] = "channel settled before"
    again = payer.protocol.opening
    payout = p2pkh_for_key(Identity.generate().public_key)
    _, keys = again.funding_script(payee.peer_id, cid, 5_000, FEES, 150, payout)
    offer = again.propose(
        payee.peer_id, cid, "svc", 5_000, FEES, 150, payout, "ab" * 32, keys, funding_raw=b"", now=0
    )
    payer.run(offer)
    ended = converse(payer, payee, cid)
    assert isinstance(ended.failure, ChannelRefused) and ended.failure.code == "duplicate-channel"


def test_a_funding_already_spent_fails_the_channel_and_is_refused() -> None:
    payer, payee, chain = pair()

    # The payer's funding is on chain but already spent when the payee looks.
    original = chain.output

    def spent(txid: str, vout: int) -> OutputStatus:
        out = original(txid, vout)
        if out.state is OutputState.UNSPENT and vout == 0 and out.satoshis == 100_000:
            return OutputStatus(txid, vout, OutputState.SPENT, out.satoshis, out.script, "ff" * 32)
        return out

    chain.output = spent
    with pytest.raises(FundingRefused, match="already spent"):
        open_channel(payer, payee)
    [cid] = payee.protocol.book.ends
    assert payee.protocol.book.end(cid).state is State.FAILED
    assert errors(payee) == ["funding"]
    # The payer keeps it refused: never offered again, the refund takes it back.
    end = payer.protocol.book.end(cid)
    assert end.state is State.REFUSED and end.record().refused.startswith("funding:")
    assert payer.protocol.peer_connected(payee.peer_id) == []


def test_a_chain_without_an_answer_is_no_refusal_and_no_strike() -> None:
    payer, payee, _ = pair(ChannelConfig(admission=AdmissionLimits(max_strikes=1)))
    cid = propose(payer, payee)
    deliver(payer, payee)  # the payee signed the refund and waits for the funding
    assert payee.protocol.book.end(cid).state is State.REFUND_SIGNED
    effects = payee.protocol.funding_checked(payer.peer_id, cid, None, 0, unavailable="down")
    payee.run(effects)
    assert errors(payee) == ["chain-unavailable"]
    assert not payee.of(HangUp)  # one strike would have hung up
    assert payee.protocol.book.end(cid).state is State.REFUND_SIGNED  # offered again later


# ---------------------------------------------------------------- paying


def test_payments_leave_after_their_commit_and_acks_after_the_payees() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    record, effects = payer.protocol.pay(cid, 100, staged=0)
    assert effects == [SendAfterCommit(payee.peer_id, latest_payment(record)), CommitNow(cid)]
    payer.run(effects)
    assert payer.stored[cid].seq == 1  # written ...
    deliver(payer, payee)  # ... before it left
    # The payee's ack and the application's `Paid` come only from its commit.
    assert payee.stored[cid].total == 100
    assert Paid(cid, payer.peer_id, "svc", 100) in payee.log
    deliver(payee, payer)
    assert payer.protocol.book.end(cid).record().acked_total == 100
    assert any(isinstance(e, Wake) for e in payer.log)


def test_a_burst_commits_once_at_its_last_payment() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    end = payer.protocol.book.end(cid)
    assert isinstance(end, Payer)
    frames = [ChannelPay(cid, r.seq, r.total, r.payer_sig) for r in (end.pay(1) for _ in range(5))]
    before = payee.commits
    for frame in frames:
        payee.receive(payer, frame, last=frame is frames[-1])
    assert payee.commits == before + 1
    assert [type(e) for e in payee.log[-6:-1]].count(Persist) == 4
    assert payee.of(CommitNow)[-1] == CommitNow(cid)


def test_a_payer_with_a_full_window_may_not_pay_and_batches_go_inline() -> None:
    payer, payee, _ = pair(ChannelConfig(window=4))
    cid = open_channel(payer, payee)
    assert payer.protocol.pay_batch == 2
    _, first = payer.protocol.pay(cid, 1, staged=0)
    assert CommitNow(cid) in first  # a lone payment
    payer.run(first)
    _, second = payer.protocol.pay(cid, 1, staged=0)
    assert Persist(cid) in second  # one in flight: waits for the batch
    _, third = payer.protocol.pay(cid, 1, staged=1)
    assert CommitNow(cid) in third  # completes a batch of two
    payer.protocol.pay(cid, 1, staged=0)
    assert not payer.protocol.may_pay(cid)  # four unacked: the window is full
    settle_link(payer, payee)
    assert payer.protocol.may_pay(cid)


@pytest.mark.parametrize(
    ("seq", "total", "code"),
    [(0, 10, "bad-seq"), (1, 0, "total-not-growing"), (1, 10**9, "above-capacity")],
)
def test_a_bad_payment_is_refused_by_name_and_changes_nothing(
    seq: int, total: int, code: str
) -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    before = payee.protocol.book.end(cid).record()
    payee.receive(payer, ChannelPay(cid, seq, total, b"\x30" * 70))
    assert errors(payee) == [code]
    assert payee.protocol.book.end(cid).record() == before


def test_a_peer_that_keeps_breaking_rules_is_hung_up_on() -> None:
    payer, payee, _ = pair(ChannelConfig(admission=AdmissionLimits(max_strikes=3)))
    cid = open_channel(payer, payee)
    for _ in range(3):
        payee.receive(payer, ChannelPay(cid, 1, 5, b"\x30" * 70))
    assert payee.of(HangUp) == [HangUp(payer.peer_id, "repeated channel violations")]
    # Another peer's frames never touch this channel.
    stranger = side(payee.chain)
    payee.receive(stranger, ChannelPay(cid, 1, 5, b"\x30" * 70))
    assert errors(payee)[-1] == "unknown-channel"


def test_after_a_restart_a_payer_waits_for_the_payees_word() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    payer.run(payer.protocol.pay(cid, 50, staged=0)[1])
    settle_link(payer, payee)
    # The payer restarts from a store that lost its last write (seq 1 is gone).
    stored = payer.protocol.book.end(cid).record()
    old = stored.with_payment(0, 0, b"").with_ack(0, 0)
    restarted = side(payer.chain)
    restarted.protocol.identity = payer.protocol.identity
    restarted.protocol.opening.identity = payer.protocol.identity
    restarted.run(restarted.protocol.restore(old, "svc", None, None, 0))
    assert not restarted.protocol.may_pay(cid)
    # On reconnect the payee re-acks what it holds; the payer takes it back.
    payee.run(payee.protocol.peer_connected(restarted.peer_id))
    payee.commit()
    deliver(payee, restarted)
    assert restarted.protocol.may_pay(cid)
    assert restarted.protocol.book.end(cid).record().total == 50


# ---------------------------------------------------------------- settling


def test_a_close_is_recorded_before_its_broadcast_and_pays_the_payee() -> None:
    payer, payee, chain = pair()
    cid = open_channel(payer, payee)
    payer.run(payer.protocol.pay(cid, 700, staged=0)[1])
    settle_link(payer, payee)
    payer.run(payer.protocol.close(cid))
    settle_link(payer, payee)
    closed = payee.protocol.book.end(cid).record()
    assert closed.state is State.CLOSED and closed.paid_on_chain == 700
    log = payee.log
    save = next(e for e in payee.of(SaveRaw) if e.close is not None)
    adopt = AdoptPayout(cid)
    broadcast = next(e for e in log if isinstance(e, BroadcastClose))
    assert index(payee, save) < index(payee, adopt) < index(payee, broadcast)
    assert payee.of(AddCoins)[-1].coins[0].satoshis == 700
    # The payer believes the close because the chain shows its part.
    assert payer.protocol.book.end(cid).state is State.CLOSED
    assert payer.of(AddCoins)[-1].coins[0].satoshis == 100_000 - 700 - 10
    assert chain.output(closed.close_txid, 0).satoshis == 700


def test_a_close_the_chain_does_not_show_is_not_believed() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    payer.run(payer.protocol.pay(cid, 700, staged=0)[1])
    settle_link(payer, payee)
    payer.receive(payee, ChannelClosed(cid, "ee" * 32, 700))
    assert payer.protocol.book.end(cid).state is State.OPEN
    assert not payer.of(AddCoins)


def test_an_unpaid_channel_is_released_at_once() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    payer.run(payer.protocol.close(cid))
    settle_link(payer, payee)
    assert payee.protocol.book.end(cid).record().paid_on_chain == 0
    assert payer.of(AddCoins)[-1].coins[0].satoshis == 100_000 - 10
    assert not payee.of(AdoptPayout)  # a release pays the payee nothing


def test_the_watch_closes_near_expiry_and_refunds_past_it() -> None:
    payer, payee, chain = pair()
    config = payee.protocol.config
    paid = open_channel(payer, payee, lifetime=20)
    payer.run(payer.protocol.pay(paid, 300, staged=0)[1])
    settle_link(payer, payee)
    expiry = payee.protocol.book.end(paid).terms.expiry_height
    payee.run(payee.protocol.settlement.watch(expiry - config.close_margin_blocks - 1, 0))
    assert payee.protocol.book.end(paid).state is State.OPEN
    payee.run(payee.protocol.settlement.watch(expiry - config.close_margin_blocks, 0))
    assert payee.protocol.book.end(paid).state is State.CLOSED
    # A payee that vanished: the payer's refund once final, and its coins back.
    silent = side(chain)
    lost = open_channel(payer, silent, lifetime=20)
    payer.run(payer.protocol.settlement.watch(chain.height + 19, 0))
    assert payer.protocol.book.end(lost).state is State.OPEN
    assert not [e for e in payer.log if isinstance(e, BroadcastRefund)]
    payer.run(payer.protocol.settlement.watch(chain.height + 20, 0))
    assert payer.protocol.book.end(lost).state is State.REFUNDED
    assert payer.of(AddCoins)[-1].coins[0].satoshis == 100_000 - 10


def test_a_funding_spent_under_an_open_channel_ends_it_and_strikes_the_payer() -> None:
    payer, payee, chain = pair(ChannelConfig(admission=AdmissionLimits(max_strikes=1)))
    cid = open_channel(payer, payee)
    end = payer.protocol.book.end(cid)
    assert isinstance(end, Payer)
    chain.broadcast(end.signed_refund())  # (a node that ignores lock times)
    payee.run(payee.protocol.settlement.watch(chain.height, payee.now))
    assert payee.protocol.book.end(cid).state is State.REFUNDED
    assert Ended(cid) in payee.log
    assert payee.of(HangUp) == [HangUp(payer.peer_id, "spent the funding of an open channel")]


# ---------------------------------------------------------------- holding


def test_unfunded_proposals_expire_on_the_protocols_timer() -> None:
    payer, payee, _ = pair(ChannelConfig(admission=AdmissionLimits(lifetime=30)))
    offer = an_offer()
    payee.now = 5
    payee.receive(payer, offer)
    assert payee.protocol.next_deadline() == 35
    assert payee.protocol.handle_timer(34) == []
    effects = payee.protocol.handle_timer(35)
    cid = offer.channel_id
    assert effects == [Wake(cid), Released(cid), ForgetUnfunded((cid,))]
    assert payee.protocol.book.ends == {}


def test_only_the_most_recent_final_channels_are_held() -> None:
    payer, payee, _ = pair(ChannelConfig(keep_final=2))
    ids = []
    for _ in range(4):
        cid = open_channel(payer, payee)
        payer.run(payer.protocol.close(cid))
        settle_link(payer, payee)
        ids.append(cid)
    for s in (payer, payee):
        assert list(s.protocol.book.ends) == ids[2:]
        assert [e.channel_id for e in s.of(Released)] == ids[:2]


def test_an_ack_from_another_peer_or_for_an_open_not_waiting_is_ignored() -> None:
    payer, payee, _ = pair()
    cid = open_channel(payer, payee)
    stranger = side(payer.chain)
    payer.receive(stranger, ChannelAck(cid, 0, 0, b""))
    payer.receive(stranger, ChannelRefundSigned(cid, b"x", b"y"))
    assert payer.replies == [] and payer.protocol.book.end(cid).state is State.OPEN
