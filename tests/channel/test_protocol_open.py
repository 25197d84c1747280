"""The rules of opening a channel, without an event loop: what the shell only knows
(storage, networks, the application's policy, a chain that does not answer) comes in
as facts and the protocol decides; a payer's open expects one answer after another,
gives up at its deadline, and keeps a refused funding refused.

Two `ChannelProtocol`s joined in memory (`tests.channel.sansio`). The same
conversations over real sessions are `test_manager.py` and `test_refusal.py`.
"""

from __future__ import annotations

import secrets

import pytest

from mesh.chain.errors import ChainUnavailable, TxRejected
from mesh.channel.admission import AdmissionLimits
from mesh.channel.config import (
    ChannelConfig,
    ChannelFailure,
    ChannelRefused,
    FundingRefused,
    Standing,
)
from mesh.channel.effects import (
    AbandonFunding,
    BroadcastFunding,
    BroadcastRefund,
    CheckAdmit,
    CheckOffer,
    Flush,
    HangUp,
    OpenEnded,
    ReleaseCoins,
    Send,
)
from mesh.channel.fees import ChannelFees
from mesh.channel.frames import (
    ChannelAck,
    ChannelError,
    ChannelFunded,
    ChannelOpen,
    ChannelRefundSigned,
)
from mesh.channel.opening import Opening
from mesh.channel.state import ChannelStateError, State
from mesh.channel.txs import p2pkh_for_key
from mesh.identity import Identity
from tests.channel.sansio import FakeChain, Side, converse, deliver, propose, side

ONE_STRIKE = ChannelConfig(admission=AdmissionLimits(max_strikes=1))
OURS, THEIRS = "aa" * 32, "bb" * 32


def pair(config: ChannelConfig = ONE_STRIKE) -> tuple[Side, Side]:
    chain = FakeChain()
    return side(chain, config), side(chain, config)


def errors(s: Side) -> list[str]:
    return [e.frame.code for e in s.of(Send) if isinstance(e.frame, ChannelError)]


def an_offer() -> ChannelOpen:
    """A fresh, acceptable offer of 10 000 sat until height 200."""
    payout = p2pkh_for_key(Identity.generate().public_key)
    return ChannelOpen(
        secrets.token_bytes(32), "svc", 10_000, 10, 10, 200, secrets.token_hex(32), 0, payout
    )


def refused_before_any_lookup(payee: Side) -> bool:
    """Nothing held, nothing signed, no question for the chain or the store."""
    return not payee.protocol.book.ends and not payee.of(CheckOffer) and not payee.of(Flush)


# ---------------------------------------------------------------- the payee's facts


def test_a_payee_whose_storage_fails_refuses_offers_without_a_strike() -> None:
    payer, payee = pair()
    payee.standing = Standing(storage_fault="channel-records: disk full")
    asked: list[str] = []

    def admit(peer_id: str, service: str) -> tuple[str, str] | None:
        asked.append(service)
        return None

    payee.admit = admit
    for _ in range(2):
        payee.receive(payer, an_offer())
    assert errors(payee) == ["storage", "storage"]
    [first, _] = [e.frame for e in payee.of(Send) if isinstance(e.frame, ChannelError)]
    assert first.reason == "storage fault here: channel-records: disk full"
    assert not payee.of(HangUp)  # not the peer's fault: one strike would have hung up
    assert refused_before_any_lookup(payee) and asked == []  # nor is the policy asked


def test_a_peer_of_another_network_is_refused_with_a_strike() -> None:
    payer, payee = pair()
    payee.standing = Standing(peer_network=THEIRS, network=OURS)
    payee.receive(payer, an_offer())
    assert errors(payee) == ["network"]
    assert payee.of(HangUp) == [HangUp(payer.peer_id, "repeated channel violations")]
    assert refused_before_any_lookup(payee)


