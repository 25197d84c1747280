"""Payer and payee channel state machines: transition tables, rules, no I/O.

A channel goes ``proposed -> refund-signed -> funded -> open -> closing -> closed``,
or ends ``refunded`` or ``failed``. A payer whose funding the payee refused holds the
channel ``refused`` (`Record.refused` says why): it never offers that funding again,
and its refund at the expiry takes the coins back. Allowed transitions are data
(`PAYER_TABLE`, `PAYEE_TABLE`); an event that is not in the table for the current
state is a `ChannelStateError`. The objects here hold the channel's state and check every
rule; the shell (the channel manager) persists `record()` after every call that
changes it and only then sends or acknowledges (docs/ARCHITECTURE.md §7).

The payee's checks on a payment, in order (each rejection leaves the state
untouched and names its code): ``not-open`` (not yet funded, or closing),
``bad-seq`` (outside ``1..MAX_SEQ``: the seq is not signed, and one the store cannot
hold must not reach it), ``seq-reused`` (same seq, other total), ``stale-seq``,
``total-not-growing``, ``above-capacity``, ``bad-signature`` (wrong key, malleated, or over other
outputs -- including another fee, since the payee rebuilds the outputs from the
agreed terms). Several payments may come in one frame (`accept_payments`): one
more code, ``bad-batch`` (no payment, or not one signature per total), and the payments
before a rejected one stand.

A channel nothing was paid on can be *released* instead of closed: the payer signs
`release_tx` (everything but the close fee back to it, now) and the payee co-signs
it, in place of a close. The payee keeps the payer's release signature in
``payer_sig`` with ``seq`` and ``total`` 0, and takes no payment after it (the
channel is closing). Its checks: ``not-open``, ``paid`` (a payment was taken: close
it instead), ``bad-signature``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bsv.keys import PrivateKey

from mesh.channel.txs import (
    PaymentSigner,
    Terms,
    payment_tx,
    refund_tx,
    release_tx,
    sighash_of,
    sign_digest,
    two_of_two_unlock,
)
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import verify_digest


class State(enum.Enum):
    """Where a channel stands."""

    PROPOSED = "proposed"
    REFUND_SIGNED = "refund-signed"
    FUNDED = "funded"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    REFUNDED = "refunded"
    FAILED = "failed"
    REFUSED = "refused"


class Role(enum.Enum):
    """Which end of the channel we are."""

    PAYER = "payer"
    PAYEE = "payee"


S = State
PAYER_TABLE: dict[tuple[State, str], State] = {
    (S.PROPOSED, "refund-signed"): S.REFUND_SIGNED,
    (S.PROPOSED, "fail"): S.FAILED,
    (S.REFUND_SIGNED, "funding-accepted"): S.FUNDED,
    (S.REFUND_SIGNED, "fail"): S.FAILED,
    (S.FUNDED, "opened"): S.OPEN,
    (S.FUNDED, "close"): S.CLOSING,
    (S.FUNDED, "closed"): S.CLOSED,
    (S.OPEN, "close"): S.CLOSING,
    (S.OPEN, "closed"): S.CLOSED,
    (S.CLOSING, "closed"): S.CLOSED,
    (S.FUNDED, "refunded"): S.REFUNDED,
    (S.OPEN, "refunded"): S.REFUNDED,
    (S.CLOSING, "refunded"): S.REFUNDED,
    (S.FUNDED, "funding-refused"): S.REFUSED,
    (S.REFUSED, "refunded"): S.REFUNDED,
    # The refund is refused as a double spend: the payee had opened the channel after
    # all and closed it (its refusal answered a resend it no longer knew).
    (S.REFUSED, "closed"): S.CLOSED,
}
PAYEE_TABLE: dict[tuple[State, str], State] = {
    (S.PROPOSED, "refund-signed"): S.REFUND_SIGNED,
    (S.REFUND_SIGNED, "funding-accepted"): S.OPEN,
    (S.REFUND_SIGNED, "fail"): S.FAILED,
    (S.OPEN, "close"): S.CLOSING,
    (S.OPEN, "closed"): S.CLOSED,
    (S.CLOSING, "closed"): S.CLOSED,
    (S.OPEN, "refunded"): S.REFUNDED,
    (S.CLOSING, "refunded"): S.REFUNDED,
}
TABLES = {Role.PAYER: PAYER_TABLE, Role.PAYEE: PAYEE_TABLE}
MAX_SEQ = 2**63 - 1
"""The largest payment seq: what an SQLite INTEGER (the channel store) can hold."""
FINAL_STATES = frozenset({S.CLOSED, S.REFUNDED, S.FAILED})


class ChannelStateError(LocalProtocolError):
    """An event that the transition table does not allow in the current state."""


class PaymentRejected(RemoteProtocolError):
    """The payer sent a payment or signature the payee must refuse.

    `code` is one of the codes in this module's docstring; the state is unchanged.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"ChannelPay.{code}", reason)
        self.code = code


