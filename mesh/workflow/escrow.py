"""A completion payment held in escrow until an inspector's verdict (no I/O).

At order time the buyer locks the payment for one part in a bare 2-of-3 multisig of
buyer, machine and inspector, ``OP_2 <buyer> <machine> <inspector> OP_3
OP_CHECKMULTISIG`` -- a standard script, no CHECKLOCKTIMEVERIFY (BSV has none). Three
ways out, each a version-1 transaction with one input and one P2PKH output:

* **release** to the machine, signed by machine and inspector: the inspector signs it
  only with a PASS verdict;
* **return** to the buyer, signed by buyer and inspector: the inspector signs it with
  a FAIL verdict;
* **refund** to the buyer at ``nLockTime = refund_height`` (``nSequence 0xFFFFFFFE``),
  signed by buyer and machine -- the machine signs it *before* the buyer funds the
  escrow, as a channel's payee signs its refund, so an inspection that never comes
  returns the buyer's coins without anyone's help.

The script is 2-of-3: any two parties together can move the coins anywhere. No party
alone can: the machine cannot take the payment without the inspector (or the buyer),
the buyer cannot take it back before the refund height without the inspector (or the
machine), and the inspector holds nothing without one of them. The inspector is the
trusted third party, and signs only the way its verdict names.

Like a channel's transactions, each party rebuilds every transaction from the agreed
`EscrowTerms`, so only signatures cross the wire. Signatures go into the unlocking
script in the keys' order (CHECKMULTISIG walks both lists once). The machine's release
must be mined before the refund becomes final: a machine collects a PASS at once.
(docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import msgpack
from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.channel.txs import (
    OP_0,
    OP_2,
    OP_CHECKMULTISIG,
    SEQUENCE_FINAL,
    SEQUENCE_LOCKTIME,
    SIGHASH_ALL_FORKID,
    TX_VERSION,
    is_p2pkh,
    sighash_of,
    sign_digest,
)
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import verify_digest

OP_3 = 0x53
MAX_LOCKTIME_HEIGHT = 500_000_000
SPEND_TX_MAX_SIZE = 4 + 1 + (32 + 4 + 1 + (1 + 2 * (1 + 72 + 1)) + 4) + 1 + (8 + 1 + 25) + 4
"""Bytes of a release, return or refund at its largest: the 2-of-3 input with two
72-byte DER signatures, one P2PKH output. Its fee must meet the network's policy for
this size (`MachineOrder.accept`): the three are signed before they are needed."""


class Way(enum.Enum):
    """The three ways out of an escrow, and who signs each (in key order)."""

    RELEASE = ("release", ("machine", "inspector"))
    RETURN = ("return", ("buyer", "inspector"))
    REFUND = ("refund", ("buyer", "machine"))

    @property
    def signers(self) -> tuple[str, ...]:
        """The two parties whose signatures unlock this way."""
        return self.value[1]

    @property
    def may_sign(self) -> tuple[str, ...]:
        """Who may sign this way: its two signers, and for the release the buyer too
        (a release pays only the machine: the buyer co-signs it with the inspector's
        PASS when the machine does not collect), in key order."""
        return ("buyer", *self.signers) if self is Way.RELEASE else self.signers


class EscrowError(RemoteProtocolError):
    """An escrow's terms or a signature on it are not acceptable; `rule` names why."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(rule, reason)
        self.rule = rule