@pytest.mark.parametrize("standing", [Standing(), Standing(peer_network=OURS, network=OURS)])
def test_a_peer_of_our_network_or_of_none_said_is_heard(standing: Standing) -> None:
    payer, payee = pair()
    payee.standing = standing
    payee.receive(payer, an_offer())
    assert errors(payee) == [] and len(payee.of(CheckOffer)) == 1


def test_the_applications_refusal_is_passed_on_without_a_strike() -> None:
    payer, payee = pair()
    asked: list[tuple[str, str]] = []

    def admit(peer_id: str, service: str) -> tuple[str, str] | None:
        asked.append((peer_id, service))
        return "proof-required", f"{service}: asked for a certificate"

    payee.admit = admit
    cid = propose(payer, payee)
    ended = converse(payer, payee, cid)
    assert asked == [(payer.peer_id, "svc")] and len(payee.of(CheckAdmit)) == 1
    assert errors(payee) == ["proof-required"] and not payee.of(HangUp)
    assert refused_before_any_lookup(payee)
    # The payer is told the payee's rule (its buyer asks again once it proved it).
    assert isinstance(ended.failure, ChannelRefused) and ended.failure.code == "proof-required"
    assert payer.of(ReleaseCoins) == [ReleaseCoins(cid)] and not payer.protocol.book.ends


def test_a_chain_that_does_not_answer_an_offer_is_no_refusal_and_no_strike() -> None:
    payer, payee = pair()
    payee.chain_down = "test: no answer"
    payee.receive(payer, an_offer())
    assert errors(payee) == ["chain-unavailable"]
    assert not payee.of(HangUp)  # one strike would have hung up
    assert not payee.protocol.book.ends
    payee.chain_down = ""
    payee.receive(payer, an_offer())  # offered again, considered
    assert errors(payee) == ["chain-unavailable"] and len(payee.of(Send)) == 2


# ---------------------------------------------------------------- the payer's checks


def test_a_payer_opens_nothing_while_its_storage_fails_or_to_another_network() -> None:
    payer, payee = pair()
    opening, peer = payer.protocol.opening, payee.peer_id
    failure = opening.refusal(peer, Standing(storage_fault="channel-records: disk full"))
    assert str(failure) == "storage fault: channel-records: disk full"
    failure = opening.refusal(peer, Standing(peer_network=THEIRS, network=OURS))
    assert failure is not None and str(failure).startswith(f"not opening a channel to {peer[:16]}")
    assert "network" in str(failure)
    assert opening.refusal(peer, Standing()) is None
    assert opening.refusal(peer, Standing(peer_network=OURS, network=OURS)) is None


@pytest.mark.parametrize(("capacity", "ok"), [(9, False), (10, False), (11, True)])
def test_a_capacity_must_cover_the_close_fee(capacity: int, ok: bool) -> None:
    failure = Opening.unaffordable(capacity, ChannelFees(close=10, refund=10))
    if ok:
        assert failure is None
    else:
        assert isinstance(failure, ChannelFailure)
        assert str(failure) == f"a capacity of {capacity} sat does not cover the close fee of 10"


# ---------------------------------------------------------------- the open's deadline


def test_an_open_without_the_refund_signature_fails_at_its_deadline_and_frees_its_coins() -> None:
    payer, payee = pair(ChannelConfig(open_timeout=15))
    payer.now = 100.0
    cid = propose(payer, payee)
    opening = payer.protocol.opening
    assert opening.deadline(cid) == opening.next_deadline() == 115.0
    assert opening.timed_out(cid, 114.9) == []  # not yet
    ending = opening.timed_out(cid, 115.0)
    assert ending[:-1] == [ReleaseCoins(cid)]  # nothing was recorded: the coins go back
    [ended] = ending[-1:]
    assert isinstance(ended, OpenEnded) and isinstance(ended.failure, ChannelFailure)
    assert str(ended.failure) == (
        f"opening a channel to {payee.peer_id[:16]}…: the payee sent no refund signature"
        " within 15 s"
    )
    # Over: no deadline, and a late answer is not taken for it.
    assert not opening.waits(cid) and opening.next_deadline() == float("inf")
    assert opening.timed_out(cid, 200.0) == []
    deliver(payer, payee)
    deliver(payee, payer)
    assert payer.replies == [] and opening.answered(cid, ChannelAck(cid, 0, 0, b"")) == []


