"""BSV identity keys: create, save, load, sign, verify, derive.

An agent *is* its secp256k1 identity key. Its peer id is the 33-byte compressed
public key, shown as 66 hex characters. This module owns the key file format and
the few key operations every other layer needs; it never talks to the network.

Key file (JSON, mode 0600)::

    {"m2mesh_key": 1, "peer_id": "02ab...", "encryption": "none", "secret": "<hex>"}
    {"m2mesh_key": 1, "peer_id": "02ab...", "encryption": "argon2id-secretbox",
     "salt": "<hex>", "opslimit": N, "memlimit": N, "box": "<hex>"}

The peer id is stored in clear so tools can show it without the passphrase; after
decryption it is checked against the key, which also catches a corrupted file.
(docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bsv.keys
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils
from bsv.keys import PrivateKey, PublicKey

from mesh.errors import IdentityError

KEY_FILE_VERSION = 1
PEER_ID_BYTES = 33
_PLAIN = "none"
_SEALED = "argon2id-secretbox"


def _public_key(raw: bytes) -> PublicKey:
    """Parse a compressed public key, or raise ValueError."""
    if len(raw) != PEER_ID_BYTES or raw[0] not in (2, 3):
        raise ValueError("a peer id is a 33-byte compressed secp256k1 public key")
    return PublicKey(raw)


def parse_peer_id(text: str) -> bytes:
    """Turn a peer id in hex into its 33 key bytes, or raise ValueError saying why."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"peer id {text!r} is not hex") from None
    _public_key(raw)
    return raw


def is_valid_public_key(raw: bytes) -> bool:
    """True when `raw` is a compressed public key on the curve."""
    try:
        _public_key(raw)
    except ValueError:
        return False
    return True


def verify_digest(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """Check a strict-DER low-S ECDSA signature over a 32-byte digest.

    Never raises on malformed input from a peer: a bad key, digest length or DER
    encoding is simply an invalid signature.
    """
    if len(digest) != 32:
        return False
    try:
        key, serialized = _verifying_key(bytes(public_key))
        if _NATIVE_VERIFY is not None:  # the same libsecp256k1 call, minus re-serialising
            return bool(_NATIVE_VERIFY(signature, digest, serialized))
        return bool(key.verify(signature, digest, hasher=None))
    except ValueError:
        return False


def _native_verify() -> Callable[[bytes, bytes, bytes], bool] | None:
    """bsv-sdk's own libsecp256k1 verify taking the key's bytes, when that backend is
    loaded: `PublicKey.verify` calls exactly it, after serialising the key again (a
    sixth of the cost). None (use `PublicKey.verify`) with any other backend."""
    if getattr(bsv.keys, "_CRYPTO_BACKEND", None) != "native":
        return None
    verify = getattr(getattr(bsv.keys, "_bsv_native", None), "ecdsa_verify", None)
    return verify if callable(verify) else None


_NATIVE_VERIFY = _native_verify()


@functools.lru_cache(maxsize=1024)
def _verifying_key(raw: bytes) -> tuple[PublicKey, bytes]:
    """`_public_key` and its uncompressed serialisation, remembered: a channel's payee
    checks every payment against the same key, and parsing it (a point decompression)
    is a fifth of a verification. libsecp256k1 parses the key bytes on every verify
    too; uncompressed, that takes no square root (~12 % of a verify here). Only keys
    that parse are remembered (lru_cache keeps no exceptions)."""
    key = _public_key(raw)
    return key, key.serialize(compressed=False)


def derive_public_child(owner: bytes, counterparty: PrivateKey, invoice: str) -> bytes:
    """BRC-42: the public child key of `owner` that `counterparty` can compute.

    The owner computes the matching private key with `Identity.derive_child`.
    """
    child = _public_key(owner).derive_child(counterparty, invoice)
    return bytes(child.serialize(compressed=True))


@dataclass(frozen=True, eq=False)
class Identity:
    """An agent's identity key pair (bsv-sdk `PrivateKey`)."""

    key: PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(PrivateKey())

    @classmethod
    def from_secret(cls, secret: bytes) -> Identity:
        """Rebuild an identity from its 32 secret bytes."""
        if len(secret) != 32:
            raise ValueError("an identity secret is 32 bytes")
        return cls(PrivateKey(secret))

    @property
    def public_key(self) -> bytes:
        """The 33-byte compressed public key (the peer id's bytes)."""
        return bytes(self.key.public_key().serialize(compressed=True))

    @property
    def peer_id(self) -> str:
        """The peer id: the compressed public key in hex."""
        return self.public_key.hex()

    def secret(self) -> bytes:
        """The 32 secret bytes. Handle with care."""
        return bytes(self.key.serialize())

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest; returns strict DER with low S."""
        if len(digest) != 32:
            raise ValueError("sign_digest takes a 32-byte digest")
        return bytes(self.key.sign(digest, hasher=None))

    def derive_child(self, counterparty: bytes, invoice: str) -> PrivateKey:
        """BRC-42: our private child key for `counterparty` and `invoice`."""
        child: PrivateKey = self.key.derive_child(_public_key(counterparty), invoice)
        return child


# --------------------------------------------------------------------------- key files


def save_identity(
    identity: Identity,
    path: Path,
    passphrase: bytes | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write `identity` to `path` with mode 0600, atomically.

    Refuses to replace an existing file unless `overwrite` is set, so a typo can
    never destroy a machine's identity. With a passphrase the secret is sealed
    with an argon2id-derived key (pynacl `pwhash` + `SecretBox`).
    """
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} already exists; refusing to overwrite an identity key")
    document: dict[str, Any] = {"m2mesh_key": KEY_FILE_VERSION, "peer_id": identity.peer_id}
    if passphrase is None:
        document |= {"encryption": _PLAIN, "secret": identity.secret().hex()}
    else:
        ops = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
        mem = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_stretch(passphrase, salt, ops, mem))
        document |= {
            "encryption": _SEALED,
            "salt": salt.hex(),
            "opslimit": ops,
            "memlimit": mem,
            "box": bytes(box.encrypt(identity.secret())).hex(),
        }
    write_private_json(path, document)


