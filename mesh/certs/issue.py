"""Issuing a BRC-52 certificate: fields sealed for the subject, then signed (no I/O).

`issue` is what a certifier does for a subject (a vendor for a machine it built, a
calibration lab for a sensor it calibrated): it encrypts the values, makes the
subject's master keyring and signs. What it returns goes to the subject, whole; the
subject then reveals fields one verifier at a time (`mesh.certs.fields.keyring_for`).
(docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from bsv.keys import PrivateKey, PublicKey

from mesh.certs.certificate import NO_REVOCATION, Certificate
from mesh.certs.fields import seal_fields


@dataclass(frozen=True)
class Issued:
    """A signed certificate and the subject's master keyring (the whole of what a
    subject holds of one certificate)."""

    certificate: Certificate
    master_keyring: Mapping[str, str]

    def to_json(self) -> dict[str, object]:
        """The certificate's JSON with its ``masterKeyring`` (BRC-52's form for it)."""
        return {**self.certificate.to_json(), "masterKeyring": dict(self.master_keyring)}


def issue(
    certifier: PrivateKey,
    subject: PublicKey,
    type_: str,
    values: Mapping[str, str],
    *,
    revocation_outpoint: str = NO_REVOCATION,
    serial_number: str | None = None,
) -> Issued:
    """Certify `values` of `subject` as certificate type `type_` (base64 of 32 bytes)."""
    serial = serial_number or base64.b64encode(secrets.token_bytes(32)).decode()
    parts = (type_, serial, subject.hex(), certifier.public_key().hex(), revocation_outpoint)
    Certificate(*parts, dict.fromkeys(values, ""))  # names and the rest, before sealing
    fields, keyring = seal_fields(certifier, subject, values)
    return Issued(Certificate(*parts, fields).signed(certifier), keyring)


__all__ = ["Issued", "issue"]
