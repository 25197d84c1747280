"""Channel fees from the network's fee policy (`mesh.channel.fees`), without I/O.

The close and refund are signed at open, so their fees are fixed in the terms: the
payer offers the policy's fee for each at its largest, with headroom, and the payee
refuses fees below the policy it sees before signing anything."""

from __future__ import annotations

import pytest

from mesh.chain.rules import Policy
from mesh.chain.tx import parse_exact
from mesh.channel.admission import AdmissionLimits
from mesh.channel.config import ChannelConfig
from mesh.channel.effects import BroadcastClose, BroadcastRefund, Send
from mesh.channel.fees import (
    CLOSE_TX_MAX_SIZE,
    REFUND_TX_MAX_SIZE,
    ChannelFees,
    fee_problem,
    offered_fees,
    policy_fees,
)
from mesh.channel.frames import ChannelError, ChannelRefundSigned
from mesh.channel.state import State
from tests.channel.sansio import FakeChain, deliver, open_channel, settle_link, side


def test_the_default_policy_keeps_the_configured_floor() -> None:
    assert offered_fees(ChannelConfig(), Policy()) == ChannelFees(10, 10)


def test_a_higher_policy_is_offered_with_headroom() -> None:
    policy = Policy(fee_rate=500)  # 134 sat for the close, 117 for the refund
    assert policy_fees(policy) == ChannelFees(134, 117)
    assert offered_fees(ChannelConfig(), policy) == ChannelFees(268, 234)
    assert offered_fees(ChannelConfig(fee_headroom=1), policy) == ChannelFees(134, 117)


def test_a_policy_above_the_agents_fee_limit_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(100000 sat/kB\) needs fees of 53600/46800 sat, above"):
        offered_fees(ChannelConfig(), Policy(fee_rate=100_000))


def test_fees_below_the_policy_are_named_with_the_numbers() -> None:
    policy = Policy(fee_rate=500)
    assert fee_problem(134, 117, policy) is None
    assert fee_problem(133, 117, policy) == (
        "fee",
        "the close fee of 133 sat is below the network's policy: 134 sat for"
        f" {CLOSE_TX_MAX_SIZE} bytes at 500 sat/kB",
    )
    assert fee_problem(134, 10, policy) == (
        "fee",
        "the refund fee of 10 sat is below the network's policy: 117 sat for"
        f" {REFUND_TX_MAX_SIZE} bytes at 500 sat/kB",
    )


def test_a_payee_refuses_fees_below_its_policy_and_signs_nothing() -> None:
    stale = side(FakeChain())  # the payer's view: 1 sat/kB
    strict = ChannelConfig(admission=AdmissionLimits(max_strikes=1))
    payee = side(FakeChain(policy=Policy(fee_rate=500)), strict)
    with pytest.raises(Exception, match="below the network's policy"):
        open_channel(stale, payee)
    refusals = [e.frame for e in payee.of(Send) if isinstance(e.frame, ChannelError)]
    assert [(f.code, "close fee of 10 sat" in f.reason) for f in refusals] == [("fee", True)]
    assert not [e for e in payee.of(Send) if isinstance(e.frame, ChannelRefundSigned)]
    assert not payee.protocol.book.ends  # nothing held
    assert payee.protocol.admission.statistics(0).set_aside == 0  # a stale view: no strike


def test_the_close_and_refund_at_the_offered_fees_meet_the_policy() -> None:
    policy = Policy(fee_rate=500)
    chain = FakeChain(policy=policy)
    payer, payee = side(chain), side(chain)
    cid = open_channel(payer, payee)
    terms = payee.protocol.book.end(cid).terms
    assert (terms.close_fee, terms.refund_fee) == (268, 234)
    payer.run(payer.protocol.pay(cid, 700, staged=0)[1])
    settle_link(payer, payee)
    payer.run(payer.protocol.close(cid))
    settle_link(payer, payee)
    assert payee.protocol.book.end(cid).state is State.CLOSED
    close = next(e.raw for e in payee.log if isinstance(e, BroadcastClose))
    assert len(close) <= CLOSE_TX_MAX_SIZE
    out = sum(int(o.satoshis) for o in parse_exact(close).outputs)
    assert terms.capacity - out == terms.close_fee >= 2 * policy.required_fee(len(close))
    # A payee that vanished: the payer's refund pays the refund fee, within its bound.
    silent = side(chain)
    lost = open_channel(payer, silent, lifetime=20)
    payer.run(payer.protocol.settlement.watch(chain.height + 20, 0))
    refund = next(e.raw for e in payer.log if isinstance(e, BroadcastRefund))
    assert len(refund) <= REFUND_TX_MAX_SIZE
    lost_terms = payer.protocol.book.end(lost).terms
    out = sum(int(o.satoshis) for o in parse_exact(refund).outputs)
    assert lost_terms.capacity - out == lost_terms.refund_fee
    assert lost_terms.refund_fee >= 2 * policy.required_fee(len(refund))
    deliver(payer, silent)
