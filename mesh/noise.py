"""Noise_XX_25519_ChaChaPoly_BLAKE2b: the handshake and the transport cipher.

This module owns the Noise Protocol Framework (revision 34) as m2mesh uses it: the
``XX`` pattern with X25519, ChaCha20-Poly1305 (IETF) and BLAKE2b, built only from
pynacl primitives and :mod:`hashlib`. It takes bytes in and returns bytes out and
must never do I/O, look at a clock, or know about identities: binding the Noise
static key to a BSV identity is the session layer's job (``mesh.session``).

Decisions the spec leaves open:

* A handshake that fails (bad authentication tag, malformed message, invalid DH
  result) is dead: every later call raises :class:`HandshakeStateError`.
* :meth:`HandshakeState.split` may be called once, so two cipher pairs with the
  same keys (and hence reused nonces) can never exist.
* Every Noise message, handshake or transport, is at most ``MAX_MESSAGE_LEN``
  bytes including the tag; larger frames must be chunked by the caller.

(docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

import nacl.bindings as _sodium
import nacl.exceptions
import nacl.utils

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "PROTOCOL_NAME",
    "TAGLEN",
    "CipherState",
    "DecryptError",
    "HandshakeState",
    "HandshakeStateError",
    "KeyPair",
    "NoiseError",
    "NonceExhausted",
]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
DHLEN = 32
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535
_MAX_NONCE = 2**64 - 1  # reserved by the spec: never used for a message, only by REKEY
_NONCE = struct.Struct("<4xQ")  # 4 zero bytes + 64-bit little-endian counter

# The XX pattern as data: message i is written by the initiator when i is even.
_XX: tuple[tuple[str, ...], ...] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)


class NoiseError(Exception):
    """Base class for every error raised by this module."""


class DecryptError(NoiseError):
    """A ciphertext failed authentication (or could not be a ciphertext at all)."""


class HandshakeStateError(NoiseError):
    """A handshake call was made out of turn, after completion, or after failure."""


class NonceExhausted(NoiseError):
    """The cipher's counter reached 2^64-1; the key must not be used again."""


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    # HKDF as in spec section 4.3; hmac uses BLAKE2b's 128-byte block (RFC 2104).
    temp_key = hmac.digest(chaining_key, ikm, hashlib.blake2b)
    out1 = hmac.digest(temp_key, b"\x01", hashlib.blake2b)
    out2 = hmac.digest(temp_key, out1 + b"\x02", hashlib.blake2b)
    return out1, out2


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return _sodium.crypto_scalarmult(private, public)
    except nacl.exceptions.CryptoError:
        # libsodium refuses low-order points (an all-zero shared secret).
        raise NoiseError("invalid X25519 public key") from None


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; the private half is kept out of ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """Return a fresh random key pair."""
        return cls.from_private(nacl.utils.random(DHLEN))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """Return the key pair for a 32-byte X25519 private key."""
        if len(private) != DHLEN:
            raise ValueError(f"X25519 private key must be {DHLEN} bytes")
        return cls(private, _sodium.crypto_scalarmult_base(private))


class CipherState:
    """A ChaCha20-Poly1305 key and its 64-bit message counter (spec section 5.1).

    Without a key, ``encrypt_with_ad``/``decrypt_with_ad`` pass data through, as
    the handshake requires; the transport fast path ``encrypt``/``decrypt``
    refuses to, so a keyless cipher can never leak plaintext onto the wire.
    """

    __slots__ = ("_k", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        """Hold ``key`` (or no key yet) with the counter at zero."""
        if key is not None and len(key) != KEYLEN:
            raise ValueError(f"cipher key must be {KEYLEN} bytes")
        self._k = key
        self._n = 0

    @property
    def n(self) -> int:
        """The nonce the next message will use."""
        return self._n

    def has_key(self) -> bool:
        """Whether a key is set."""
        return self._k is not None

    def set_nonce(self, n: int) -> None:
        """Set the counter, e.g. for out-of-order transports that carry it."""
        if not 0 <= n <= _MAX_NONCE:
            raise ValueError("nonce out of range")
        self._n = n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT with associated data; returns the plaintext if no key is set."""
        if self._k is None:
            return plaintext
        return self.encrypt(plaintext, ad)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT with associated data; raises :class:`DecryptError`.

        The counter advances only on success, so a forged message costs nothing.
        """
        if self._k is None:
            return ciphertext
        return self.decrypt(ciphertext, ad)

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        """Encrypt a transport message under the current nonce, then advance it."""
        if self._k is None:
            raise NoiseError("cipher has no key")
        if len(plaintext) > MAX_MESSAGE_LEN - TAGLEN:
            raise NoiseError("plaintext exceeds the Noise message limit")
        if self._n >= _MAX_NONCE:
            raise NonceExhausted("nonce space exhausted; rekey or start a new session")
        out = _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, _NONCE.pack(self._n), self._k
        )
        self._n += 1
        return out

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """Decrypt a transport message under the current nonce, then advance it."""
        if self._k is None:
            raise NoiseError("cipher has no key")
        if not TAGLEN <= len(ciphertext) <= MAX_MESSAGE_LEN:
            raise DecryptError("ciphertext length out of range")
        if self._n >= _MAX_NONCE:
            raise NonceExhausted("nonce space exhausted; rekey or start a new session")
        try:
            out = _sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _NONCE.pack(self._n), self._k
            )
        except nacl.exceptions.CryptoError:
            raise DecryptError("authentication failed") from None
        self._n += 1
        return out

    def rekey(self) -> None:
        """Replace the key with REKEY(k); the counter is left as it is."""
        if self._k is None:
            raise NoiseError("cipher has no key")
        self._k = _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(KEYLEN), b"", _NONCE.pack(_MAX_NONCE), self._k
        )[:KEYLEN]


