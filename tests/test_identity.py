"""Identity keys: files, permissions, passphrases, signatures, BRC-42."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mesh.errors import IdentityError
from mesh.identity import (
    Identity,
    derive_public_child,
    is_valid_public_key,
    load_identity,
    parse_peer_id,
    save_identity,
    verify_digest,
)


def test_plain_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "id.key"
    save_identity(identity, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_identity(path)
    assert loaded.peer_id == identity.peer_id
    assert loaded.secret() == identity.secret()
    assert len(identity.peer_id) == 66 and identity.peer_id[:2] in ("02", "03")


def test_passphrase_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "id.key"
    save_identity(identity, path, b"correct horse")
    assert identity.secret().hex() not in path.read_text()
    assert load_identity(path, b"correct horse").secret() == identity.secret()


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    save_identity(Identity.generate(), path, b"right")
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(path, b"wrong")
    with pytest.raises(IdentityError, match="passphrase is needed"):
        load_identity(path)


def test_passphrase_given_for_plain_file(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    save_identity(Identity.generate(), path)
    with pytest.raises(IdentityError, match="not encrypted"):
        load_identity(path, b"pw")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id.key"
    save_identity(Identity.generate(), path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match=f"chmod 600 {path}"):
        load_identity(path)


def test_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    first = Identity.generate()
    save_identity(first, path)
    with pytest.raises(IdentityError, match="already exists"):
        save_identity(Identity.generate(), path)
    assert load_identity(path).peer_id == first.peer_id


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="mesh keygen"):
        load_identity(tmp_path / "nope.key")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: "not json at all",
        lambda d: json.dumps({**d, "secret": d["secret"][:-2]}),
        lambda d: json.dumps({**d, "secret": "zz" * 32}),
        lambda d: json.dumps({**d, "peer_id": "03" + "11" * 32}),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "secret"}),
        lambda d: json.dumps({**d, "m2mesh_key": 99}),
        lambda d: json.dumps({**d, "encryption": "rot13"}),
        lambda d: json.dumps([1, 2, 3]),
    ],
)
def test_corrupted_file(tmp_path: Path, mangle: object) -> None:
    path = tmp_path / "id.key"
    save_identity(Identity.generate(), path)
    document = json.loads(path.read_text())
    path.write_text(mangle(document))  # type: ignore[operator]
    with pytest.raises(IdentityError, match="corrupted"):
        load_identity(path)


def test_corrupted_sealed_box(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    save_identity(Identity.generate(), path, b"pw")
    document = json.loads(path.read_text())
    box = bytearray(bytes.fromhex(document["box"]))
    box[-1] ^= 1
    path.write_text(json.dumps({**document, "box": box.hex()}))
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(path, b"pw")
    path.write_text(json.dumps({**document, "memlimit": 1 << 40}))
    with pytest.raises(IdentityError, match="corrupted"):
        load_identity(path, b"pw")


def test_sign_and_verify_digest() -> None:
    identity = Identity.generate()
    digest = hashlib.sha256(b"reading 42").digest()
    sig = identity.sign_digest(digest)
    assert verify_digest(identity.public_key, digest, sig)
    assert not verify_digest(identity.public_key, hashlib.sha256(b"other").digest(), sig)
    assert not verify_digest(Identity.generate().public_key, digest, sig)
    # Garbage from a peer is an invalid signature, never an exception.
    for bad_sig in (b"", sig[:-1], sig + b"\x00", b"\x30" * 70):
        assert not verify_digest(identity.public_key, digest, bad_sig)
    assert not verify_digest(b"\x02" + bytes(32), digest, sig)
    assert not verify_digest(identity.public_key, digest[:31], sig)


def test_signatures_are_low_s() -> None:
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    identity = Identity.generate()
    digest = hashlib.sha256(b"x").digest()
    for i in range(20):
        sig = identity.sign_digest(hashlib.sha256(digest + bytes([i])).digest())
        r_len = sig[3]
        s = int.from_bytes(sig[6 + r_len :], "big")
        assert s <= order // 2


def test_high_s_signature_rejected() -> None:
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    identity = Identity.generate()
    digest = hashlib.sha256(b"malleate me").digest()
    sig = identity.sign_digest(digest)
    r_len = sig[3]
    r = sig[4 : 4 + r_len]
    s = int.from_bytes(sig[6 + r_len :], "big")
    high = (order - s).to_bytes(33, "big").lstrip(b"\x00")
    if high[0] & 0x80:
        high = b"\x00" + high
    body = b"\x02" + bytes([len(r)]) + r + b"\x02" + bytes([len(high)]) + high
    malleated = b"\x30" + bytes([len(body)]) + body
    assert not verify_digest(identity.public_key, digest, malleated)


def test_brc42_child_keys_agree() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    invoice = "2-m2mesh channel-chan42"
    alice_child_private = alice.derive_child(bob.public_key, invoice)
    alice_child_public = derive_public_child(alice.public_key, bob.key, invoice)
    assert alice_child_private.public_key().serialize() == alice_child_public
    assert alice_child_public != alice.public_key
    other = derive_public_child(alice.public_key, bob.key, invoice + "x")
    assert other != alice_child_public


def test_peer_id_parsing() -> None:
    identity = Identity.generate()
    assert parse_peer_id(identity.peer_id) == identity.public_key
    assert is_valid_public_key(identity.public_key)
    for bad in ("zz", "02" + "00" * 32, identity.peer_id[:-2], "04" + identity.peer_id[2:]):
        with pytest.raises(ValueError):
            parse_peer_id(bad)


def test_the_fast_verify_path_agrees_with_bsv_sdk() -> None:
    """`verify_digest` calls bsv-sdk's native verify on cached key bytes when it can;
    every verdict must be `PublicKey.verify`'s own."""
    from bsv.keys import PublicKey

    from mesh import identity as module

    assert module._NATIVE_VERIFY is not None  # the backend this project installs
    signer, other = Identity.generate(), Identity.generate()
    digest = hashlib.sha256(b"pay 42").digest()
    sig = signer.sign_digest(digest)
    cases = [
        (signer.public_key, digest, sig),
        (signer.public_key, hashlib.sha256(b"pay 43").digest(), sig),
        (other.public_key, digest, sig),
        (signer.public_key, digest, sig[:-1] + bytes([sig[-1] ^ 1])),
        (signer.public_key, digest, sig[:10]),
        (signer.public_key, digest, b""),
    ]
    for key, message, signature in cases:
        try:
            expected = bool(PublicKey(key).verify(signature, message, hasher=None))
        except ValueError:
            expected = False
        assert verify_digest(key, message, signature) is expected