def test_an_open_whose_funding_is_not_answered_keeps_it_for_the_refund() -> None:
    payer, payee = pair(ChannelConfig(open_timeout=15))
    cid = propose(payer, payee)
    opening = payer.protocol.opening
    deliver(payer, payee)
    deliver(payee, payer)
    [refund_signed] = payer.replies
    payer.run(opening.answered(cid, refund_signed))  # recorded, broadcast, announced
    assert payer.of(BroadcastFunding) and payer.protocol.book.end(cid).state is State.FUNDED
    ending = opening.timed_out(cid, 15.0)
    [ended] = ending  # the funding is on chain: nothing to free, the refund settles it
    assert isinstance(ended, OpenEnded) and ended.failure is not None
    assert "sent no answer to our funding within 15 s" in str(ended.failure)
    payer.run(ending)
    assert payer.protocol.book.end(cid).state is State.FUNDED
    # The payee may still have it: the funding is offered again on the next session.
    resent = payer.protocol.peer_connected(payee.peer_id)
    assert resent == [Send(payee.peer_id, ChannelFunded(cid, payer.protocol.book.funding[cid]))]


def test_a_funding_recorded_but_never_broadcast_is_abandoned() -> None:
    """The deadline (or a broadcast the chain refused) comes between recording the
    funding and broadcasting it: the channel fails and the wallet gets its inputs back."""
    for end_it in ("timeout", "failed"):
        payer, payee = pair(ChannelConfig(open_timeout=15))
        cid = propose(payer, payee)
        opening = payer.protocol.opening
        deliver(payer, payee)
        deliver(payee, payer)
        effects = opening.answered(cid, payer.replies[0])
        assert isinstance(effects[-1], BroadcastFunding)  # (not done)
        assert payer.protocol.book.end(cid).state is State.REFUND_SIGNED
        if end_it == "timeout":
            ending = opening.timed_out(cid, 15.0)
        else:
            ending = opening.failed(cid, "double-spend: input spent")
        txid = payer.protocol.book.end(cid).terms.funding_txid
        assert ending[:-1] == [Flush(cid), AbandonFunding(txid)]
        assert payer.protocol.book.end(cid).state is State.FAILED
        ended = ending[-1]
        assert isinstance(ended, OpenEnded) and type(ended.failure) is ChannelFailure
        if end_it == "failed":
            assert str(ended.failure).endswith(": double-spend: input spent")


def test_the_answers_are_taken_in_order() -> None:
    """An ack before the refund signature is no refund signature: the open ends."""
    payer, payee = pair()
    cid = propose(payer, payee)
    ending = payer.protocol.opening.answered(cid, ChannelAck(cid, 0, 0, b""))
    ended = ending[-1]
    assert isinstance(ended, OpenEnded) and type(ended.failure) is ChannelFailure
    assert "payee refused the channel: ChannelAck" in str(ended.failure)
    assert ending[:-1] == [ReleaseCoins(cid)]


def test_a_bad_refund_signature_ends_the_open_before_anything_is_recorded() -> None:
    payer, payee = pair()
    cid = propose(payer, payee)
    deliver(payer, payee)
    deliver(payee, payer)
    [good] = payer.replies
    assert isinstance(good, ChannelRefundSigned)
    forged = ChannelRefundSigned(cid, b"\x30" * 70, good.payee_payout)
    ending = payer.protocol.opening.answered(cid, forged)
    ended = ending[-1]
    assert isinstance(ended, OpenEnded) and ended.failure is not None
    assert "bad-refund-signature" in str(ended.failure)
    assert ending[:-1] == [ReleaseCoins(cid)] and not payer.protocol.book.ends


