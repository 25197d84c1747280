"""The `@bsv/sdk` harness checked against itself: what the reference implementation issues,
verifies, serialises and decrypts, so the interop tests can trust what it says."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from bsv.keys import PrivateKey

from tests.certs.node_sdk import NodeSdk, SdkError


def key(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


CERTIFIER_KEY = key("certifier")
SUBJECT_KEY = key("subject")
VERIFIER_KEY = key("verifier")
OTHER_KEY = key("other")

TYPE = base64.b64encode(hashlib.sha256(b"m2mesh test certificate").digest()).decode()
SERIAL = base64.b64encode(bytes(range(32))).decode()
# an asymmetric txid, so the binary form shows which byte order the SDK writes; vout > 252
# so it needs a 3-byte VarInt
TXID = bytes(range(0xA0, 0xC0)).hex()
VOUT = 300
OUTPOINT = f"{TXID}.{VOUT}"
# inserted out of order (the binary form sorts them), one non-ASCII value
FIELDS = {"owner": "Zoë Müller 🚀", "calibrated_until": "2027-06-30", "serial": "SN-0042"}


def pubkey(private_hex: str) -> str:
    hex_: str = PrivateKey(bytes.fromhex(private_hex)).public_key().hex()
    return hex_


@pytest.fixture(scope="module")
def issued(bsv_sdk: NodeSdk) -> dict[str, Any]:
    return bsv_sdk.call(
        "issue",
        certifierKey=CERTIFIER_KEY,
        subject=pubkey(SUBJECT_KEY),
        type=TYPE,
        fields=FIELDS,
        revocationOutpoint=OUTPOINT,
        serialNumber=SERIAL,
    )


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def test_installed_version(bsv_sdk: NodeSdk) -> None:
    assert bsv_sdk.version == "2.1.0"


def test_pubkey_agrees_with_python(bsv_sdk: NodeSdk) -> None:
    for private in (CERTIFIER_KEY, SUBJECT_KEY):
        assert bsv_sdk.call("pubkey", key=private) == {"pubkey": pubkey(private)}


def test_issue_shape(issued: dict[str, Any]) -> None:
    cert = issued["certificate"]
    assert cert["type"] == TYPE
    assert cert["serialNumber"] == SERIAL
    assert cert["subject"] == pubkey(SUBJECT_KEY)
    assert cert["certifier"] == pubkey(CERTIFIER_KEY)
    assert cert["revocationOutpoint"] == OUTPOINT
    assert list(cert["fields"]) == list(FIELDS)
    for name, plaintext in FIELDS.items():
        # IV 32 || ciphertext || GCM tag 16
        sealed = base64.b64decode(cert["fields"][name], validate=True)
        assert len(sealed) == 32 + len(plaintext.encode()) + 16
    assert set(issued["masterKeyring"]) == set(FIELDS)
    signature = bytes.fromhex(cert["signature"])
    assert signature[0] == 0x30
    assert signature[1] == len(signature) - 2


def test_serial_number_generated_when_absent(bsv_sdk: NodeSdk) -> None:
    serials = set()
    for _ in range(2):
        cert = bsv_sdk.call(
            "issue",
            certifierKey=CERTIFIER_KEY,
            subject=pubkey(SUBJECT_KEY),
            type=TYPE,
            fields={"a": "1"},
            revocationOutpoint="0" * 64 + ".0",
        )["certificate"]
        assert len(base64.b64decode(cert["serialNumber"], validate=True)) == 32
        serials.add(cert["serialNumber"])
    assert len(serials) == 2


def test_verify_valid(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    assert bsv_sdk.call("verify", certificate=issued["certificate"]) == {"valid": True}


def _flip_signature_byte(cert: dict[str, Any], index: int) -> dict[str, Any]:
    signature = bytearray.fromhex(cert["signature"])
    signature[index] ^= 0x01
    return {**cert, "signature": signature.hex()}


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: _flip_signature_byte(c, -1), id="signature-last-byte"),
        pytest.param(lambda c: _flip_signature_byte(c, 10), id="signature-r-byte"),
        pytest.param(lambda c: _flip_signature_byte(c, 0), id="signature-der-tag"),
        pytest.param(
            lambda c: {**c, "fields": {**c["fields"], "owner": c["fields"]["serial"]}},
            id="field-value",
        ),
        pytest.param(lambda c: {**c, "revocationOutpoint": f"{TXID}.{VOUT + 1}"}, id="vout"),
        pytest.param(lambda c: {**c, "subject": pubkey(OTHER_KEY)}, id="subject"),
    ],
)
def test_verify_rejects_tampering(bsv_sdk: NodeSdk, issued: dict[str, Any], tamper: Any) -> None:
    reply = bsv_sdk.call("verify", certificate=tamper(issued["certificate"]))
    assert reply["valid"] is False
    assert reply["error"]


def test_binary_layout(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    cert = issued["certificate"]
    data = bytes.fromhex(bsv_sdk.call("binary", certificate=cert, includeSignature=False)["hex"])
    assert data[0:32] == base64.b64decode(cert["type"])
    assert data[32:64] == base64.b64decode(cert["serialNumber"])
    assert data[64:97] == bytes.fromhex(cert["subject"])
    assert data[97:130] == bytes.fromhex(cert["certifier"])
    # the txid goes in as written in the outpoint string (display order), not reversed
    assert data[130:162] == bytes.fromhex(TXID)
    assert data[130:162] != bytes.fromhex(TXID)[::-1]
    assert data[162:165] == b"\xfd\x2c\x01"
    vout, pos = read_varint(data, 162)
    assert vout == VOUT
    count, pos = read_varint(data, pos)
    assert count == len(FIELDS)
    names = []
    for _ in range(count):
        size, pos = read_varint(data, pos)
        name = data[pos : pos + size].decode()
        pos += size
        size, pos = read_varint(data, pos)
        value = data[pos : pos + size]
        pos += size
        assert value == cert["fields"][name].encode("ascii")  # the base64 text, not its bytes
        names.append(name)
    assert names == sorted(FIELDS)
    assert pos == len(data)

    with_signature = bsv_sdk.call("binary", certificate=cert, includeSignature=True)["hex"]
    assert bytes.fromhex(with_signature) == data + bytes.fromhex(cert["signature"])


def test_binary_disabled_outpoint(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    cert = {**issued["certificate"], "revocationOutpoint": "0" * 64 + ".0"}
    data = bytes.fromhex(bsv_sdk.call("binary", certificate=cert, includeSignature=False)["hex"])
    assert data[130:163] == bytes(33)  # 32 zero bytes of txid, VarInt 0


def test_from_binary_round_trip(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    cert = issued["certificate"]
    hex_ = bsv_sdk.call("binary", certificate=cert, includeSignature=True)["hex"]
    parsed = bsv_sdk.call("fromBinary", hex=hex_)["certificate"]
    assert parsed == cert
    assert list(parsed["fields"]) == sorted(FIELDS)


def test_subject_decrypts_master_keyring(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    cert = issued["certificate"]
    reply = bsv_sdk.call(
        "decryptMaster",
        subjectKey=SUBJECT_KEY,
        certifier=cert["certifier"],
        masterKeyring=issued["masterKeyring"],
        fields=cert["fields"],
    )
    assert reply == {"fields": FIELDS}


def test_master_keyring_is_for_the_subject_only(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    cert = issued["certificate"]
    with pytest.raises(SdkError, match="Failed to decrypt"):
        bsv_sdk.call(
            "decryptMaster",
            subjectKey=OTHER_KEY,
            certifier=cert["certifier"],
            masterKeyring=issued["masterKeyring"],
            fields=cert["fields"],
        )


def _keyring_for_verifier(bsv_sdk: NodeSdk, issued: dict[str, Any], reveal: list[str]) -> Any:
    cert = issued["certificate"]
    return bsv_sdk.call(
        "keyringForVerifier",
        subjectKey=SUBJECT_KEY,
        certifier=cert["certifier"],
        verifier=pubkey(VERIFIER_KEY),
        fields=cert["fields"],
        fieldsToReveal=reveal,
        masterKeyring=issued["masterKeyring"],
        serialNumber=cert["serialNumber"],
    )["keyring"]


def test_keyring_for_verifier_decrypts_for_that_verifier_only(
    bsv_sdk: NodeSdk, issued: dict[str, Any]
) -> None:
    reveal = ["owner", "serial"]
    keyring = _keyring_for_verifier(bsv_sdk, issued, reveal)
    assert sorted(keyring) == reveal
    cert = issued["certificate"]
    reply = bsv_sdk.call(
        "decryptForVerifier", verifierKey=VERIFIER_KEY, certificate=cert, keyring=keyring
    )
    assert reply == {"fields": {name: FIELDS[name] for name in reveal}}
    for wrong in (OTHER_KEY, SUBJECT_KEY, CERTIFIER_KEY):
        with pytest.raises(SdkError, match="Failed to decrypt selectively revealed"):
            bsv_sdk.call("decryptForVerifier", verifierKey=wrong, certificate=cert, keyring=keyring)


def test_master_keyring_is_not_a_verifier_keyring(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    with pytest.raises(SdkError):
        bsv_sdk.call(
            "decryptForVerifier",
            verifierKey=SUBJECT_KEY,
            certificate=issued["certificate"],
            keyring=issued["masterKeyring"],
        )


def test_keyring_for_unknown_field(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    with pytest.raises(SdkError, match="subset of the certificate fields"):
        _keyring_for_verifier(bsv_sdk, issued, ["owner", "nope"])


def test_sign_reproduces_issued_signature(bsv_sdk: NodeSdk, issued: dict[str, Any]) -> None:
    # RFC 6979 signatures are deterministic: re-signing the same preimage gives the same bytes
    cert = issued["certificate"]
    unsigned = {k: v for k, v in cert.items() if k != "signature"}
    signed = bsv_sdk.call("sign", certifierKey=CERTIFIER_KEY, certificate=unsigned)
    assert signed["certificate"]["signature"] == cert["signature"]


def test_harness_errors(bsv_sdk: NodeSdk) -> None:
    with pytest.raises(SdkError, match="unknown op"):
        bsv_sdk.call("nope")
    with pytest.raises(SdkError, match="32-byte private key"):
        bsv_sdk.call("pubkey", key="abc")
    with pytest.raises(SdkError, match="missing argument: certificate"):
        bsv_sdk.call("verify")
