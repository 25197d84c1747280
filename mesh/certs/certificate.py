"""BRC-52 identity certificates: the data, its binary form and its signature (no I/O).

A certificate says that a *certifier* (a lab, a vendor, a plant) vouches for named
fields of a *subject* (a machine's identity key). Its fields are encrypted, each under
its own key (`mesh.certs.fields`); the certifier signs the encrypted form, so a
verifier checks the signature without seeing a single value, and a subject reveals
only the fields a peer needs.

The format, exactly as BRC-52 (revised 2026-04-24) and the TypeScript reference
`@bsv/sdk` have it:

- JSON: ``type`` and ``serialNumber`` (base64 of 32 bytes), ``subject`` and
  ``certifier`` (compressed public keys, hex), ``revocationOutpoint`` (``"<txid>.<vout>"``;
  64 zeros and ``.0`` when revocation is disabled), ``fields`` (name -> base64 of
  ``IV(32) ‖ ciphertext ‖ GCM tag(16)``), ``signature`` (DER, hex).
- Binary form: ``type(32) ‖ serial(32) ‖ subject(33) ‖ certifier(33) ‖ txid(32) ‖
  VarInt vout ‖ VarInt field count ‖`` for each field sorted by name ``VarInt len ‖
  name (UTF-8) ‖ VarInt len ‖ base64 value (UTF-8)`` ``‖ signature (DER)``; without the
  signature it is what is signed.
- Signature: ECDSA over SHA-256 (once) of that preimage, by the certifier's BRC-42 child
  key for protocol ``[2, "certificate signature"]``, key id ``"<type> <serialNumber>"``,
  counterparty *anyone*; a verifier derives the matching public key with counterparty =
  certifier (its own key being *anyone*'s, the scalar 1).

Field names are 1-50 printable ASCII characters without spaces (``calibrated_until``,
``firstName``), and fields are sorted by name bytewise, as the spec's other
implementations do. The reference sorts with JavaScript's `localeCompare`, which
disagrees for some sets of names (it puts ``a`` before ``B`` and ``_`` before digits):
a certificate whose names the two orders would put differently -- or two names that
differ only in case -- is refused (``format``), so every certificate accepted here has
the same bytes, and the same signature, in both (`names_sort_alike`). Anything
malformed a peer sends is a `CertificateError` naming the part. (docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bsv.keys import PrivateKey, PublicKey
from bsv.wallet.key_deriver import Counterparty, CounterpartyType, KeyDeriver, Protocol

from mesh.chain.tx import varint
from mesh.errors import RemoteProtocolError

SIGNATURE_PROTOCOL = Protocol(2, "certificate signature")
NO_REVOCATION = "0" * 64 + ".0"
"""The revocation outpoint of a certificate that cannot be revoked."""
ANYONE = PrivateKey(1)
"""BRC-42's *anyone*: the key whose scalar is 1 (a verifier with no key of its own)."""
MAX_FIELDS = 32
MAX_NAME = 50
MAX_VALUE = 4096
"""Bounds on what a peer's certificate may hold: field count, name length (the SDKs'
``CertificateFieldNameUnder50Bytes``) and the length of one encrypted value's base64
(a value of ~3 kB)."""
_NAME = re.compile(r"^[!-~]{1,50}$")
LOCALE_ORDER = "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789abcdefghijklmnopqrstuvwxyz"
"""Printable ASCII in the order JavaScript's `localeCompare` (ICU, punctuation not
ignored) puts it at the primary level, where a letter and its capital are equal (checked
against node 20)."""
_LOCALE_RANK = {c: i for i, c in enumerate(LOCALE_ORDER)}
_OUTPOINT = re.compile(r"^[0-9a-f]{64}\.(0|[1-9][0-9]{0,9})$")