# ---------------------------------------------------------------- a refused funding


class Refusing(FakeChain):
    """A payee's chain view that has never seen the payer's coins."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def broadcast(self, raw: bytes) -> str:
        raise self.error


def test_a_refused_funding_is_recorded_refused_never_offered_again_and_refunded() -> None:
    chain = FakeChain()
    payer = side(chain)
    payee = side(Refusing(TxRejected("missing-input", "unknown input")))
    cid = propose(payer, payee)
    ended = converse(payer, payee, cid)
    assert isinstance(ended.failure, FundingRefused)
    assert "refused the funding: funding: " in str(ended.failure)
    assert "missing-input" in str(ended.failure)
    end = payer.protocol.book.end(cid)
    record = end.record()
    assert record.state is State.REFUSED and record.refused.startswith("funding: ")
    # Never offered again, nor paid on, nor closed: the payee never held it open.
    assert payer.protocol.peer_connected(payee.peer_id) == []
    with pytest.raises(ChannelStateError):
        payer.protocol.pay(cid, 1, staged=0)
    assert payer.protocol.close(cid) == [] and end.state is State.REFUSED
    # At the expiry the watch takes the coins back with the refund.
    expiry = record.terms.expiry_height
    payer.run(payer.protocol.settlement.watch(expiry - 1, 0))
    assert not payer.of(BroadcastRefund)
    payer.run(payer.protocol.settlement.watch(expiry, 0))
    assert len(payer.of(BroadcastRefund)) == 1
    refunded = payer.protocol.book.end(cid).record()
    assert refunded.state is State.REFUNDED and refunded.refused == record.refused


def test_a_refusal_of_a_resent_funding_is_recorded_too() -> None:
    """The first `ChannelFunded` is lost and the open gives up; the payee refuses the
    one resent on the next session, with no open waiting for its answer."""
    payer = side(FakeChain())
    payee = side(Refusing(TxRejected("missing-input", "unknown input")))
    cid = propose(payer, payee)
    opening = payer.protocol.opening
    deliver(payer, payee)
    deliver(payee, payer)
    payer.run(opening.answered(cid, payer.replies.pop()))
    payer.outbox.clear()  # the ChannelFunded is lost
    payer.run(opening.timed_out(cid, payer.protocol.config.open_timeout))
    assert payer.protocol.book.end(cid).state is State.FUNDED
    payer.run(payer.protocol.peer_connected(payee.peer_id))  # a new session: resent
    deliver(payer, payee)
    deliver(payee, payer)
    record = payer.protocol.book.end(cid).record()
    assert record.state is State.REFUSED and "missing-input" in record.refused
    assert payer.protocol.peer_connected(payee.peer_id) == []


def test_a_payee_whose_chain_does_not_answer_refuses_no_funding() -> None:
    """No verdict on the funding is no refusal: the payer offers it again on the next
    session, and the channel opens once the payee's chain answers."""
    chain = FakeChain()
    payer = side(chain)
    payee = side(chain, ONE_STRIKE)
    payee.chain = Refusing(ChainUnavailable("test: no answer"))
    cid = propose(payer, payee)
    ended = converse(payer, payee, cid)
    assert isinstance(ended.failure, ChannelFailure)
    assert not isinstance(ended.failure, FundingRefused)
    assert "did not open the channel: chain-unavailable" in str(ended.failure)
    record = payer.protocol.book.end(cid).record()
    assert (record.state, record.refused) == (State.FUNDED, "")
    assert not payee.of(HangUp)
    payee.chain = chain
    payer.run(payer.protocol.peer_connected(payee.peer_id))
    deliver(payer, payee)
    deliver(payee, payer)
    assert payer.protocol.book.end(cid).state is State.OPEN
    assert payee.protocol.book.end(cid).state is State.OPEN
