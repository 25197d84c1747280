"""The certificate exchange's frames (tags 50-59): a verifier asks a peer to prove
named fields of a certificate of a type and certifier; the peer answers with the
certificate and a keyring that opens only those fields for that verifier, or says
why not (`mesh.certs.policy` owns the rules). Registered in the codec's one table
(`mesh.wire`). (docs/ARCHITECTURE.md §3)"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Frame, Struct, frame, struct

MAX_ASKED = 16
"""Most certifiers or fields one `ProofRequest` may name."""


@frame(50)
@dataclass(frozen=True, slots=True)
class ProofRequest(Frame):
    """Verifier -> subject: prove `fields` of a certificate of `type` (base64 of 32
    bytes) signed by one of `certifiers` (compressed keys, hex). `request_id`: 16
    random bytes the answer repeats."""

    request_id: bytes
    type: str
    certifiers: tuple[str, ...]
    fields: tuple[str, ...]


@struct
@dataclass(frozen=True, slots=True)
class RevealedKey(Struct):
    """One field's key, encrypted for the verifier (a BRC-52 keyring entry, base64)."""

    name: str
    key: str


@frame(51)
@dataclass(frozen=True, slots=True)
class ProofOffer(Frame):
    """Subject -> verifier: the certificate (BRC-52 binary form) and the keyring that
    reveals the asked fields to this verifier only."""

    request_id: bytes
    certificate: bytes
    keyring: tuple[RevealedKey, ...]


@frame(52)
@dataclass(frozen=True, slots=True)
class ProofRefused(Frame):
    """Subject -> verifier: no proof, and why (`code` as `CertificateError`'s)."""

    request_id: bytes
    code: str
    reason: str


__all__ = ["MAX_ASKED", "ProofOffer", "ProofRefused", "ProofRequest", "RevealedKey"]