class CertificateError(RemoteProtocolError):
    """A certificate (or what came with it) is not acceptable: `code` names why
    (``format``, ``signature``, ``keyring``, ``certifier``, ``revoked``, ``expired``,
    ``condition``, ``missing``), `reason` says it for a person."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


@dataclass(frozen=True)
class Certificate:
    """One BRC-52 certificate, fields encrypted (see the module doc)."""

    type: str
    serial_number: str
    subject: str
    certifier: str
    revocation_outpoint: str
    fields: Mapping[str, str] = field(default_factory=dict)
    signature: str = ""

    def __post_init__(self) -> None:
        _bytes32(self.type, "type")
        _bytes32(self.serial_number, "serialNumber")
        _pubkey(self.subject, "subject")
        _pubkey(self.certifier, "certifier")
        if not _OUTPOINT.match(self.revocation_outpoint):
            raise CertificateError("format", "revocationOutpoint must be <txid hex>.<vout>")
        if len(self.fields) > MAX_FIELDS:
            raise CertificateError("format", f"more than {MAX_FIELDS} fields")
        for name, value in self.fields.items():
            if not isinstance(name, str) or not _NAME.match(name):
                why = f"field name {name!r} is not 1-{MAX_NAME} printable ASCII, no spaces"
                raise CertificateError("format", why)
            if not isinstance(value, str) or len(value) > MAX_VALUE:
                raise CertificateError("format", f"field {name} is not a value of <= {MAX_VALUE}")
            _base64(value, f"field {name}")
        if not names_sort_alike(self.fields):
            raise CertificateError(
                "format",
                "field names the reference SDK would sort otherwise (letters whose case "
                "decides, or _ and digits at one place): rename a field",
            )
        if self.signature:
            try:
                bytes.fromhex(self.signature)
            except ValueError:
                raise CertificateError("format", "signature must be hex") from None
        object.__setattr__(self, "fields", dict(sorted(self.fields.items())))

    # ---------------------------------------------------------------- forms

    def preimage(self) -> bytes:
        """The binary form without the signature: what the certifier signs."""
        txid, vout = self.revocation_outpoint.split(".")
        out = bytearray()
        out += base64.b64decode(self.type)
        out += base64.b64decode(self.serial_number)
        out += bytes.fromhex(self.subject)
        out += bytes.fromhex(self.certifier)
        out += bytes.fromhex(txid)
        out += varint(int(vout))
        out += varint(len(self.fields))
        for name, value in self.fields.items():  # sorted by name (__post_init__)
            for part in (name.encode(), value.encode()):
                out += varint(len(part)) + part
        return bytes(out)

    def to_binary(self, include_signature: bool = True) -> bytes:
        """The binary form (BRC-52), with the signature unless told otherwise."""
        signature = bytes.fromhex(self.signature) if include_signature else b""
        return self.preimage() + signature

    @classmethod
    def from_binary(cls, data: bytes) -> Certificate:
        """Parse the binary form (the signature is whatever follows the fields)."""
        reader = _Reader(data)
        type_ = base64.b64encode(reader.take(32)).decode()
        serial = base64.b64encode(reader.take(32)).decode()
        subject = reader.take(33).hex()
        certifier = reader.take(33).hex()
        txid = reader.take(32).hex()
        vout = reader.varint()
        count = reader.varint()
        if count > MAX_FIELDS:
            raise CertificateError("format", f"more than {MAX_FIELDS} fields")
        fields: dict[str, str] = {}
        for _ in range(count):
            name = reader.text(MAX_NAME)
            fields[name] = reader.text(MAX_VALUE)
        signature = reader.rest().hex()
        cert = cls(type_, serial, subject, certifier, f"{txid}.{vout}", fields, signature)
        if cert.to_binary() != data:
            raise CertificateError("format", "not in canonical form (field order, varints)")
        return cert

    def to_json(self) -> dict[str, Any]:
        """The JSON object of BRC-52 (the keyrings travel beside it)."""
        return {
            "type": self.type,
            "serialNumber": self.serial_number,
            "subject": self.subject,
            "certifier": self.certifier,
            "revocationOutpoint": self.revocation_outpoint,
            "fields": dict(self.fields),
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, obj: object) -> Certificate:
        """A certificate from its JSON object; `CertificateError` names what is wrong."""
        if not isinstance(obj, Mapping):
            raise CertificateError("format", "a certificate is a JSON object")
        try:
            fields = obj.get("fields", {})
            if not isinstance(fields, Mapping):
                raise CertificateError("format", "fields must be an object")
            values = [
                obj[k]
                for k in ("type", "serialNumber", "subject", "certifier", "revocationOutpoint")
            ]
            signature = obj.get("signature", "")
        except KeyError as exc:
            raise CertificateError("format", f"no {exc.args[0]}") from None
        if not all(isinstance(v, str) for v in [*values, signature]):
            raise CertificateError("format", "every certificate member is a string")
        type_, serial, subject, certifier, outpoint = values
        return cls(type_, serial, subject, certifier, outpoint, dict(fields), signature)

    # ---------------------------------------------------------------- signature

    def signed(self, certifier_key: PrivateKey) -> Certificate:
        """This certificate signed by `certifier_key` (which must be its certifier's)."""
        if certifier_key.public_key().hex() != self.certifier:
            raise CertificateError("certifier", "the signing key is not the certifier's")
        key = KeyDeriver(certifier_key).derive_private_key(
            SIGNATURE_PROTOCOL, self._key_id(), Counterparty(CounterpartyType.ANYONE)
        )
        signature: bytes = key.sign(self.preimage(), hasher=_sha256)
        return replace(self, signature=signature.hex())

    def verify(self) -> None:
        """Check the certifier's signature; `CertificateError("signature")` if it fails."""
        if not self.signature:
            raise CertificateError("signature", "the certificate is not signed")
        counterparty = Counterparty(CounterpartyType.OTHER, PublicKey(self.certifier))
        key = KeyDeriver(ANYONE).derive_public_key(
            SIGNATURE_PROTOCOL, self._key_id(), counterparty, for_self=False
        )
        try:
            good = key.verify(bytes.fromhex(self.signature), self.preimage(), hasher=_sha256)
        except Exception:  # a DER the library cannot parse: as bad as a wrong one
            good = False
        if not good:
            raise CertificateError("signature", "the certifier's signature does not verify")

    def _key_id(self) -> str:
        return f"{self.type} {self.serial_number}"


def type_id(name: str) -> str:
    """A certificate type from a readable name: base64 of SHA-256 of the name (BRC-52
    types are 32 bytes; this is how m2mesh names its own, e.g. ``m2mesh.calibration``)."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def names_sort_alike(names: Iterable[str]) -> bool:
    """Whether bytewise order (the spec's) and the reference's `localeCompare` put
    `names` (printable ASCII) in the same order, none two equal but for case."""
    ordered = sorted(names)
    if any(c not in _LOCALE_RANK for name in ordered for c in name.lower()):
        return False
    ranks = [tuple(_LOCALE_RANK[c] for c in name.lower()) for name in ordered]
    return all(a < b for a, b in itertools.pairwise(ranks))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bytes32(text: str, what: str) -> None:
    if not isinstance(text, str) or len(_base64(text, what)) != 32:
        raise CertificateError("format", f"{what} must be base64 of 32 bytes")


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("format", f"{what} is not base64") from None


def _pubkey(text: str, what: str) -> None:
    try:
        raw = bytes.fromhex(text)
        if len(raw) != 33:
            raise ValueError
        PublicKey(raw)
    except Exception:  # bsv raises several kinds for a point off the curve
        raise CertificateError("format", f"{what} is not a compressed public key") from None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise CertificateError("format", "the certificate is truncated")
        part = self._data[self._at : self._at + n]
        self._at += n
        return part

    def varint(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(size), "little")

    def text(self, limit: int) -> str:
        size = self.varint()
        if size > limit:
            raise CertificateError("format", f"a string longer than {limit}")
        try:
            return self.take(size).decode()
        except UnicodeDecodeError:
            raise CertificateError("format", "a string is not UTF-8") from None

    def rest(self) -> bytes:
        part = self._data[self._at :]
        self._at = len(self._data)
        return part


__all__ = [
    "ANYONE",
    "LOCALE_ORDER",
    "MAX_FIELDS",
    "NO_REVOCATION",
    "SIGNATURE_PROTOCOL",
    "Certificate",
    "CertificateError",
    "names_sort_alike",
    "type_id",
]
