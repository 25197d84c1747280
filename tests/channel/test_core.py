"""The channel core: tx shapes, fast sighash, transition tables, payee rules."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.chain.errors import TxRejected
from mesh.channel import (
    ChannelStateError,
    PaymentRejected,
    PaymentSigner,
    State,
    Terms,
    payment_tx,
    state,
)
from mesh.channel.state import PAYEE_TABLE, PAYER_TABLE, Payee, Payer, Record, Role
from mesh.channel.txs import hash256, sign_digest
from mesh.errors import LocalProtocolError
from tests.channel.helpers import CAPACITY, CLOSE_FEE, EXPIRY, check_spends_funding, make_pair


@pytest.mark.parametrize(
    "total", [1, 2, 546, 50_000, CAPACITY - CLOSE_FEE - 1, CAPACITY - CLOSE_FEE]
)
def test_fast_sighash_matches_bsv_sdk_preimage_byte_for_byte(total: int) -> None:
    payer, _, _, _ = make_pair()
    signer = PaymentSigner(payer.terms)
    tx = payment_tx(payer.terms, total)
    assert signer.preimage(total) == tx.preimage(0)
    assert signer.sighash(total) == hash256(tx.preimage(0))


def test_fast_sighash_refuses_totals_no_payment_can_have() -> None:
    payer, _, _, _ = make_pair()
    signer = PaymentSigner(payer.terms)
    for total in (0, -1, CAPACITY - CLOSE_FEE + 1):
        with pytest.raises(LocalProtocolError, match="outside"):
            signer.sighash(total)


def test_payment_outputs_follow_the_terms() -> None:
    payer, _, _, _ = make_pair()
    terms = payer.terms
    assert terms.payment_outputs(10) == [
        (terms.payee_payout, 10),
        (terms.payer_payout, CAPACITY - CLOSE_FEE - 10),
    ]
    # Paying everything leaves no payer output (no zero-value output on chain).
    assert terms.payment_outputs(terms.max_total) == [(terms.payee_payout, terms.max_total)]


def test_close_tx_passes_the_interpreter_and_pays_to_the_satoshi() -> None:
    payer, payee, _, _ = make_pair()
    for amount in (5, 10, 1000, 3):
        payee.accept_payment(*_frame(payer.pay(amount)))
    tx = check_spends_funding(payee.closing_tx(), payee.terms)
    assert [o.satoshis for o in tx.outputs] == [1018, CAPACITY - CLOSE_FEE - 1018]
    assert sum(o.satoshis for o in tx.outputs) == CAPACITY - CLOSE_FEE


def test_refund_passes_the_interpreter_and_is_time_locked() -> None:
    payer, _, _, _ = make_pair()
    tx = check_spends_funding(payer.signed_refund(), payer.terms)
    assert tx.locktime == EXPIRY and tx.inputs[0].sequence == 0xFFFFFFFE
    assert tx.outputs[0].locking_script.serialize() == payer.terms.payer_payout


def test_close_with_a_forged_payer_signature_fails_the_interpreter() -> None:
    payer, payee, _, _ = make_pair()
    payee.accept_payment(*_frame(payer.pay(100)))
    # The payee tries to close for more than the payer signed.
    forged = Payee(dataclasses.replace(payee.record(), total=5_000), payee._key)
    with pytest.raises(TxRejected, match="script"):
        check_spends_funding(forged.closing_tx(), payee.terms)


def _frame(record: Record) -> tuple[int, int, bytes]:
    return record.seq, record.total, record.payer_sig


def test_payee_accepts_in_order_and_duplicates_are_harmless() -> None:
    payer, payee, _, _ = make_pair()
    first = _frame(payer.pay(10))
    assert payee.accept_payment(*first) is True
    assert payee.record().total == 10
    assert payee.accept_payment(*first) is False  # exact duplicate: no change
    second = _frame(payer.pay(10))
    assert payee.accept_payment(*second) is True
    assert payee.record().seq == 2


def rejected(payee: Payee, frame: tuple[int, int, bytes], code: str) -> None:
    """Refused alone (`ChannelPay`) and as a run of one (`ChannelPays`), unchanged."""
    before = payee.record()
    with pytest.raises(PaymentRejected) as info:
        payee.accept_payment(*frame)
    assert info.value.code == code
    assert payee.record() == before  # no state change
    seq, total, sig = frame
    fresh, rejection = payee.accept_payments(seq, (total,), (sig,))
    assert (fresh, rejection and rejection.code) == (0, code)
    assert payee.record() == before


def test_total_that_does_not_grow_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    payee.accept_payment(*_frame(payer.pay(100)))
    signer = PaymentSigner(payer.terms)
    sig = sign_digest(payer._key, signer.sighash(100))
    rejected(payee, (2, 100, sig), "total-not-growing")
    sig = sign_digest(payer._key, signer.sighash(50))
    rejected(payee, (3, 50, sig), "total-not-growing")


def test_reused_seq_with_another_amount_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    payee.accept_payment(*_frame(payer.pay(100)))
    sig = sign_digest(payer._key, PaymentSigner(payer.terms).sighash(200))
    rejected(payee, (1, 200, sig), "seq-reused")


def test_older_seq_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    payee.accept_payment(*_frame(payer.pay(100)))
    payee.accept_payment(*_frame(payer.pay(100)))
    sig = sign_digest(payer._key, PaymentSigner(payer.terms).sighash(300))
    rejected(payee, (1, 300, sig), "stale-seq")


def test_wrong_signature_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    seq, total, sig = _frame(payer.pay(100))
    other_sig = sign_digest(make_pair()[0]._key, PaymentSigner(payer.terms).sighash(total))
    rejected(payee, (seq, total, other_sig), "bad-signature")
    rejected(payee, (seq, total, sig[:-1]), "bad-signature")
    rejected(payee, (seq, total, b""), "bad-signature")


def test_malleated_high_s_signature_is_rejected() -> None:
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    payer, payee, _, _ = make_pair()
    seq, total, sig = _frame(payer.pay(100))
    r_len = sig[3]
    r = sig[4 : 4 + r_len]
    s = int.from_bytes(sig[6 + r_len :], "big")
    high = (order - s).to_bytes(33, "big").lstrip(b"\x00")
    if high[0] & 0x80:
        high = b"\x00" + high
    body = b"\x02" + bytes([len(r)]) + r + b"\x02" + bytes([len(high)]) + high
    rejected(payee, (seq, total, b"\x30" + bytes([len(body)]) + body), "bad-signature")


def test_signature_over_other_outputs_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    # A signature over a tx that pays the payee's share to someone else.
    stolen_terms = dataclasses.replace(payer.terms, payee_payout=payer.terms.payer_payout)
    sig = sign_digest(payer._key, PaymentSigner(stolen_terms).sighash(100))
    rejected(payee, (1, 100, sig), "bad-signature")


def test_fee_different_from_the_agreed_one_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    other_fee = dataclasses.replace(payer.terms, close_fee=CLOSE_FEE + 500)
    sig = sign_digest(payer._key, PaymentSigner(other_fee).sighash(100))
    rejected(payee, (1, 100, sig), "bad-signature")


def test_amount_above_capacity_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    rejected(payee, (1, CAPACITY - CLOSE_FEE + 1, b"\x30"), "above-capacity")
    with pytest.raises(Exception, match="exceed"):
        payer.pay(CAPACITY)


def test_payment_before_funding_or_while_closing_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    frame = _frame(payer.pay(10))
    unfunded = Payee(dataclasses.replace(payee.record(), state=State.REFUND_SIGNED), payee._key)
    rejected(unfunded, frame, "not-open")
    payee.event("close")
    rejected(payee, frame, "not-open")


def test_release_of_an_unpaid_channel_passes_the_interpreter_and_returns_all_but_the_fee() -> None:
    payer, payee, _, _ = make_pair()
    signature = payer.release_signature()
    assert payer.release_signature() == signature  # deterministic: resent as is
    record = payee.accept_release(signature)
    assert (record.state, record.seq, record.total) == (State.CLOSING, 0, 0)
    tx = check_spends_funding(payee.closing_tx(), payee.terms)
    assert tx.locktime == 0 and tx.inputs[0].sequence == 0xFFFFFFFF
    assert [(o.locking_script.serialize(), o.satoshis) for o in tx.outputs] == [
        (payer.terms.payer_payout, CAPACITY - CLOSE_FEE)
    ]
    # Closing: no payment is taken any more.
    rejected(payee, _frame(payer.pay(10)), "not-open")


def released(payee: Payee, signature: bytes, code: str) -> None:
    before = payee.record()
    with pytest.raises(PaymentRejected) as info:
        payee.accept_release(signature)
    assert info.value.code == code
    assert payee.record() == before  # no state change


def test_release_of_a_paid_channel_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    unpaid_payer, _, _, _ = make_pair()
    signature = payer.release_signature()
    payee.accept_payment(*_frame(payer.pay(10)))
    released(payee, signature, "paid")
    with pytest.raises(Exception, match="close it instead"):
        payer.release_signature()
    assert unpaid_payer.release_signature()


def test_release_with_a_bad_signature_or_off_an_open_channel_is_rejected() -> None:
    payer, payee, _, _ = make_pair()
    other, _, _, _ = make_pair()
    released(payee, other.release_signature(), "bad-signature")  # another channel's
    payment_sig = sign_digest(payer._key, PaymentSigner(payer.terms).sighash(1))
    released(payee, payment_sig, "bad-signature")  # a signature over other outputs
    released(payee, b"", "bad-signature")
    unfunded = Payee(dataclasses.replace(payee.record(), state=State.REFUND_SIGNED), payee._key)
    released(unfunded, payer.release_signature(), "not-open")
    payee.accept_release(payer.release_signature())
    released(payee, payer.release_signature(), "not-open")  # already closing


def test_an_unpaid_channel_without_a_release_has_no_close_tx() -> None:
    _, payee, _, _ = make_pair()
    with pytest.raises(Exception, match="no release"):
        payee.closing_tx()


def test_transition_tables_reject_illegal_events() -> None:
    payer, payee, _, _ = make_pair()
    with pytest.raises(ChannelStateError):
        payer.event("funding-accepted")  # already open
    with pytest.raises(ChannelStateError):
        payee.event("opened")  # payee never takes this event
    payee.event("close")
    payee.mark_closed("ab" * 32, payee.record().total)
    for event in ("close", "refunded", "funding-accepted"):
        with pytest.raises(ChannelStateError):
            payee.event(event)


def test_tables_only_leave_final_states_never() -> None:
    for table in (PAYER_TABLE, PAYEE_TABLE):
        for source, _ in table:
            assert source not in {State.CLOSED, State.REFUNDED, State.FAILED}


def test_a_refused_funding_ends_only_in_the_refund_or_a_close() -> None:
    """A payer's funding the payee refused: kept with the reason, never opened or paid
    on, and settled by the refund (or by the payee's close, if it had opened after all)."""
    payer, _, _, _ = make_pair()
    with pytest.raises(ChannelStateError):
        payer.refuse_funding("funding: no")  # open: the payee took the funding
    funded = dataclasses.replace(payer.record(), state=State.FUNDED)
    end = Payer(funded, payer._key)
    record = end.refuse_funding("funding: missing-input")
    assert (record.state, record.refused) == (State.REFUSED, "funding: missing-input")
    for event in ("opened", "close", "funding-refused"):
        with pytest.raises(ChannelStateError):
            end.event(event)
    with pytest.raises(ChannelStateError):
        end.pay(1)
    refunded = end.mark_refunded("cd" * 32)
    assert (refunded.state, refunded.refused, refunded.paid_on_chain) == (
        State.REFUNDED,
        "funding: missing-input",
        0,
    )
    assert Payer(record, payer._key).mark_closed("ef" * 32, None).state is State.CLOSED


def test_a_bad_refund_signature_stops_the_payer() -> None:
    payer, _, _, _ = make_pair()
    fresh = Payer(Record(Role.PAYER, State.PROPOSED, payer.terms, "peer"), payer._key)
    with pytest.raises(PaymentRejected, match="refund"):
        fresh.accept_refund_signature(b"\x30\x06\x02\x01\x01\x02\x01\x01")
    assert fresh.state is State.PROPOSED


def test_terms_validate_their_numbers() -> None:
    payer, _, _, _ = make_pair()
    for bad in (
        {"capacity": 0},
        {"close_fee": CAPACITY},
        {"expiry_height": 600_000_000},
        {"channel_id": b"short"},
        {"payee_payout": b"\x51"},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(payer.terms, **bad)  # type: ignore[arg-type]
    assert isinstance(payer.terms, Terms)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2_000), min_size=1, max_size=30), st.data())