@dataclass(frozen=True)
class Record:
    """Everything a channel end must persist; enough to resume after a crash.

    `seq`/`total`/`payer_sig` are the latest signed payment (payer: the latest it
    signed; payee: the latest it verified). `acked_seq`/`acked_total` are the
    latest the payee acknowledged (payer: the latest ack received). `paid_on_chain`
    is what the settlement paid the payee -- a close may pay less than `total`, the
    payer's latest signed state, when the payee closed with an older one; a refund
    pays 0 -- and None until the channel is settled (or when the chain did not say).
    `refused` is the payee's refusal of the payer's funding ("code: reason"), kept
    once the channel is ``refused`` ("" for every other channel).
    """

    role: Role
    state: State
    terms: Terms
    peer_id: str
    seq: int = 0
    total: int = 0
    payer_sig: bytes = b""
    acked_seq: int = 0
    acked_total: int = 0
    refund_sig: bytes = b""
    close_txid: str = ""
    paid_on_chain: int | None = None
    refused: str = ""

    # The per-payment copies: a copy of the instance dict with the changed fields set.
    # `dataclasses.replace` introspects the fields on every call, and even a spelled-out
    # constructor call sets each of the 13 fields through the frozen __setattr__ guard
    # (3.5 us against 1.5 us here, per payment on both ends). Frozen still holds: only
    # a new, not yet shared instance is written.

    def with_payment(self, seq: int, total: int, payer_sig: bytes) -> Record:
        """A copy holding a newer signed payment."""
        return self._copy_with(seq=seq, total=total, payer_sig=payer_sig)

    def with_ack(self, acked_seq: int, acked_total: int) -> Record:
        """A copy holding a newer acknowledgement."""
        return self._copy_with(acked_seq=acked_seq, acked_total=acked_total)

    def _copy_with(self, **changes: object) -> Record:
        copy = object.__new__(Record)
        fields = copy.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return copy


def _step(record: Record, event: str) -> Record:
    table = TABLES[record.role]
    target = table.get((record.state, event))
    if target is None:
        raise ChannelStateError(
            f"{record.role.value} channel in state {record.state.value} cannot '{event}'"
        )
    return replace(record, state=target)


class _ChannelEnd:
    """What payer and payee share: the record, the transition step, the signer."""

    def __init__(self, record: Record, key: PrivateKey) -> None:
        self._record = record
        self._key = key
        self._signer = PaymentSigner(record.terms)
        own = bytes(key.public_key().serialize(compressed=True))
        expected = record.terms.payer_key if record.role is Role.PAYER else record.terms.payee_key
        if own != expected:
            raise LocalProtocolError("channel key does not match the terms")

    def record(self) -> Record:
        """The state to persist (frozen)."""
        return self._record

    @property
    def state(self) -> State:
        """The current state."""
        return self._record.state

    @property
    def terms(self) -> Terms:
        """The agreed terms."""
        return self._record.terms

    def event(self, name: str) -> Record:
        """Apply a lifecycle event from the table (e.g. "funding-accepted")."""
        self._record = _step(self._record, name)
        return self._record

    def mark_closed(self, close_txid: str, paid: int | None) -> Record:
        """The close transaction is on chain ("" when only its effect is known), paying
        the payee `paid` (None: not known)."""
        self._record = replace(
            _step(self._record, "closed"), close_txid=close_txid, paid_on_chain=paid
        )
        return self._record

    def mark_refunded(self, refund_txid: str) -> Record:
        """The refund transaction is on chain (it pays the payee nothing)."""
        self._record = replace(
            _step(self._record, "refunded"), close_txid=refund_txid, paid_on_chain=0
        )
        return self._record