def write_private_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write `document` as JSON to `path` atomically (a temporary file, fsync, rename),
    mode 0600 from the start: a key file, a certificate with its master keyring."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=1)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_identity(path: Path, passphrase: bytes | None = None) -> Identity:
    """Load an identity key file, refusing one that others can read.

    Every failure is an `IdentityError` whose message names the file and says
    what to do: fix permissions, give the passphrase, or restore from backup.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"{path}: no such key file (create one with `mesh keygen`)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
            f"an identity key must be private: run `chmod 600 {path}`"
        )
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict) or document.get("m2mesh_key") != KEY_FILE_VERSION:
            raise TypeError("not an m2mesh key file")
        expected_id = str(document["peer_id"])
        encryption = document["encryption"]
        if encryption == _PLAIN:
            if passphrase is not None:
                raise IdentityError(f"{path} is not encrypted but a passphrase was given")
            secret = bytes.fromhex(document["secret"])
        elif encryption == _SEALED:
            secret = _open_sealed(path, document, passphrase)
        else:
            raise TypeError(f"unknown encryption {encryption!r}")
        identity = Identity.from_secret(secret)
    except IdentityError:
        raise
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{path} is corrupted ({exc}); restore it from backup") from None
    if identity.peer_id != expected_id:
        raise IdentityError(f"{path} is corrupted (key does not match its peer id)")
    return identity


def _open_sealed(path: Path, document: dict[str, Any], passphrase: bytes | None) -> bytes:
    if passphrase is None:
        raise IdentityError(f"{path} is encrypted: a passphrase is needed")
    ops, mem = int(document["opslimit"]), int(document["memlimit"])
    # Bounds stop a crafted file from asking for gigabytes or hours of argon2.
    if not (1 <= ops <= 16 and 8192 <= mem <= 1 << 30):
        raise TypeError("argon2id parameters out of range")
    box = nacl.secret.SecretBox(_stretch(passphrase, bytes.fromhex(document["salt"]), ops, mem))
    try:
        return bytes(box.decrypt(bytes.fromhex(document["box"])))
    except nacl.exceptions.CryptoError:
        raise IdentityError(f"{path}: wrong passphrase (or the file is corrupted)") from None


def _stretch(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    if len(salt) != nacl.pwhash.argon2id.SALTBYTES:
        raise TypeError("bad salt length")
    return bytes(
        nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, ops, mem)
    )
