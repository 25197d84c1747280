"""Runs of payments in one frame: folding on the payer, `accept_payments` on the payee."""

from __future__ import annotations

import re
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.channel import PaymentRejected
from mesh.channel.frames import ChannelAck, ChannelPay, ChannelPays
from mesh.channel.pays import MAX_PAYS, fold_payments
from mesh.channel.state import Payee, Payer
from mesh.channel.txs import PaymentSigner, sign_digest
from mesh.errors import RemoteProtocolError
from mesh.wire import Frame, decode, encode
from tests.channel.helpers import make_pair

A, B = secrets.token_bytes(32), secrets.token_bytes(32)


def pay(channel_id: bytes, seq: int) -> ChannelPay:
    return ChannelPay(channel_id, seq, seq * 10, bytes([seq % 256]) * 70)


def test_a_run_on_one_channel_becomes_one_frame_and_a_lone_payment_stays() -> None:
    ack = ChannelAck(B, 4, 40, b"sig")
    frames: list[Frame] = [pay(A, 1), pay(A, 2), pay(A, 3), ack, pay(A, 4)]
    assert fold_payments(frames) == [
        ChannelPays(A, 1, (10, 20, 30), (b"\x01" * 70, b"\x02" * 70, b"\x03" * 70)),
        ack,
        pay(A, 4),
    ]


def test_runs_break_at_another_channel_a_seq_gap_and_the_size_limit() -> None:
    frames: list[Frame] = [pay(A, 1), pay(A, 2), pay(B, 3), pay(B, 4), pay(B, 6), pay(B, 7)]
    folded = fold_payments(frames)
    assert [(f.channel_id, f.seq) for f in folded if isinstance(f, ChannelPays)] == [
        (A, 1),
        (B, 3),
        (B, 6),
    ]
    long_run: list[Frame] = [pay(A, seq) for seq in range(1, MAX_PAYS + 3)]
    sizes = [len(f.totals) for f in fold_payments(long_run) if isinstance(f, ChannelPays)]
    assert sizes == [MAX_PAYS, 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.integers(1, 6)), max_size=40))
def test_folding_keeps_every_payment_in_order(picks: list[tuple[bytes, int]]) -> None:
    frames: list[Frame] = [pay(cid, seq) for cid, seq in picks]
    unfolded: list[Frame] = []
    for frame in fold_payments(frames):
        assert len(encode(frame)) < 65_000
        if isinstance(frame, ChannelPays):
            assert len(frame.totals) >= 2
            for i, (total, sig) in enumerate(zip(frame.totals, frame.signatures, strict=True)):
                unfolded.append(ChannelPay(frame.channel_id, frame.seq + i, total, sig))
        else:
            unfolded.append(frame)
    assert unfolded == frames


def test_a_full_frame_of_payments_crosses_the_wire() -> None:
    run: list[Frame] = [
        ChannelPay(A, seq, 2**62 + seq, secrets.token_bytes(73)) for seq in range(1, MAX_PAYS + 1)
    ]
    (frame,) = fold_payments(run)
    assert decode(encode(frame)) == frame


def test_a_malformed_run_is_refused_by_the_decoder_naming_the_item() -> None:
    good = ChannelPays(A, 1, (1, 2), (b"x", b"y"))
    for bad, where in (
        (ChannelPays(A, 1, (1, True), (b"x", b"y")), "ChannelPays.totals[1]"),
        (ChannelPays(A, 1, (1, 2), (b"x", "y")), "ChannelPays.signatures[1]"),  # type: ignore[arg-type]
    ):
        with pytest.raises(RemoteProtocolError, match=re.escape(where)):
            decode(encode(bad))
    assert decode(encode(good)) == good


def signed(payer: Payer, amounts: list[int]) -> tuple[int, tuple[int, ...], tuple[bytes, ...]]:
    records = [payer.pay(amount) for amount in amounts]
    return (
        records[0].seq,
        tuple(r.total for r in records),
        tuple(r.payer_sig for r in records),
    )


def test_a_run_is_taken_whole_like_payments_one_by_one() -> None:
    payer, payee, _, _ = make_pair()
    alone = Payee(payee.record(), payee._key)
    seq, totals, sigs = signed(payer, [5, 1, 7])
    assert payee.accept_payments(seq, totals, sigs) == (3, None)
    for i, (total, sig) in enumerate(zip(totals, sigs, strict=True)):
        alone.accept_payment(seq + i, total, sig)
    assert payee.record() == alone.record()
    assert (payee.record().seq, payee.record().total) == (3, 13)
    # The latest payment again (what a payer resends after a reconnect): a duplicate.
    assert payee.accept_payments(3, totals[2:], sigs[2:]) == (0, None)
    assert payee.record() == alone.record()


def test_payments_before_a_bad_one_stand_and_the_rest_change_nothing() -> None:
    payer, payee, _, _ = make_pair()
    seq, totals, sigs = signed(payer, [1, 1, 1, 1])
    forged = sign_digest(make_pair()[0]._key, PaymentSigner(payer.terms).sighash(totals[2]))
    taken, rejection = payee.accept_payments(seq, totals, (sigs[0], sigs[1], forged, sigs[3]))
    assert taken == 2
    assert isinstance(rejection, PaymentRejected) and rejection.code == "bad-signature"
    assert "seq 3" in rejection.reason
    assert (payee.record().seq, payee.record().total, payee.record().payer_sig) == (2, 2, sigs[1])


def test_an_empty_or_ragged_run_is_refused() -> None:
    payer, payee, _, _ = make_pair()
    before = payee.record()
    seq, totals, sigs = signed(payer, [1, 1])
    for bad in ((seq, (), ()), (seq, totals, sigs[:1]), (seq, totals[:1], sigs)):
        taken, rejection = payee.accept_payments(*bad)
        assert taken == 0 and rejection is not None and rejection.code == "bad-batch"
        assert payee.record() == before
