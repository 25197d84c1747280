"""The transactions of a Spilman channel, and the fast sighash of a payment.

This module owns the exact shape of every channel transaction and does no I/O:

* funding output: ``OP_2 <payer_ck> <payee_ck> OP_2 OP_CHECKMULTISIG`` (bare 2-of-2);
* refund: spends the funding output back to the payer, ``nLockTime = expiry``,
  ``nSequence = 0xFFFFFFFE`` (so the lock time is enforced), signed by the payee
  before the funding is broadcast;
* payment / close: spends the funding output to ``[payee: total, payer: rest]`` (to
  P2PKH payout scripts each end chose from its own wallet) with
  ``rest = capacity - total - close_fee`` (the payer output is left out when it is
  0), version 1, lock time 0, final sequence;
* release: a channel nothing was paid on, back to the payer at once, less the close
  fee (version 1, lock time 0, final sequence): the payer signs it to give the channel
  up, the payee co-signs and broadcasts it, so an unused channel's coins need not wait
  for the refund's expiry.

Both parties rebuild every transaction from the agreed `Terms` and a total, so only
``(channel_id, seq, total, signature)`` crosses the wire. The payment sighash is
BIP143 with FORKID; only ``hashOutputs`` depends on the total, so `PaymentSigner`
keeps the 104-byte head of the preimage in a SHA-256 state and the 8-byte tail, and
hashes just the outputs per update (checked byte for byte against bsv-sdk's
``Transaction.preimage`` in the tests). (docs/ARCHITECTURE.md §4, §9)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.chain.tx import varint
from mesh.errors import LocalProtocolError

SIGHASH_ALL_FORKID = 0x41
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_LOCKTIME = 0xFFFFFFFE
TX_VERSION = 1
OP_0, OP_2, OP_CHECKMULTISIG = 0x00, 0x52, 0xAE
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def hash256(data: bytes) -> bytes:
    """Double SHA-256."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _push(data: bytes) -> bytes:
    if len(data) >= 0x4C:
        raise LocalProtocolError("channel scripts only push short data")
    return bytes([len(data)]) + data


def multisig_script(payer_key: bytes, payee_key: bytes) -> bytes:
    """The bare 2-of-2 funding script (payer's key first)."""
    return bytes([OP_2]) + _push(payer_key) + _push(payee_key) + bytes([OP_2, OP_CHECKMULTISIG])


def p2pkh_for_key(public_key: bytes) -> bytes:
    """The P2PKH locking script paying to a compressed public key."""
    pkh = hashlib.new("ripemd160", hashlib.sha256(public_key).digest()).digest()
    return b"\x76\xa9\x14" + pkh + b"\x88\xac"


def is_p2pkh(script: bytes) -> bool:
    """True for ``OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG``."""
    return len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac"


@dataclass(frozen=True)
class Terms:
    """Everything both parties agreed at open; every channel tx follows from it.

    `funding_txid` is in display (big-endian hex) order, as txids are shown.
    """

    channel_id: bytes
    payer_key: bytes
    payee_key: bytes
    capacity: int
    close_fee: int
    refund_fee: int
    expiry_height: int
    funding_txid: str
    funding_vout: int
    payer_payout: bytes
    payee_payout: bytes

    def __post_init__(self) -> None:
        if len(self.channel_id) != 32:
            raise ValueError("channel id must be 32 bytes")
        if self.capacity <= 0 or self.close_fee < 0 or self.refund_fee < 0:
            raise ValueError("capacity must be positive and fees non-negative")
        if self.close_fee >= self.capacity or self.refund_fee >= self.capacity:
            raise ValueError("fees must be below the capacity")
        if not 0 < self.expiry_height < 500_000_000:
            raise ValueError("expiry must be a block height")
        if len(self.funding_txid) != 64:
            raise ValueError("funding txid must be 64 hex characters")
        for script in (self.payer_payout, self.payee_payout):
            if not is_p2pkh(script):
                raise ValueError("payouts must be P2PKH locking scripts")

    @property
    def funding_script(self) -> bytes:
        """The 2-of-2 locking script of the funding output."""
        return multisig_script(self.payer_key, self.payee_key)

    @property
    def max_total(self) -> int:
        """The most the payer can ever pay: capacity less the close fee."""
        return self.capacity - self.close_fee

    def payment_outputs(self, total: int) -> list[tuple[bytes, int]]:
        """The (script, satoshis) outputs of the payment/close tx for `total`."""
        if not 1 <= total <= self.max_total:
            raise LocalProtocolError(f"total {total} outside 1..{self.max_total}")
        outputs = [(self.payee_payout, total)]
        rest = self.max_total - total
        if rest > 0:
            outputs.append((self.payer_payout, rest))
        return outputs


def _funding_input(terms: Terms, sequence: int, unlocking: bytes | None) -> TransactionInput:
    inp = TransactionInput(
        source_txid=terms.funding_txid,
        source_output_index=terms.funding_vout,
        unlocking_script=Script(unlocking) if unlocking is not None else None,
        sequence=sequence,
    )
    inp.satoshis = terms.capacity
    inp.locking_script = Script(terms.funding_script)
    return inp


