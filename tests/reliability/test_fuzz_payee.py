"""Fuzzing the payee's payment verifier (`Payee.accept_payment`, and `accept_payments`
beside it) against an oracle.

Each example is a sequence of payments offered to a fresh payee of one funded, open
channel: honest ones, replays of earlier ones, signatures for another total, another
fee or by another key, high-S twins, bit-flipped, truncated or padded DER, arbitrary
integers (negative, zero, beyond 2**63, beyond the capacity) and arbitrary bytes, and
now and then a close that makes every later payment `not-open`.

The oracle is independent of the verifier: a signature is good exactly when bsv-sdk's
script interpreter accepts the close transaction the payee would broadcast with it
(strict DER, low S, NULLFAIL, the 2-of-2), and the other rules are the ones
`mesh.channel.state` documents, applied in order to a model of the channel. Each
payment must then be accepted, recognised as a duplicate, or refused with exactly
the oracle's code, and a refusal must leave the record untouched. So the payee never
holds a signature it cannot close with, and never refuses one it could.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import pytest
from bsv.keys import PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from mesh.channel import Payee, PaymentRejected, Record, Role, State, Terms, payment_tx
from mesh.channel.keys import derive_channel_keys
from mesh.channel.state import MAX_SEQ
from mesh.channel.txs import PaymentSigner, sighash_of, sign_digest, two_of_two_unlock
from tests.channel.helpers import check_spends_funding, make_pair
from tests.reliability.budget import CI_EXAMPLES, SLOW_EXAMPLES, fuzz_settings

CURVE_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
CAPACITY = 5_000
CLOSE_FEE = 50
KINDS = (
    *("honest", "honest", "replay", "other-total", "other-fee", "other-key"),
    *("high-s", "bitflip", "truncate", "pad", "raw", "huge-seq"),
)


@dataclass(frozen=True)
class Channel:
    """One open channel: the payee's starting record and both ends' channel keys."""

    terms: Terms
    base: Record
    payer_key: PrivateKey
    payee_key: PrivateKey
    stranger_key: PrivateKey


@functools.cache
def channel() -> Channel:
    """Built once: every example starts a fresh payee from the same open record."""
    _, payee, buyer, seller = make_pair(capacity=CAPACITY, close_fee=CLOSE_FEE)
    terms = payee.terms
    payer_keys = derive_channel_keys(buyer, seller.public_key, terms.channel_id, Role.PAYER)
    payee_keys = derive_channel_keys(seller, buyer.public_key, terms.channel_id, Role.PAYEE)
    return Channel(terms, payee.record(), payer_keys.own, payee_keys.own, PrivateKey())


@functools.cache
def signer(close_fee: int) -> PaymentSigner:
    return PaymentSigner(replace(channel().terms, close_fee=close_fee))


def sign(key: PrivateKey, total: int, close_fee: int = CLOSE_FEE) -> bytes:
    """A payment signature for `total` (over `close_fee`), or junk if no tx has it."""
    if not 1 <= total <= CAPACITY - close_fee:
        return b"\x30\x06\x02\x01\x01\x02\x01\x01"
    return sign_digest(key, signer(close_fee).sighash(total))


def high_s(signature: bytes) -> bytes:
    """The same ECDSA signature with s replaced by n - s, re-encoded in DER."""
    r_len = signature[3]
    r = signature[4 : 4 + r_len]
    s = int.from_bytes(signature[6 + r_len :], "big")

    def der_int(value: bytes) -> bytes:
        value = value.lstrip(b"\x00") or b"\x00"
        if value[0] & 0x80:
            value = b"\x00" + value
        return b"\x02" + bytes([len(value)]) + value

    body = der_int(r) + der_int((CURVE_N - s).to_bytes(33, "big"))
    return b"\x30" + bytes([len(body)]) + body


@functools.cache
def closable(total: int, signature: bytes) -> bool:
    """The oracle: does bsv-sdk's interpreter accept the close tx with this signature?"""
    c = channel()
    if not 1 <= total <= c.terms.max_total:
        return False
    tx = payment_tx(c.terms, total)
    payee_sig = sign_digest(c.payee_key, sighash_of(tx))
    try:
        unlock = two_of_two_unlock(signature, payee_sig)
    except Exception:  # the signature is too long to push: no close tx carries it
        return False
    raw: bytes = payment_tx(c.terms, total, unlock).serialize()
    try:
        check_spends_funding(raw, c.terms)
    except Exception:
        return False
    return True