def test_payee_total_is_the_last_verified_total(amounts: list[int], data: st.DataObject) -> None:
    """Whatever subset of payments arrives (in order), the payee holds a valid close."""
    payer, payee, _, _ = make_pair()
    frames = []
    for amount in amounts:
        if payer.remaining() < amount:
            break
        frames.append(_frame(payer.pay(amount)))
    delivered = [f for f in frames if data.draw(st.booleans())]
    for frame in delivered:
        payee.accept_payment(*frame)
    expected = delivered[-1][1] if delivered else 0
    assert payee.record().total == expected
    assert payer.record().total >= expected
    if expected:
        tx = check_spends_funding(payee.closing_tx(), payee.terms)
        assert tx.outputs[0].satoshis == expected


def test_record_fast_copies_equal_dataclasses_replace() -> None:
    """`with_payment`/`with_ack` spell out every field: a field added to `Record`
    and forgotten there fails here."""
    payer, *_ = make_pair()
    record = dataclasses.replace(
        payer.record(), acked_seq=3, acked_total=7, close_txid="ab", paid_on_chain=5, refused="r"
    )
    assert record.with_payment(9, 11, b"sig") == dataclasses.replace(
        record, seq=9, total=11, payer_sig=b"sig"
    )
    assert record.with_ack(5, 6) == dataclasses.replace(record, acked_seq=5, acked_total=6)
    assert len(dataclasses.fields(Record)) == 13


