"""Primitives scenario: the physical limits every other scenario is measured against.

In this process, on one core, best of three short repeats (the least disturbed by
neighbours on a shared machine):

- bsv-sdk ECDSA sign and verify of a 32-byte digest, and the two back to back
  (the payments scenario's ceiling: a payment costs one of each); beside bsv-sdk's
  verify, `mesh.identity.verify_digest`, the same libsecp256k1 call the payee makes
  on its cached, uncompressed key (no square root per call);
- the payment sighash: `mesh.channel.txs.PaymentSigner` (cached BIP143 head)
  against bsv-sdk's ``tx.preimage`` + hash256 on a prebuilt payment tx, checked
  byte for byte first;
- ChaCha20-Poly1305 seal/open through `mesh.noise.CipherState` against the raw
  libsodium binding it wraps, for 100 B and 4 KiB;
- `mesh.wire` encode/decode of a `ChannelPay` frame against raw msgpack, and the
  decode of a `ChannelPays` of 32 per payment against a `ChannelPay` each
  packb/unpackb of the same array (the schema checks are the difference).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import time
from collections.abc import Callable

import msgpack
import nacl.bindings
from bsv.keys import PrivateKey

from bench.report import Row
from mesh.channel.frames import ChannelPay, ChannelPays
from mesh.channel.txs import PaymentSigner, Terms, hash256, p2pkh_for_key, payment_tx
from mesh.identity import verify_digest
from mesh.noise import CipherState
from mesh.wire import decode, encode

SCENARIO = "primitives"
_NONCE = struct.Struct("<4xQ")


def best_rate(count: int, body: Callable[[int], object], repeat: int = 3) -> float:
    """Calls per second of ``body(i)`` for i in range(count), best of `repeat`."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(count):
            body(i)
        best = min(best, time.perf_counter() - start)
    return count / best if best > 0 else float("inf")


def _fresh_best(count: int, make: Callable[[], Callable[[int], object]]) -> float:
    """Like `best_rate`, with a body made afresh for every repeat."""
    return max(best_rate(count, make(), repeat=1) for _ in range(3))


def _seal_with(state: CipherState, plain: bytes) -> Callable[[int], object]:
    return lambda _: state.encrypt(plain)


def _open_with(state: CipherState, sealed: list[bytes]) -> Callable[[int], object]:
    return lambda i: state.decrypt(sealed[i])


def _digests(count: int) -> list[bytes]:
    """`count` distinct 32-byte digests to sign and verify."""
    return [hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(count)]


def sign_verify_ceiling(count: int) -> float:
    """sign + verify of a 32-byte digest, back to back, in this process."""
    key = PrivateKey()
    public = key.public_key()
    digests = _digests(count)

    def both(i: int) -> None:
        digest = digests[i]
        if not public.verify(key.sign(digest, hasher=None), digest, hasher=None):
            raise RuntimeError("a fresh signature does not verify")

    return best_rate(count, both)


def verify_ceiling(count: int) -> float:
    """`verify_digest` of fresh signatures (what a payee runs per payment), in this
    process: the most payments/s one core can take, before any other work."""
    key = PrivateKey()
    raw = key.public_key().serialize()
    digests = _digests(count)
    signatures = [key.sign(d, hasher=None) for d in digests]
    if not all(verify_digest(raw, d, s) for d, s in zip(digests, signatures, strict=True)):
        raise RuntimeError("verify_digest rejects a good signature")
    return best_rate(count, lambda i: verify_digest(raw, digests[i], signatures[i]))


def _terms() -> Terms:
    return Terms(
        channel_id=secrets.token_bytes(32),
        payer_key=PrivateKey().public_key().serialize(),
        payee_key=PrivateKey().public_key().serialize(),
        capacity=10_000_000,
        close_fee=100,
        refund_fee=100,
        expiry_height=1_000,
        funding_txid=secrets.token_hex(32),
        funding_vout=0,
        payer_payout=p2pkh_for_key(PrivateKey().public_key().serialize()),
        payee_payout=p2pkh_for_key(PrivateKey().public_key().serialize()),
    )