@st.composite
def payments(
    draw: st.DrawFn, seq: int, total: int, history: list[tuple[int, int, bytes]]
) -> tuple[str, int, int, bytes]:
    """One offered payment, given the payee's current (seq, total) and what was sent."""
    c = channel()
    kind = draw(st.sampled_from(KINDS))
    new_seq = seq + draw(st.sampled_from([1, 1, 1, 1, 2, 3, 0, -1]))
    new_total = total + draw(st.one_of(st.integers(-3, 60), st.integers(-(10**4), 10**4)))
    signature = sign(c.payer_key, new_total)
    if kind == "replay" and history:
        return (kind, *draw(st.sampled_from(history)))
    if kind == "other-total":
        signature = sign(c.payer_key, new_total + draw(st.integers(1, 5)))
    elif kind == "other-fee":
        signature = sign(c.payer_key, new_total, CLOSE_FEE + draw(st.integers(-CLOSE_FEE, 20)))
    elif kind == "other-key":
        signature = sign(draw(st.sampled_from([c.payee_key, c.stranger_key])), new_total)
    elif kind == "high-s" and signature[0] == 0x30:
        signature = high_s(signature)
    elif kind == "bitflip":
        buf = bytearray(signature)
        buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
        signature = bytes(buf)
    elif kind == "truncate":
        signature = signature[: draw(st.integers(0, len(signature) - 1))]
    elif kind == "pad":
        signature += draw(st.binary(min_size=1, max_size=4))
    elif kind == "raw":
        new_seq = draw(st.integers(-(2**64), 2**64))
        new_total = draw(st.integers(-(2**64), 2**64))
        signature = draw(st.binary(max_size=80))
    elif kind == "huge-seq":
        new_seq = draw(st.integers(MAX_SEQ - 2, 2**64))
    return kind, new_seq, new_total, signature


def expected(record: Record, seq: int, total: int, signature: bytes) -> str:
    """The model: "fresh", "duplicate" or the rejection code, in the documented order."""
    if record.state is not State.OPEN:
        return "not-open"
    if not 0 < seq <= MAX_SEQ:
        return "bad-seq"
    if seq == record.seq and record.seq > 0:
        if total == record.total and signature == record.payer_sig:
            return "duplicate"
        return "seq-reused"
    if seq < record.seq:
        return "stale-seq"
    if total <= record.total:
        return "total-not-growing"
    if total > channel().terms.max_total:
        return "above-capacity"
    return "fresh" if closable(total, signature) else "bad-signature"


@dataclass
class Tally:
    examples: int = 0
    payments: int = 0
    outcomes: dict[str, int] | None = None


def run_payee_fuzz(examples: int) -> Tally:
    tally = Tally(outcomes={})
    assert tally.outcomes is not None
    outcomes = tally.outcomes

    @fuzz_settings(examples)
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        c = channel()
        payee = Payee(c.base, c.payee_key)
        twin = Payee(c.base, c.payee_key)  # takes each payment as a `ChannelPays` of one
        history: list[tuple[int, int, bytes]] = []
        tally.examples += 1
        for _ in range(data.draw(st.integers(1, 12))):
            if data.draw(st.integers(0, 60)) == 0 and payee.state is State.OPEN:
                payee.event("close")
                twin.event("close")
            before = payee.record()
            kind, seq, total, signature = data.draw(payments(before.seq, before.total, history))
            want = expected(before, seq, total, signature)
            try:
                fresh = payee.accept_payment(seq, total, signature)
            except PaymentRejected as exc:
                got = exc.code
                assert payee.record() == before, "a refusal changed the channel"
            else:
                got = "fresh" if fresh else "duplicate"
                if fresh:
                    assert payee.record().total == total and payee.record().seq == seq
                else:
                    assert payee.record() == before
            assert got == want, f"{kind}: seq={seq} total={total} sig={signature.hex()}"
            taken, rejection = twin.accept_payments(seq, (total,), (signature,))
            got_twin = rejection.code if rejection else ("fresh" if taken else "duplicate")
            assert got_twin == want and twin.record() == payee.record()
            tally.payments += 1
            outcomes[f"{kind}:{got}"] = outcomes.get(f"{kind}:{got}", 0) + 1
            history.append((seq, total, signature))
        if payee.record().total > 0:  # whatever happened, the payee can still close
            assert closable(payee.record().total, payee.record().payer_sig)

    fuzz()
    print(f"\npayee verifier: {tally.examples} examples, {tally.payments} payments {outcomes}")
    return tally


def test_payee_accepts_exactly_what_the_interpreter_would_close() -> None:
    """1 000 sequences (several thousand payments): every verdict matches the oracle,
    refusals change nothing, and honest payments, duplicates and each refusal code
    actually occur."""
    tally = run_payee_fuzz(CI_EXAMPLES)
    assert tally.outcomes is not None
    codes = {key.split(":")[1] for key in tally.outcomes}
    assert {"fresh", "bad-signature", "stale-seq", "total-not-growing", "bad-seq"} <= codes
    assert tally.payments > 3 * CI_EXAMPLES


@pytest.mark.slow
def test_payee_fuzz_slow() -> None:
    """The same over 100 000 sequences."""
    tally = run_payee_fuzz(SLOW_EXAMPLES)
    assert tally.examples >= SLOW_EXAMPLES