def test_a_payer_that_lost_its_latest_states_takes_back_the_one_the_payee_acks() -> None:
    """After a power cut the payer restarts from an older record and signs again from
    there; the payee's ack carries the payer's own signature on what it holds."""
    payer, payee, _, _ = make_pair()
    for _ in range(5):
        payee.accept_payment(*_frame(payer.pay(100)))
    older = Payer(payer.record().with_payment(2, 200, b"lost").with_ack(2, 200), payer._key)
    resigned = older.pay(50)  # seq 3, total 250: the payee refuses it (stale)
    with pytest.raises(PaymentRejected):
        payee.accept_payment(*_frame(resigned))
    held = payee.record()
    taken = older.accept_ack(held.seq, held.total, held.payer_sig)
    assert (taken.seq, taken.total, taken.acked_total) == (5, 500, 500)
    assert payee.accept_payment(*_frame(older.pay(1))) is True
    assert check_spends_funding(payee.closing_tx(), payee.terms).outputs[0].satoshis == 501


def test_a_state_taken_back_at_a_lower_seq_keeps_the_payer_seq_growing() -> None:
    payer, payee, _, _ = make_pair()
    payee.accept_payment(*_frame(payer.pay(100)))  # the payee holds seq 1, total 100
    older = Payer(payer.record().with_payment(0, 0, b""), payer._key)
    for _ in range(3):
        older.pay(10)  # seq 3, total 30: lower than what the payee holds
    held = payee.record()
    taken = older.accept_ack(held.seq, held.total, held.payer_sig)
    assert (taken.seq, taken.total) == (4, 100)  # a seq above both ends' own
    assert payee.accept_payment(*_frame(older.pay(1))) is True