@dataclass(frozen=True)
class EscrowTerms:
    """Everything the three parties agreed for one part's payment.

    `funding_txid` is in display order, as txids are shown; keys are compressed."""

    order_id: bytes
    buyer_key: bytes
    machine_key: bytes
    inspector_key: bytes
    amount: int
    fee: int
    refund_height: int
    buyer_payout: bytes
    machine_payout: bytes
    funding_txid: str
    funding_vout: int

    def __post_init__(self) -> None:
        keys = (self.buyer_key, self.machine_key, self.inspector_key)
        if any(len(k) != 33 or k[0] not in (2, 3) for k in keys) or len(set(keys)) != 3:
            raise EscrowError("keys", "three distinct compressed public keys")
        if not 0 < self.fee < self.amount:
            raise EscrowError("amount", "the fee must be positive and below the amount")
        if not 0 < self.refund_height < MAX_LOCKTIME_HEIGHT:
            raise EscrowError("refund", "the refund height must be a block height")
        if not (is_p2pkh(self.buyer_payout) and is_p2pkh(self.machine_payout)):
            raise EscrowError("payout", "payouts must be P2PKH scripts")
        if len(bytes.fromhex(self.funding_txid)) != 32 or not 0 <= self.funding_vout < 2**32:
            raise EscrowError("funding", "a funding outpoint: 64 hex digits and a 32-bit index")

    @property
    def script(self) -> bytes:
        """The escrow output's locking script (bare 2-of-3, buyer, machine, inspector)."""
        keys = b"".join(
            bytes([33]) + k for k in (self.buyer_key, self.machine_key, self.inspector_key)
        )
        return bytes([OP_2]) + keys + bytes([OP_3, OP_CHECKMULTISIG])

    def digest(self) -> bytes:
        """SHA-256 of every term (a verdict binds it: nothing agreed can be changed
        after the inspector signed)."""
        fields = [self.order_id, self.buyer_key, self.machine_key, self.inspector_key,
                  self.amount, self.fee, self.refund_height, self.buyer_payout,
                  self.machine_payout, self.funding_txid, self.funding_vout]  # fmt: skip
        return hashlib.sha256(msgpack.packb(fields, use_bin_type=True)).digest()

    def key_of(self, party: str) -> bytes:
        """A party's escrow key (``buyer``, ``machine``, ``inspector``)."""
        return {
            "buyer": self.buyer_key,
            "machine": self.machine_key,
            "inspector": self.inspector_key,
        }[party]


def escrow_tx(terms: EscrowTerms, way: Way, unlocking: bytes | None = None) -> Transaction:
    """The transaction of one way out (unsigned without `unlocking`)."""
    refund = way is Way.REFUND
    source = TransactionInput(
        source_txid=terms.funding_txid,
        source_output_index=terms.funding_vout,
        unlocking_script=Script(unlocking) if unlocking is not None else None,
        sequence=SEQUENCE_LOCKTIME if refund else SEQUENCE_FINAL,
    )
    source.satoshis = terms.amount
    source.locking_script = Script(terms.script)
    payout = terms.machine_payout if way is Way.RELEASE else terms.buyer_payout
    output = TransactionOutput(Script(payout), terms.amount - terms.fee)
    locktime = terms.refund_height if refund else 0
    return Transaction([source], [output], version=TX_VERSION, locktime=locktime)


def sign(terms: EscrowTerms, way: Way, party: str, key: PrivateKey) -> bytes:
    """`party`'s signature on one way out (DER, without the sighash byte)."""
    if party not in way.may_sign:
        raise LocalProtocolError(f"the {party} does not sign the {way.value[0]}")
    if key.public_key().serialize() != terms.key_of(party):
        raise LocalProtocolError(f"not the {party}'s escrow key")
    return sign_digest(key, sighash_of(escrow_tx(terms, way)))


def check(terms: EscrowTerms, way: Way, party: str, signature: bytes) -> None:
    """A party's signature on one way out; `EscrowError("signature")` if it is not."""
    if party not in way.may_sign:
        raise EscrowError("signer", f"the {party} does not sign the {way.value[0]}")
    digest = sighash_of(escrow_tx(terms, way))
    if not verify_digest(terms.key_of(party), digest, signature):
        raise EscrowError("signature", f"the {party}'s signature on the {way.value[0]} is bad")


def signed(terms: EscrowTerms, way: Way, signatures: dict[str, bytes]) -> bytes:
    """The complete transaction of one way out, from two signatures of parties that
    `may_sign` it."""
    parties = [p for p in way.may_sign if p in signatures]  # in key order
    if len(parties) != 2 or len(signatures) != 2:
        raise EscrowError("signer", f"the {way.value[0]} needs two of {', '.join(way.may_sign)}")
    for party in parties:
        check(terms, way, party, signatures[party])
    unlock = bytes([OP_0])
    for party in parties:
        sig = signatures[party] + bytes([SIGHASH_ALL_FORKID])
        unlock += bytes([len(sig)]) + sig
    raw: bytes = escrow_tx(terms, way, unlock).serialize()
    return raw


__all__ = ["EscrowError", "EscrowTerms", "Way", "check", "escrow_tx", "sign", "signed"]
