"""BRC-52 in m2mesh alone: the binary form, the signature, the keyrings, and every
hostile change a peer could make (the reference implementation is checked against
this one in `test_interop.py`)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from bsv.keys import PrivateKey

from mesh.certs import (
    NO_REVOCATION,
    Certificate,
    CertificateError,
    Issued,
    issue,
    keyring_for,
    open_fields,
    type_id,
)
from mesh.chain.tx import varint

CALIBRATION = type_id("m2mesh.calibration")
VALUES = {"calibrated_until": "2027-06-30", "serial": "SN-0042", "owner": "ACME Metrology"}


@pytest.fixture
def keys() -> dict[str, PrivateKey]:
    return {name: PrivateKey() for name in ("lab", "sensor", "buyer", "other")}


def issued(keys: dict[str, PrivateKey], values: dict[str, str] | None = None) -> Issued:
    outpoint = "ab" * 32 + ".3"
    return issue(
        keys["lab"],
        keys["sensor"].public_key(),
        CALIBRATION,
        values or VALUES,
        revocation_outpoint=outpoint,
    )


def test_the_binary_form_is_laid_out_as_brc52_says(keys: dict[str, PrivateKey]) -> None:
    cert = issued(keys).certificate
    raw = cert.to_binary(include_signature=False)
    at = 0
    for size, expected in (
        (32, base64.b64decode(cert.type)),
        (32, base64.b64decode(cert.serial_number)),
        (33, bytes.fromhex(cert.subject)),
        (33, bytes.fromhex(cert.certifier)),
        (32, bytes.fromhex("ab" * 32)),
    ):
        assert raw[at : at + size] == expected
        at += size
    assert raw[at : at + 2] == varint(3) + varint(3)  # vout 3, three fields
    at += 2
    names = []
    while at < len(raw):
        size = raw[at]
        names.append(raw[at + 1 : at + 1 + size].decode())
        at += 1 + size
        size = raw[at]
        at += 1 + size
    assert names == sorted(VALUES)  # sorted by name, whatever the issue order
    assert cert.to_binary() == raw + bytes.fromhex(cert.signature)
    assert Certificate.from_binary(cert.to_binary()) == cert


def test_a_certificate_verifies_and_opens_only_what_is_revealed(
    keys: dict[str, PrivateKey],
) -> None:
    got = issued(keys)
    cert = got.certificate
    cert.verify()
    subject, certifier = keys["sensor"], keys["lab"].public_key()
    assert open_fields(subject, certifier, cert, got.master_keyring, master=True) == VALUES
    keyring = keyring_for(
        subject, cert, got.master_keyring, keys["buyer"].public_key(), ["calibrated_until"]
    )
    assert set(keyring) == {"calibrated_until"}  # the serial and owner stay hidden
    seen = open_fields(keys["buyer"], subject.public_key(), cert, keyring, master=False)
    assert seen == {"calibrated_until": "2027-06-30"}
    assert json.loads(json.dumps(cert.to_json())) == cert.to_json()
    assert Certificate.from_json(cert.to_json()) == cert


def test_a_forged_signature_is_refused(keys: dict[str, PrivateKey]) -> None:
    cert = issued(keys).certificate
    # Signed by someone else in the certifier's name.
    forged = replace(cert, certifier=keys["other"].public_key().hex())
    forged = replace(forged.signed(keys["other"]), certifier=cert.certifier)
    with pytest.raises(CertificateError, match="signature"):
        forged.verify()
    # One bit of the signature changed; no signature at all.
    bad = bytearray.fromhex(cert.signature)
    bad[-1] ^= 1
    with pytest.raises(CertificateError, match="signature"):
        replace(cert, signature=bad.hex()).verify()
    with pytest.raises(CertificateError, match="not signed"):
        replace(cert, signature="").verify()


def test_a_field_swapped_from_another_certificate_is_refused(
    keys: dict[str, PrivateKey],
) -> None:
    mine = issued(keys)
    theirs = issued(keys, {**VALUES, "calibrated_until": "2099-12-31"})
    swapped = dict(mine.certificate.fields)
    swapped["calibrated_until"] = theirs.certificate.fields["calibrated_until"]
    forged = replace(mine.certificate, fields=swapped)
    with pytest.raises(CertificateError, match="signature"):
        forged.verify()
    # And the other certificate's keyring entry beside our own certificate opens nothing.
    buyer = keys["buyer"].public_key()
    their_ring = keyring_for(
        keys["sensor"], theirs.certificate, theirs.master_keyring, buyer, ["calibrated_until"]
    )
    with pytest.raises(CertificateError, match="keyring"):
        open_fields(
            keys["buyer"], keys["sensor"].public_key(), mine.certificate, their_ring, master=False
        )


def test_a_keyring_for_another_verifier_opens_nothing(keys: dict[str, PrivateKey]) -> None:
    got = issued(keys)
    ring = keyring_for(
        keys["sensor"], got.certificate, got.master_keyring, keys["other"].public_key(), ["owner"]
    )
    with pytest.raises(CertificateError, match="keyring"):
        open_fields(keys["buyer"], keys["sensor"].public_key(), got.certificate, ring, master=False)


def test_every_changed_byte_of_a_certificate_is_caught(keys: dict[str, PrivateKey]) -> None:
    raw = issued(keys).certificate.to_binary()
    for at in range(len(raw)):
        changed = bytearray(raw)
        changed[at] ^= 0x01
        with pytest.raises(CertificateError):
            Certificate.from_binary(bytes(changed)).verify()


@pytest.mark.parametrize(
    ("member", "value", "why"),
    [
        ("type", "AAAA", "type must be base64 of 32 bytes"),
        ("subject", "02" + "00" * 32, "subject is not a compressed public key"),
        ("revocationOutpoint", "ab" * 32, "revocationOutpoint"),
        ("fields", {"bad name": "AAAA"}, "printable ASCII, no spaces"),
        ("fields", {"Owner": "AAAA", "owner": "AAAA"}, "would sort otherwise"),
        ("fields", {"x": "not base64!"}, "not base64"),
        ("signature", "zz", "hex"),
    ],
)
def test_a_malformed_certificate_names_its_fault(
    keys: dict[str, PrivateKey], member: str, value: object, why: str
) -> None:
    obj = issued(keys).certificate.to_json()
    obj[member] = value
    with pytest.raises(CertificateError, match=why):
        Certificate.from_json(obj)


def test_an_unrevocable_certificate_and_a_type_name() -> None:
    lab, sensor = PrivateKey(), PrivateKey()
    cert = issue(lab, sensor.public_key(), type_id("x"), {"a": "1"}).certificate
    assert cert.revocation_outpoint == NO_REVOCATION
    assert len(base64.b64decode(cert.serial_number)) == 32
    cert.verify()


def test_field_names_are_any_printable_ascii_the_reference_sorts_alike() -> None:
    key = PrivateKey()
    values = {"firstName": "Ada", "lastName": "Lovelace", "serial-no.": "7", "x": "y"}
    issued = issue(key, PrivateKey().public_key(), CALIBRATION, values)
    cert = issued.certificate
    cert.verify()
    assert list(cert.fields) == ["firstName", "lastName", "serial-no.", "x"]
    assert Certificate.from_binary(cert.to_binary()) == cert
    assert Certificate.from_json(json.loads(json.dumps(cert.to_json()))) == cert


@pytest.mark.parametrize(
    "names",
    [
        ("first name",),  # a space
        ("n" * 51,),  # longer than the SDKs allow
        ("café",),  # not ASCII
        ("",),
        ("serial", "Serial"),  # equal but for case: the orders disagree
        ("Zeta", "alpha"),  # bytewise Z < a; localeCompare alpha < Zeta
        ("a_b", "a1"),  # bytewise 1 < _; localeCompare _ < 1
    ],
)
def test_field_names_refused(names: tuple[str, ...]) -> None:
    with pytest.raises(CertificateError, match="format"):
        issue(PrivateKey(), PrivateKey().public_key(), CALIBRATION, dict.fromkeys(names, "v"))