def _outputs(pairs: list[tuple[bytes, int]]) -> list[TransactionOutput]:
    return [TransactionOutput(Script(script), satoshis) for script, satoshis in pairs]


def payment_tx(terms: Terms, total: int, unlocking: bytes | None = None) -> Transaction:
    """The payment (and close) transaction paying `total` to the payee."""
    return Transaction(
        [_funding_input(terms, SEQUENCE_FINAL, unlocking)],
        _outputs(terms.payment_outputs(total)),
        version=TX_VERSION,
        locktime=0,
    )


def refund_tx(terms: Terms, unlocking: bytes | None = None) -> Transaction:
    """The refund: everything back to the payer once the expiry height is reached."""
    return Transaction(
        [_funding_input(terms, SEQUENCE_LOCKTIME, unlocking)],
        _outputs([(terms.payer_payout, terms.capacity - terms.refund_fee)]),
        version=TX_VERSION,
        locktime=terms.expiry_height,
    )


def release_tx(terms: Terms, unlocking: bytes | None = None) -> Transaction:
    """The release of an unpaid channel: everything but the close fee to the payer, now."""
    return Transaction(
        [_funding_input(terms, SEQUENCE_FINAL, unlocking)],
        _outputs([(terms.payer_payout, terms.max_total)]),
        version=TX_VERSION,
        locktime=0,
    )


def two_of_two_unlock(payer_sig: bytes, payee_sig: bytes) -> bytes:
    """``OP_0 <payer_sig> <payee_sig>``: sighash byte appended, key order kept."""
    return (
        bytes([OP_0])
        + _push(payer_sig + bytes([SIGHASH_ALL_FORKID]))
        + _push(payee_sig + bytes([SIGHASH_ALL_FORKID]))
    )


def sighash_of(tx: Transaction) -> bytes:
    """The digest to sign for input 0 of a channel tx (bsv-sdk's own preimage)."""
    preimage: bytes = tx.preimage(0)
    return hash256(preimage)


class PaymentSigner:
    """Payment sighashes from cached parts: only hashOutputs changes per update.

    The preimage is ``head(104 + script) || hashOutputs || tail(8)``; the head
    (version, hashPrevouts, hashSequence, outpoint, scriptCode, value, nSequence)
    is fed once into a SHA-256 state that is copied per update.
    """

    def __init__(self, terms: Terms) -> None:
        """Precompute the constant parts of every payment preimage of `terms`."""
        self.terms = terms
        outpoint = bytes.fromhex(terms.funding_txid)[::-1] + _U32.pack(terms.funding_vout)
        script = terms.funding_script
        head = b"".join(
            [
                _U32.pack(TX_VERSION),
                hash256(outpoint),
                hash256(_U32.pack(SEQUENCE_FINAL)),
                outpoint,
                varint(len(script)),
                script,
                _U64.pack(terms.capacity),
                _U32.pack(SEQUENCE_FINAL),
            ]
        )
        self._head_bytes = head
        self._head = hashlib.sha256(head)
        self._tail = _U32.pack(0) + _U32.pack(SIGHASH_ALL_FORKID)
        self._max_total = terms.max_total
        # The serialized outputs in one pack call each: [payee, payer] while something
        # is left for the payer, [payee] alone once everything is paid.
        payee = varint(len(terms.payee_payout)) + terms.payee_payout
        payer = varint(len(terms.payer_payout)) + terms.payer_payout
        self._both = struct.Struct(f"<Q{len(payee)}sQ{len(payer)}s")
        self._payee_only = struct.Struct(f"<Q{len(payee)}s")
        self._payee_script, self._payer_script = payee, payer

    def preimage(self, total: int) -> bytes:
        """The full BIP143 preimage for `total` (what `sighash` hashes)."""
        return self._head_bytes + self.hash_outputs(total) + self._tail

    def hash_outputs(self, total: int) -> bytes:
        """hashOutputs of the payment tx for `total`."""
        rest = self._max_total - total
        if rest > 0 and total > 0:
            outputs = self._both.pack(total, self._payee_script, rest, self._payer_script)
        elif rest == 0:
            outputs = self._payee_only.pack(total, self._payee_script)
        else:
            raise LocalProtocolError(f"total {total} outside 1..{self._max_total}")
        return hashlib.sha256(hashlib.sha256(outputs).digest()).digest()

    def sighash(self, total: int) -> bytes:
        """The digest the payer signs (and the payee verifies) for `total`."""
        state = self._head.copy()
        state.update(self.hash_outputs(total))
        state.update(self._tail)
        return hashlib.sha256(state.digest()).digest()


def sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    """Strict-DER low-S ECDSA signature over a 32-byte digest."""
    signature: bytes = key.sign(digest, hasher=None)
    return signature