def _ecdsa(count: int) -> list[Row]:
    key = PrivateKey()
    public = key.public_key()
    digests = _digests(count)
    signatures = [key.sign(d, hasher=None) for d in digests]
    sign = best_rate(count, lambda i: key.sign(digests[i], hasher=None))
    verify = best_rate(count, lambda i: public.verify(signatures[i], digests[i], hasher=None))
    ours = verify_ceiling(count)
    both = sign_verify_ceiling(count)
    return [
        Row(SCENARIO, "ECDSA sign, bsv-sdk (libsecp256k1)", sign, "/s"),
        Row(SCENARIO, "ECDSA verify, bsv-sdk", verify, "/s"),
        # What the payee runs: the same libsecp256k1 call on the cached uncompressed key.
        Row(SCENARIO, "ECDSA verify, mesh verify_digest", ours, "/s", verify, "bsv-sdk verify"),
        Row(SCENARIO, "sign + verify back to back (payments ceiling)", both, "/s"),
    ]


def _sighash(count: int) -> list[Row]:
    terms = _terms()
    signer = PaymentSigner(terms)
    total = 12_345
    tx = payment_tx(terms, total)
    if signer.sighash(total) != hash256(tx.preimage(0)):
        raise RuntimeError("PaymentSigner disagrees with bsv-sdk's preimage")
    sdk = best_rate(count, lambda _: hash256(tx.preimage(0)))
    cached = best_rate(count, lambda i: signer.sighash(1 + i))
    return [
        Row(
            SCENARIO,
            "payment sighash, cached PaymentSigner",
            cached,
            "/s",
            sdk,
            "tx.preimage",
        )
    ]


def _aead(count: int, size: int) -> list[Row]:
    key = os.urandom(32)
    plain = os.urandom(size)
    sealer = CipherState(key)
    sealed = [sealer.encrypt(plain) for _ in range(count)]
    raw_seal = best_rate(
        count,
        lambda i: nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plain, b"", _NONCE.pack(i), key
        ),
    )
    raw_open = best_rate(
        count,
        lambda i: nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            sealed[i], b"", _NONCE.pack(i), key
        ),
    )
    # A fresh state per repeat: each starts at nonce 0, as `sealed` was made.
    seal = _fresh_best(count, lambda: _seal_with(CipherState(key), plain))
    opened = _fresh_best(count, lambda: _open_with(CipherState(key), sealed))
    label = "100 B" if size == 100 else "4 KiB"
    return [
        Row(
            SCENARIO,
            f"ChaCha20-Poly1305 seal {label}, CipherState",
            seal,
            "/s",
            raw_seal,
            "raw libsodium",
            params={"size": size},
        ),
        Row(
            SCENARIO,
            f"ChaCha20-Poly1305 open {label}, CipherState",
            opened,
            "/s",
            raw_open,
            "raw libsodium",
            params={"size": size},
        ),
    ]


RUN = 32
"""Payments per `ChannelPays` in the decode row: half the default window of 64."""


def _wire(count: int) -> list[Row]:
    key = PrivateKey()
    frame = ChannelPay(
        secrets.token_bytes(32), 1_000, 123_456, key.sign(secrets.token_bytes(32), hasher=None)
    )
    fields = [ChannelPay.TAG, frame.channel_id, frame.seq, frame.total, frame.signature]
    data = encode(frame)
    if msgpack.packb(fields, use_bin_type=True) != data or decode(data) != frame:
        raise RuntimeError("mesh.wire and raw msgpack disagree on ChannelPay")
    run_data = encode(
        ChannelPays(frame.channel_id, 1, tuple(range(1, RUN + 1)), (frame.signature,) * RUN)
    )
    raw_pack = best_rate(count, lambda _: msgpack.packb(fields, use_bin_type=True))
    raw_unpack = best_rate(count, lambda _: msgpack.unpackb(data, use_list=False))
    return [
        Row(
            SCENARIO,
            "wire encode ChannelPay, mesh.wire",
            best_rate(count, lambda _: encode(frame)),
            "/s",
            raw_pack,
            "raw msgpack",
        ),
        Row(
            SCENARIO,
            "wire decode ChannelPay, mesh.wire",
            lone := best_rate(count, lambda _: decode(data)),
            "/s",
            raw_unpack,
            "raw msgpack",
        ),
        Row(
            SCENARIO,
            f"wire decode ChannelPays of {RUN}, per payment",
            best_rate(count // RUN, lambda _: decode(run_data)) * RUN,
            "/s",
            lone,
            "ChannelPay, one per frame",
        ),
    ]


def run(quick: bool) -> list[Row]:
    """Measure every primitive; returns one row per measurement."""
    scale = 1 if quick else 10
    return [
        *_ecdsa(500 * scale),
        *_sighash(2_000 * scale),
        *_aead(2_000 * scale, 100),
        *_aead(2_000 * scale, 4096),
        *_wire(5_000 * scale),
    ]
