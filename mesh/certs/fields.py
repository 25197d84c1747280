"""Encrypted certificate fields and the keyrings that reveal them (BRC-52, no I/O).

Each field value is encrypted with AES-256-GCM under a random 32-byte key of its own
(``IV(32) ‖ ciphertext ‖ tag(16)``, no additional data). The field keys travel in
*keyrings*, each key encrypted with BRC-2 (a symmetric key both ends derive by
BRC-42 for protocol ``[2, "certificate field encryption"]``):

- the **master keyring** goes from the certifier to the subject: key id = the field
  name, certifier and subject each the other's counterparty;
- a **verifier's keyring** goes from the subject to one verifier, for the fields the
  subject chooses to reveal: key id = ``"<serialNumber> <fieldName>"``, subject and
  verifier each the other's counterparty. Only that verifier can open it, and only
  for that certificate: the serial number is in every key id.

A keyring that opens nothing (another verifier's, another certificate's, or a field
swapped in from elsewhere) fails the GCM tag: `CertificateError("keyring")`.
(docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Mapping

from bsv.keys import PrivateKey, PublicKey
from bsv.primitives.symmetric_key import SymmetricKey
from bsv.wallet.key_deriver import Counterparty, CounterpartyType, KeyDeriver, Protocol

from mesh.certs.certificate import MAX_FIELDS, Certificate, CertificateError

FIELD_PROTOCOL = Protocol(2, "certificate field encryption")
MAX_PLAINTEXT = 2048
"""The longest field value, in UTF-8 bytes."""


def seal_fields(
    certifier: PrivateKey, subject: PublicKey, values: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Encrypt `values` for a certificate of `subject`: (encrypted fields, the
    subject's master keyring), both base64 by field name."""
    if len(values) > MAX_FIELDS:
        raise CertificateError("format", f"more than {MAX_FIELDS} fields")
    fields: dict[str, str] = {}
    keyring: dict[str, str] = {}
    for name, value in values.items():
        plain = value.encode()
        if len(plain) > MAX_PLAINTEXT:
            raise CertificateError("format", f"field {name} is longer than {MAX_PLAINTEXT} bytes")
        field_key = secrets.token_bytes(32)
        fields[name] = _b64(SymmetricKey(field_key).encrypt(plain))
        keyring[name] = _b64(_brc2(certifier, subject, name).encrypt(field_key))
    return fields, keyring


def open_fields(
    own: PrivateKey,
    counterparty: PublicKey,
    cert: Certificate,
    keyring: Mapping[str, str],
    *,
    master: bool,
) -> dict[str, str]:
    """Decrypt the fields `keyring` reveals. `master`: the subject opening its master
    keyring (counterparty: the certifier); else a verifier opening the keyring a subject
    made for it (counterparty: the subject). A field named in the keyring but not in
    the certificate, or a key that opens nothing, is a `CertificateError`."""
    values: dict[str, str] = {}
    for name, sealed in keyring.items():
        if name not in cert.fields:
            raise CertificateError("keyring", f"the keyring names {name!r}, not in the certificate")
        key_id = name if master else f"{cert.serial_number} {name}"
        try:
            field_key = _brc2(own, counterparty, key_id).decrypt(_unb64(sealed, name))
            plain = SymmetricKey(field_key).decrypt(_unb64(cert.fields[name], name))
            values[name] = bytes(plain).decode()
        except CertificateError:
            raise
        except Exception:  # a GCM tag that fails, a key of the wrong length, bad UTF-8
            raise CertificateError(
                "keyring", f"field {name!r} does not open with this keyring (not for us?)"
            ) from None
    return values


def keyring_for(
    subject: PrivateKey,
    cert: Certificate,
    master_keyring: Mapping[str, str],
    verifier: PublicKey,
    names: Iterable[str],
) -> dict[str, str]:
    """The keyring that reveals the fields `names` of our certificate `cert` to
    `verifier`, and nothing else (made from our master keyring)."""
    certifier = PublicKey(cert.certifier)
    keyring: dict[str, str] = {}
    for name in names:
        if name not in cert.fields or name not in master_keyring:
            raise CertificateError("missing", f"the certificate has no field {name!r}")
        try:
            field_key = _brc2(subject, certifier, name).decrypt(_unb64(master_keyring[name], name))
        except CertificateError:
            raise
        except Exception:  # the GCM tag fails: not our master keyring
            raise CertificateError(
                "keyring", f"our master keyring does not open {name!r}"
            ) from None
        key_id = f"{cert.serial_number} {name}"
        keyring[name] = _b64(_brc2(subject, verifier, key_id).encrypt(bytes(field_key)))
    return keyring


def _brc2(own: PrivateKey, counterparty: PublicKey, key_id: str) -> SymmetricKey:
    """The BRC-2 key `own` shares with `counterparty` for one key id."""
    key = KeyDeriver(own).derive_symmetric_key(
        FIELD_PROTOCOL, key_id, Counterparty(CounterpartyType.OTHER, counterparty)
    )
    return SymmetricKey(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode()


def _unb64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise CertificateError("format", f"field {name!r}: not base64") from None


__all__ = ["FIELD_PROTOCOL", "MAX_PLAINTEXT", "keyring_for", "open_fields", "seal_fields"]
