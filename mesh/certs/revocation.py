"""Revoking a BRC-52 certificate by spending an output: "spent means revoked" (no I/O).

A revocable certificate names an outpoint (``revocationOutpoint``); while that output is
unspent the certifier stands by the certificate, and spending it revokes it for every
verifier that looks at the chain. `mesh cert issue --revocable` funds the output from
the certifier's wallet, `mesh cert revoke` spends it; the shell does the I/O, this
module says what to pay, to which key, and builds the spend.

The output pays P2PKH to a key the certifier derives from its identity for the label
``cert-revocation-<serial hex>``, exactly as its wallet derives a labelled key
(`mesh.chain.wallet.Wallet.payout_address`; counterparty *self*, so nobody else can
derive it). The key is never *adopted* into the wallet: the wallet spends its coins
for anything, and an ordinary payment that picked this one would revoke the
certificate by accident. The certifier re-derives it from the serial number when it
revokes; a verifier cannot check the script and need not: only the spend counts.

It must never read the chain or a wallet, nor sign anything but the revocation spend.
(docs/ARCHITECTURE.md §3, §5)
"""

from __future__ import annotations

import base64
import enum

from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput
from bsv.wallet.key_deriver import Counterparty, CounterpartyType, KeyDeriver, Protocol

from mesh.certs.certificate import NO_REVOCATION, Certificate, CertificateError
from mesh.chain import rules
from mesh.chain.base import OutputState
from mesh.chain.errors import TxRejected
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import SEQUENCE_FINAL, Outpoint
from mesh.chain.wallet import WALLET_PROTOCOL, WALLET_SECURITY_LEVEL
from mesh.errors import MeshError

REVOCATION_SATOSHIS = 1000
"""What a revocation output holds: enough to pay for its own spend many times over
at any fee rate a local ledger uses, and little enough to leave locked for years."""
LABEL_PREFIX = "cert-revocation-"


class RevocationError(MeshError):
    """A revocation output cannot be spent as asked."""


class Revocation(enum.Enum):
    """What a certificate's revocation outpoint says on one chain."""

    NOT_REVOCABLE = "not revocable"  # NO_REVOCATION: nothing on chain can revoke it
    GOOD = "unspent"  # the output is there, unspent: not revoked
    REVOKED = "spent"  # spent (mined or in the mempool): revoked
    UNKNOWN = "unknown"  # this chain holds no such output: a different chain, or made up


def revocation_label(serial_number: str) -> str:
    """The key label of a certificate's revocation output: ``cert-revocation-<serial
    as hex>`` (`serial_number` is base64, as in the certificate)."""
    try:
        raw = base64.b64decode(serial_number, validate=True)
    except ValueError:
        raise CertificateError("format", "serialNumber is not base64") from None
    return LABEL_PREFIX + raw.hex()


def revocation_key(certifier: PrivateKey, serial_number: str) -> PrivateKey:
    """The key that locks (and spends) the revocation output of the certificate
    `serial_number` certifier `certifier` issues: its wallet's labelled key for
    `revocation_label` (never adopted: see the module docstring)."""
    key: PrivateKey = KeyDeriver(certifier).derive_private_key(
        Protocol(WALLET_SECURITY_LEVEL, WALLET_PROTOCOL),
        revocation_label(serial_number),
        Counterparty(CounterpartyType.SELF),
    )
    return key


def revocation_script(certifier: PrivateKey, serial_number: str) -> bytes:
    """The P2PKH locking script the revocation output pays."""
    address = revocation_key(certifier, serial_number).address()
    script: bytes = P2PKH().lock(address).serialize()
    return script


def outpoint_of(revocation_outpoint: str) -> Outpoint:
    """A BRC-52 ``"<txid>.<vout>"`` as an `Outpoint` (``txid:vout`` in m2mesh)."""
    txid, _, vout = revocation_outpoint.partition(".")
    if len(txid) != 64 or not vout.isdigit():
        raise CertificateError("format", "revocationOutpoint must be <txid hex>.<vout>")
    return Outpoint(txid.lower(), int(vout))


def brc52_outpoint(outpoint: Outpoint) -> str:
    """An `Outpoint` as a certificate's ``revocationOutpoint`` (``"<txid>.<vout>"``)."""
    return f"{outpoint.txid}.{outpoint.vout}"


def judge(cert: Certificate, output: OutputState | None) -> Revocation:
    """What the chain's view of the revocation output (`output`; None when the
    certificate names none) says of `cert`."""
    if cert.revocation_outpoint == NO_REVOCATION:
        return Revocation.NOT_REVOCABLE
    if output is OutputState.UNSPENT:
        return Revocation.GOOD
    if output is OutputState.SPENT:
        return Revocation.REVOKED
    return Revocation.UNKNOWN


def revocation_spend(
    key: PrivateKey,
    outpoint: Outpoint,
    prevout: Prevout,
    pay_to: bytes,
    policy: Policy,
) -> bytes:
    """The signed transaction that spends the revocation output `outpoint` (`prevout`:
    its amount and locking script, as the chain has them) with `key`, paying what is
    left after the policy's fee to the locking script `pay_to`. Run through the script
    interpreter first: an output not locked to `key` is a `RevocationError`."""
    source = TransactionInput(
        source_txid=outpoint.txid,
        source_output_index=outpoint.vout,
        unlocking_script_template=P2PKH().unlock(key),
        sequence=SEQUENCE_FINAL,
    )
    source.satoshis = prevout.satoshis
    source.locking_script = Script(prevout.locking_script)
    output = TransactionOutput(Script(pay_to), prevout.satoshis)
    tx = Transaction([source], [output], version=1, locktime=0)
    fee = max(policy.min_fee, int(policy.fee_model().compute_fee(tx)))
    if prevout.satoshis - fee < 1:
        raise RevocationError(
            f"the revocation output holds {prevout.satoshis} sat, not enough for the fee"
            f" ({fee} sat)"
        )
    output.satoshis = prevout.satoshis - fee
    tx.sign()
    try:
        rules.check_scripts(tx, {outpoint: prevout})
    except TxRejected:
        raise RevocationError(
            f"the output {outpoint} is not locked to this certificate's revocation key"
        ) from None
    raw: bytes = tx.serialize()
    return raw


__all__ = [
    "LABEL_PREFIX",
    "REVOCATION_SATOSHIS",
    "Revocation",
    "RevocationError",
    "brc52_outpoint",
    "judge",
    "outpoint_of",
    "revocation_key",
    "revocation_label",
    "revocation_script",
    "revocation_spend",
]