def test_an_ack_of_a_state_the_payer_never_signed_is_refused() -> None:
    payer, payee, _, _ = make_pair()
    payee.accept_payment(*_frame(payer.pay(100)))
    before = payer.record()
    stranger = sign_digest(make_pair()[0]._key, PaymentSigner(payer.terms).sighash(900))
    ours_for_100 = before.payer_sig
    for seq, total, sig in (
        (2, 900, stranger),  # another key
        (2, 900, ours_for_100),  # our signature, but on another total
        (1, 90, ours_for_100),  # our seq with another total
        (2, CAPACITY, ours_for_100),  # beyond the capacity
    ):
        with pytest.raises(PaymentRejected) as info:
            payer.accept_ack(seq, total, sig)
        assert info.value.code == "bad-ack"
        assert payer.record() == before


def test_a_payment_signed_ahead_is_the_one_pay_would_sign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payer, payee, _, _ = make_pair()
    first = payer.pay(5)
    twin = Payer(first, payer._key)  # the same payer, never signing ahead
    payer.presign(5)
    signs: list[bytes] = []
    real_sign = state.sign_digest
    monkeypatch.setattr(state, "sign_digest", lambda key, d: signs.append(d) or real_sign(key, d))
    ahead = payer.pay(5)
    assert signs == []  # taken from the signature made ahead
    assert ahead == twin.pay(5)  # RFC 6979: the very bytes `pay` would have signed
    assert len(signs) == 1  # (the twin's)
    assert payee.accept_payments(1, (5, 10), (first.payer_sig, ahead.payer_sig)) == (2, None)


def test_a_payment_of_another_amount_is_signed_afresh() -> None:
    payer, payee, _, _ = make_pair()
    payer.presign(5)
    record = payer.pay(7)
    assert payee.accept_payment(record.seq, 7, record.payer_sig)
    payer.presign(CAPACITY)  # beyond the channel: nothing signed ahead, pay still refuses
    with pytest.raises(LocalProtocolError):
        payer.pay(CAPACITY)
    payer.presign(3)
    payer.pay(2)  # the one signed ahead (for 10) is dropped, not kept for later
    assert payer._ahead is None
