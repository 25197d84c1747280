"""m2mesh's BRC-52 against the TypeScript reference `@bsv/sdk`, both ways: what one
issues the other verifies and opens, byte for byte the same binary form, and a keyring
made by either for a verifier opens in the other (node runs the SDK, installed into a
temporary directory by the ``bsv_sdk`` fixture in `tests/conftest.py`)."""

from __future__ import annotations

import hashlib

import pytest
from bsv.keys import PrivateKey, PublicKey

from mesh.certs import Certificate, CertificateError, issue, keyring_for, open_fields, type_id
from tests.certs.node_sdk import NodeSdk


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(label.encode()).digest())


CERTIFIER, SUBJECT, VERIFIER, OTHER = (key(n) for n in ("lab", "sensor", "buyer", "other"))
TYPE = type_id("m2mesh.calibration")
OUTPOINT = bytes(range(0xA0, 0xC0)).hex() + ".300"
VALUES = {
    "owner": "ACME Metrology",
    "calibrated_until": "2027-06-30",
    "serial": "SN-0042",
    "accuracy": "0.5 %",
}


def hexkey(k: PrivateKey) -> str:
    return bytes(k.serialize()).hex()


def pub(k: PrivateKey) -> str:
    return str(k.public_key().hex())


def test_a_certificate_m2mesh_issues_verifies_in_the_sdk(bsv_sdk: NodeSdk) -> None:
    issued = issue(CERTIFIER, SUBJECT.public_key(), TYPE, VALUES, revocation_outpoint=OUTPOINT)
    cert = issued.certificate.to_json()
    assert bsv_sdk.call("verify", certificate=cert) == {"valid": True}
    # The same bytes both sides, with and without the signature.
    for signed in (False, True):
        theirs = bsv_sdk.call("binary", certificate=cert, includeSignature=signed)["hex"]
        assert theirs == issued.certificate.to_binary(include_signature=signed).hex()
    # The subject opens its master keyring in the SDK.
    opened = bsv_sdk.call(
        "decryptMaster",
        subjectKey=hexkey(SUBJECT),
        certifier=pub(CERTIFIER),
        masterKeyring=dict(issued.master_keyring),
        fields=cert["fields"],
    )
    assert opened == {"fields": VALUES}


def test_a_certificate_the_sdk_issues_verifies_in_m2mesh(bsv_sdk: NodeSdk) -> None:
    reply = bsv_sdk.call(
        "issue",
        certifierKey=hexkey(CERTIFIER),
        subject=pub(SUBJECT),
        type=TYPE,
        fields=VALUES,
        revocationOutpoint=OUTPOINT,
    )
    cert = Certificate.from_json(reply["certificate"])
    cert.verify()
    assert Certificate.from_binary(cert.to_binary()) == cert
    master = reply["masterKeyring"]
    assert open_fields(SUBJECT, CERTIFIER.public_key(), cert, master, master=True) == VALUES
    # A forged change to what the SDK issued is refused here too.
    fields = dict(cert.fields)
    fields["owner"] = fields["serial"]
    with pytest.raises(CertificateError, match="signature"):
        Certificate.from_json({**cert.to_json(), "fields": fields}).verify()


def test_a_keyring_m2mesh_makes_opens_in_the_sdk_and_only_for_its_verifier(
    bsv_sdk: NodeSdk,
) -> None:
    issued = issue(CERTIFIER, SUBJECT.public_key(), TYPE, VALUES, revocation_outpoint=OUTPOINT)
    ring = keyring_for(
        SUBJECT,
        issued.certificate,
        issued.master_keyring,
        VERIFIER.public_key(),
        ["calibrated_until"],
    )
    cert = issued.certificate.to_json()
    got = bsv_sdk.call(
        "decryptForVerifier", verifierKey=hexkey(VERIFIER), certificate=cert, keyring=ring
    )
    assert got == {"fields": {"calibrated_until": "2027-06-30"}}
    with pytest.raises(Exception, match="decrypt"):
        bsv_sdk.call(
            "decryptForVerifier", verifierKey=hexkey(OTHER), certificate=cert, keyring=ring
        )


def test_a_keyring_the_sdk_makes_opens_in_m2mesh_and_only_for_its_verifier(
    bsv_sdk: NodeSdk,
) -> None:
    reply = bsv_sdk.call(
        "issue",
        certifierKey=hexkey(CERTIFIER),
        subject=pub(SUBJECT),
        type=TYPE,
        fields=VALUES,
        revocationOutpoint=OUTPOINT,
    )
    cert = Certificate.from_json(reply["certificate"])
    ring = bsv_sdk.call(
        "keyringForVerifier",
        subjectKey=hexkey(SUBJECT),
        certifier=pub(CERTIFIER),
        verifier=pub(VERIFIER),
        fields=reply["certificate"]["fields"],
        fieldsToReveal=["calibrated_until", "accuracy"],
        masterKeyring=reply["masterKeyring"],
        serialNumber=cert.serial_number,
    )["keyring"]
    subject = PublicKey(pub(SUBJECT))
    seen = open_fields(VERIFIER, subject, cert, ring, master=False)
    assert seen == {"calibrated_until": "2027-06-30", "accuracy": "0.5 %"}
    with pytest.raises(CertificateError, match="keyring"):
        open_fields(OTHER, subject, cert, ring, master=False)


CAMEL = {"firstName": "Ada", "lastName": "Lovelace", "serialNumber": "SN-7", "model_x": "A1"}
"""Field names as @bsv/sdk users write them (camelCase, an underscore, a capital)."""


def test_camel_case_field_names_verify_both_ways(bsv_sdk: NodeSdk) -> None:
    issued = issue(CERTIFIER, SUBJECT.public_key(), TYPE, CAMEL, revocation_outpoint=OUTPOINT)
    cert = issued.certificate.to_json()
    assert bsv_sdk.call("verify", certificate=cert) == {"valid": True}
    theirs = bsv_sdk.call("binary", certificate=cert, includeSignature=True)["hex"]
    assert theirs == issued.certificate.to_binary().hex()
    reply = bsv_sdk.call(
        "issue",
        certifierKey=hexkey(CERTIFIER),
        subject=pub(SUBJECT),
        type=TYPE,
        fields=CAMEL,
        revocationOutpoint=OUTPOINT,
    )
    back = Certificate.from_json(reply["certificate"])
    back.verify()
    master = reply["masterKeyring"]
    assert open_fields(SUBJECT, CERTIFIER.public_key(), back, master, master=True) == CAMEL


def test_names_the_sdk_would_sort_otherwise_are_refused(bsv_sdk: NodeSdk) -> None:
    # The SDK issues it (sorting with localeCompare: "a_b" before "a1"); m2mesh sorts
    # bytewise ("a1" first), so it refuses it rather than verify other bytes.
    reply = bsv_sdk.call(
        "issue",
        certifierKey=hexkey(CERTIFIER),
        subject=pub(SUBJECT),
        type=TYPE,
        fields={"a_b": "x", "a1": "y"},
        revocationOutpoint=OUTPOINT,
    )
    binary = bsv_sdk.call("binary", certificate=reply["certificate"], includeSignature=True)
    with pytest.raises(CertificateError, match="format"):
        Certificate.from_json(reply["certificate"])
    with pytest.raises(CertificateError, match="format"):
        Certificate.from_binary(bytes.fromhex(binary["hex"]))