class Payer(_ChannelEnd):
    """The paying end: signs refunds' counterpart, payments and nothing else."""

    def __init__(self, record: Record, key: PrivateKey) -> None:
        super().__init__(record, key)
        self._ahead: tuple[int, bytes] | None = None  # (total, signature) from `presign`

    def refuse_funding(self, reason: str) -> Record:
        """The payee refused our funding (`reason`: its "code: reason"): the channel
        will never open, and only the refund at the expiry settles it."""
        self._record = replace(_step(self._record, "funding-refused"), refused=reason)
        return self._record

    def accept_refund_signature(self, signature: bytes) -> Record:
        """Check the payee's signature on the refund; only then may funding go out."""
        digest = sighash_of(refund_tx(self.terms))
        if not verify_digest(self.terms.payee_key, digest, signature):
            raise PaymentRejected("bad-refund-signature", "payee's refund signature is invalid")
        self._record = replace(_step(self._record, "refund-signed"), refund_sig=signature)
        return self._record

    def signed_refund(self) -> bytes:
        """The fully signed refund transaction (valid once the expiry height is reached)."""
        record = self._record
        if not record.refund_sig:
            raise LocalProtocolError("no refund signature from the payee yet")
        ours = sign_digest(self._key, sighash_of(refund_tx(self.terms)))
        raw: bytes = refund_tx(self.terms, two_of_two_unlock(ours, record.refund_sig)).serialize()
        return raw

    def pay(self, amount: int) -> Record:
        """Sign the next state paying `amount` more; persist the record, then send it."""
        record = self._record
        total = self._next_total(amount)
        ahead, self._ahead = self._ahead, None
        signature = ahead[1] if ahead is not None and ahead[0] == total else self._sign(total)
        self._record = record.with_payment(record.seq + 1, total, signature)
        return self._record

    def presign(self, amount: int) -> None:
        """Sign ahead the state paying `amount` more than now, for the `pay` most
        likely to come next (a meter pays the same amount every tick).

        For a caller that would wait anyway (its window is full): the signature is
        then ready when the ack comes. Signing is deterministic (RFC 6979) and binds
        only the total, so a signature made ahead is exactly the one `pay` would make;
        one that is not used is never sent (it stays in memory until the next `pay`).
        """
        try:
            total = self._next_total(amount)
        except LocalProtocolError:  # (ChannelStateError too) `pay` will say why
            return
        self._ahead = (total, self._sign(total))

    def _next_total(self, amount: int) -> int:
        """The total after paying `amount` more; raises if `pay` may not pay it."""
        record = self._record
        if record.state is not State.OPEN:
            raise ChannelStateError(f"cannot pay on a channel in state {record.state.value}")
        if amount <= 0:
            raise LocalProtocolError("payment amount must be positive")
        total = record.total + amount
        if total > self.terms.max_total:
            raise LocalProtocolError(
                f"paying {amount} would exceed the channel ({total} > {self.terms.max_total})"
            )
        return total

    def _sign(self, total: int) -> bytes:
        return sign_digest(self._key, self._signer.sighash(total))

    def release_signature(self) -> bytes:
        """Our signature giving up a channel nothing was paid on (see the module doc).

        Deterministic (RFC 6979): signing again after a restart gives the same bytes.
        """
        if self._record.seq:
            raise LocalProtocolError("this channel has payments: close it instead")
        return sign_digest(self._key, sighash_of(release_tx(self.terms)))

    def remaining(self) -> int:
        """How much more this channel can pay."""
        return self.terms.max_total - self._record.total

    def accept_ack(self, seq: int, total: int, signature: bytes = b"") -> Record:
        """A cumulative acknowledgement from the payee.

        An ack of a state we do not hold (a later seq, a larger total, or our latest seq
        with another total) means we lost our latest writes (a power cut: see SECURITY
        risk 15) and signed again from an older state. If `signature` is ours on that
        state we signed it before, and it becomes our latest state again (the payee holds
        it already: we owe nothing more), at a seq above both ends' own; otherwise it is
        refused (``bad-ack``).
        """
        record = self._record
        if (
            seq > record.seq
            or total > record.total
            or (seq == record.seq and total != record.total)
        ):
            return self._take_back(seq, total, signature)
        if seq < record.acked_seq:
            return record  # an old ack overtaken by a newer one
        self._record = record.with_ack(seq, total)
        return self._record

    def _take_back(self, seq: int, total: int, signature: bytes) -> Record:
        if not (0 < seq <= MAX_SEQ and 0 < total <= self.terms.max_total) or not verify_digest(
            self.terms.payer_key, self._signer.sighash(total), signature
        ):
            raise PaymentRejected("bad-ack", f"ack {seq}/{total} of a state we never signed")
        # The signature binds the total, not the seq: keep ours growing (the store merges
        # by seq) and the payee takes the next payment, a seq above both, as usual.
        record = self._record
        ours = max(seq, record.seq + 1)
        if ours > MAX_SEQ:
            raise PaymentRejected("bad-ack", "no seq left to take the acknowledged state back")
        self._record = record.with_payment(ours, total, signature).with_ack(ours, total)
        return self._record