class _SymmetricState:
    """ck, h and the handshake cipher (spec section 5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1[:KEYLEN]), CipherState(k2[:KEYLEN])


class HandshakeState:
    """One side of a Noise XX handshake (spec section 5.3).

    Call ``write_message``/``read_message`` in turn (the initiator writes first)
    until ``complete``; then ``split`` once for the transport ciphers.
    """

    def __init__(
        self,
        initiator: bool,
        s: KeyPair,
        prologue: bytes = b"",
        e: KeyPair | None = None,
    ) -> None:
        """Start a handshake; ``e`` fixes the ephemeral key (test vectors only)."""
        self._initiator = initiator
        self._s = s
        self._e = e
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._ss = _SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(prologue)
        self._step = 0
        self._failed = False
        self._split_done = False

    @property
    def initiator(self) -> bool:
        """Whether this side sends the first message."""
        return self._initiator

    @property
    def complete(self) -> bool:
        """Whether all three XX messages have been processed."""
        return self._step == len(_XX)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once its ``s`` token has been read."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The final ``h``, for channel binding; only defined once complete."""
        if not self.complete:
            raise HandshakeStateError("handshake hash is only final once complete")
        return self._ss.h

    def write_message(self, payload: bytes) -> bytes:
        """Produce the next handshake message carrying ``payload``."""
        tokens = self._begin(writing=True)
        ss = self._ss
        self._failed = True  # cleared only once the message is fully written
        out: list[bytes] = []
        for token in tokens:
            if token == "e":
                if self._e is None:
                    self._e = KeyPair.generate()
                out.append(self._e.public)
                ss.mix_hash(self._e.public)
            elif token == "s":
                out.append(ss.encrypt_and_hash(self._s.public))
            else:
                ss.mix_key(self._dh(token))
        out.append(ss.encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message exceeds the Noise message limit")
        self._failed = False
        self._step += 1
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        tokens = self._begin(writing=False)
        ss = self._ss
        self._failed = True  # cleared only once the message is fully read
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message exceeds the Noise message limit")
        rest = bytes(message)
        for token in tokens:
            if token == "e":
                if len(rest) < DHLEN:
                    raise NoiseError("handshake message too short")
                self._re, rest = rest[:DHLEN], rest[DHLEN:]
                ss.mix_hash(self._re)
            elif token == "s":
                size = DHLEN + TAGLEN if ss.cipher.has_key() else DHLEN
                if len(rest) < size:
                    raise NoiseError("handshake message too short")
                self._rs = ss.decrypt_and_hash(rest[:size])
                rest = rest[size:]
            else:
                ss.mix_key(self._dh(token))
        payload = ss.decrypt_and_hash(rest)
        self._failed = False
        self._step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Return (initiator->responder, responder->initiator) ciphers, once."""
        if not self.complete:
            raise HandshakeStateError("handshake is not complete")
        if self._split_done:
            raise HandshakeStateError("split() already called")
        self._split_done = True
        return self._ss.split()

    def _begin(self, *, writing: bool) -> tuple[str, ...]:
        if self._failed:
            raise HandshakeStateError("handshake already failed")
        if self.complete:
            raise HandshakeStateError("handshake already complete")
        initiator_turn = self._step % 2 == 0
        if writing != (initiator_turn == self._initiator):
            verb = "write" if writing else "read"
            raise HandshakeStateError(f"not our turn to {verb} (message {self._step})")
        return _XX[self._step]

    def _dh(self, token: str) -> bytes:
        # A DH token names the initiator's key first and the responder's second;
        # each side combines its own private half with the peer's public half.
        first, second = token[0], token[1]
        mine, theirs = (first, second) if self._initiator else (second, first)
        own = self._e if mine == "e" else self._s
        public = self._re if theirs == "e" else self._rs
        assert own is not None and public is not None  # XX sends keys before use
        return _dh(own.private, public)