class Payee(_ChannelEnd):
    """The paid end: signs the refund, verifies payments, closes."""

    def sign_refund(self) -> tuple[Record, bytes]:
        """Sign the refund for the payer; returns the new record and the signature."""
        signature = sign_digest(self._key, sighash_of(refund_tx(self.terms)))
        self._record = replace(_step(self._record, "refund-signed"), refund_sig=signature)
        return self._record, signature

    def check_payment(self, seq: int, total: int, signature: bytes) -> bool:
        """Verify a payment without changing state.

        Returns False for an exact duplicate of the latest payment (harmless after a
        reconnect), True for a new valid payment; raises `PaymentRejected` otherwise.
        """
        record = self._record
        if record.state is not State.OPEN:
            raise PaymentRejected("not-open", f"channel is {record.state.value}")
        return self._check(record.seq, record.total, record.payer_sig, seq, total, signature)

    def _check(
        self, last_seq: int, last_total: int, last_sig: bytes, seq: int, total: int, sig: bytes
    ) -> bool:
        """`check_payment` after the state check, against the latest payment taken."""
        if not 0 < seq <= MAX_SEQ:
            raise PaymentRejected("bad-seq", f"seq {seq} outside 1..{MAX_SEQ}")
        if seq == last_seq:
            if total == last_total and sig == last_sig:
                return False
            raise PaymentRejected("seq-reused", f"seq {seq} already paid {last_total}")
        if seq < last_seq:
            raise PaymentRejected("stale-seq", f"seq {seq} is older than {last_seq}")
        if total <= last_total:
            raise PaymentRejected("total-not-growing", f"total {total} <= {last_total}")
        if total > self.terms.max_total:
            raise PaymentRejected("above-capacity", f"total {total} > {self.terms.max_total}")
        if not verify_digest(self.terms.payer_key, self._signer.sighash(total), sig):
            raise PaymentRejected("bad-signature", f"signature for seq {seq} does not verify")
        return True

    def accept_payment(self, seq: int, total: int, signature: bytes) -> bool:
        """Verify and take a payment; True if it was new (False: exact duplicate).

        The caller persists `record()` before acknowledging or delivering against it.
        """
        fresh = self.check_payment(seq, total, signature)
        if fresh:
            self._record = self._record.with_payment(seq, total, signature)
        return fresh

    def accept_payments(
        self, seq: int, totals: tuple[int, ...], signatures: tuple[bytes, ...]
    ) -> tuple[int, PaymentRejected | None]:
        """Take the consecutive payments of a `ChannelPays` (seq ``seq + i`` paying
        ``totals[i]`` with ``signatures[i]``) in order, each as `accept_payment` would,
        until one is rejected.

        Returns how many were new and the rejection, if any: the payments before it
        stand (each is a valid payment by itself); it and those after it change nothing.
        """
        record = self._record
        if record.state is not State.OPEN:
            return 0, PaymentRejected("not-open", f"channel is {record.state.value}")
        if not totals or len(totals) != len(signatures):
            reason = f"{len(totals)} totals and {len(signatures)} signatures"
            return 0, PaymentRejected("bad-batch", reason)
        last_seq, last_total, last_sig = record.seq, record.total, record.payer_sig
        fresh = 0
        rejection = None
        for at, (total, sig) in enumerate(zip(totals, signatures, strict=True), seq):
            try:
                if not self._check(last_seq, last_total, last_sig, at, total, sig):
                    continue  # the latest payment, resent
            except PaymentRejected as exc:
                rejection = exc
                break
            fresh += 1
            last_seq, last_total, last_sig = at, total, sig
        if fresh:
            self._record = record.with_payment(last_seq, last_total, last_sig)
        return fresh, rejection

    def accept_release(self, signature: bytes) -> Record:
        """The payer gives up a channel nothing was paid on: check its release signature
        and start closing (no payment is taken after this); persist, then co-sign."""
        record = self._record
        if record.state is not State.OPEN:
            raise PaymentRejected("not-open", f"channel is {record.state.value}")
        if record.seq:
            raise PaymentRejected("paid", f"{record.total} sat paid: close the channel instead")
        digest = sighash_of(release_tx(self.terms))
        if not verify_digest(self.terms.payer_key, digest, signature):
            raise PaymentRejected("bad-signature", "the release signature does not verify")
        self._record = replace(_step(record, "close"), payer_sig=signature)
        return self._record

    def acknowledged(self, seq: int, total: int) -> Record:
        """Note that the persisted state (`seq`, `total`) was acknowledged to the payer."""
        record = self._record
        if seq > record.acked_seq:
            self._record = record.with_ack(seq, total)
        return self._record

    def closing_tx(self) -> bytes:
        """Co-sign the latest payment (or the payer's release) into the close
        transaction (raw bytes)."""
        record = self._record
        if record.total == 0:
            if not record.payer_sig:
                raise LocalProtocolError(
                    "nothing was paid and no release was signed: the refund settles this"
                )
            ours = sign_digest(self._key, sighash_of(release_tx(self.terms)))
            unlock = two_of_two_unlock(record.payer_sig, ours)
            released: bytes = release_tx(self.terms, unlock).serialize()
            return released
        tx = payment_tx(self.terms, record.total)
        ours = sign_digest(self._key, sighash_of(tx))
        closing = payment_tx(self.terms, record.total, two_of_two_unlock(record.payer_sig, ours))
        raw: bytes = closing.serialize()
        return raw
