"""Signed records: the canonical encoding, the record hash, signing and checking.

A record is one thing an agent says happened: a sensor reading, a production event, a
meter statement. It is the tuple (agent id, stream, seq, timestamp, payload, previous
record hash), and its **body** is the canonical MessagePack encoding of

    [version, agent, stream, seq, timestamp_ms, payload, prev]

- ``version`` int, 1 (`RECORD_VERSION`);
- ``agent`` bin, the 33-byte compressed identity key (the peer id's bytes);
- ``stream`` str, 1-100 ASCII characters ``[A-Za-z0-9][A-Za-z0-9._:/@-]*``;
- ``seq`` int, 0 for a stream's first record, then +1 per record (< 2**63);
- ``timestamp_ms`` int, the agent's wall clock in milliseconds since the Unix epoch (UTC),
  as the agent says: the chain anchor, not this field, bounds when it existed;
- ``payload`` bin, at most `MAX_PAYLOAD` bytes, opaque to this layer;
- ``prev`` bin, the record hash of (stream, seq - 1); 32 zero bytes for seq 0.

*Canonical* means: exactly what the `msgpack` package writes with ``use_bin_type=True``
for that array — a fixarray of 7, every int in the smallest encoding (positive fixint,
uint8/16/32/64), the stream as fixstr/str8, bytes as bin8/16/32. Decoders re-encode and
demand byte equality, so one record has exactly one body.

The **record hash** is ``SHA-256("m2mesh-record\\x00" || body)``. It is what the agent
signs (ECDSA over the 32-byte digest, strict DER, low S), what the next record of the
stream links to, and the leaf of the Merkle batch. The signature is *not* inside the
hash: the chain commits to what was said, the signature proves who said it, and a
tampered signature is then told apart from a tampered record.

This module owns the record format; it never stores, sends or anchors anything.
(docs/ARCHITECTURE.md §2, §6.1)
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.anchoring.errors import RecordError
from mesh.identity import PEER_ID_BYTES, Identity, is_valid_public_key, verify_digest

RECORD_VERSION = 1
RECORD_TAG = b"m2mesh-record\x00"
GENESIS = bytes(32)
MAX_PAYLOAD = 16_384
MAX_STREAM = 100
MAX_INT = (1 << 63) - 1
MAX_SIGNATURE = 72
MAX_BODY = MAX_PAYLOAD + 256
_STREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}\Z", re.ASCII)
_FIELDS = ("version", "agent", "stream", "seq", "timestamp_ms", "payload", "prev")
_packer = msgpack.Packer(use_bin_type=True)


def check_stream(stream: str) -> str:
    """Return `stream` if it is a valid stream name, else raise `RecordError`."""
    if type(stream) is not str or not _STREAM.match(stream):
        raise RecordError(
            "stream",
            f"{stream!r} is not 1-{MAX_STREAM} characters of [A-Za-z0-9._:/@-]"
            " starting with a letter or digit",
        )
    return stream


@functools.lru_cache(maxsize=4096)
def is_agent_key(raw: bytes) -> bool:
    """True when `raw` is a compressed public key on the curve (cached)."""
    # Parsing a point costs ~7 us, a third of a signature; an agent signs with one key
    # and a verifier meets few, so the answer is cached.
    return is_valid_public_key(raw)


def record_hash(body: bytes) -> bytes:
    """The record hash of a body: SHA-256 of the domain tag and the body."""
    return hashlib.sha256(RECORD_TAG + body).digest()


@dataclass(frozen=True, slots=True)
class Record:
    """The fields of a record (see the module docstring for their rules)."""

    agent: bytes
    stream: str
    seq: int
    timestamp_ms: int
    payload: bytes
    prev: bytes

    def __post_init__(self) -> None:
        if type(self.agent) is not bytes or not is_agent_key(self.agent):
            raise RecordError("agent", f"not a {PEER_ID_BYTES}-byte compressed public key")
        check_stream(self.stream)
        for name in ("seq", "timestamp_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_INT:
                raise RecordError(name, f"{value!r} is not an integer in 0..2**63-1")
        if type(self.payload) is not bytes or len(self.payload) > MAX_PAYLOAD:
            raise RecordError("payload", f"bytes of at most {MAX_PAYLOAD}")
        if type(self.prev) is not bytes or len(self.prev) != 32:
            raise RecordError("prev", "the previous record hash is 32 bytes")
        if self.seq == 0 and self.prev != GENESIS:
            raise RecordError("prev", "a stream's first record (seq 0) links to 32 zero bytes")

    def encode(self) -> bytes:
        """The canonical body."""
        return encode_body(
            self.agent, self.stream, self.seq, self.timestamp_ms, self.payload, self.prev
        )

    def readable(self) -> dict[str, Any]:
        """The fields as JSON-friendly values (bytes as hex), as proofs show them."""
        return {
            "agent": self.agent.hex(),
            "stream": self.stream,
            "seq": self.seq,
            "timestamp_ms": self.timestamp_ms,
            "payload": self.payload.hex(),
            "prev": self.prev.hex(),
        }


def encode_body(
    agent: bytes, stream: str, seq: int, timestamp_ms: int, payload: bytes, prev: bytes
) -> bytes:
    """The canonical body of already-validated fields (the writer's hot path)."""
    body: bytes = _packer.pack([RECORD_VERSION, agent, stream, seq, timestamp_ms, payload, prev])
    return body


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record with its body, record hash and the agent's signature.

    Build one with `sign_record` (our own) or `open_record` (bytes from elsewhere); the
    constructor itself checks nothing.
    """

    record: Record
    body: bytes
    hash: bytes
    signature: bytes

    @property
    def agent(self) -> bytes:
        """The signing agent's identity key."""
        return self.record.agent

    @property
    def stream(self) -> str:
        """The record's stream."""
        return self.record.stream

    @property
    def seq(self) -> int:
        """The record's place in its stream."""
        return self.record.seq

    def signature_valid(self) -> bool:
        """True when `signature` is the agent's signature over `hash`."""
        return verify_digest(self.record.agent, self.hash, self.signature)


def sign_record(identity: Identity, record: Record) -> SignedRecord:
    """Encode, hash and sign `record` with `identity` (which must be its agent)."""
    if record.agent != identity.public_key:
        raise RecordError("agent", "a record is signed by its own agent's key only")
    body = record.encode()
    digest = record_hash(body)
    return SignedRecord(record, body, digest, identity.sign_digest(digest))


def decode_record(body: bytes) -> Record:
    """Decode a canonical body, or raise `RecordError` naming the field."""
    if type(body) is not bytes or not body:
        raise RecordError("body", "no bytes")
    if len(body) > MAX_BODY:
        raise RecordError("body", f"{len(body)} bytes exceeds {MAX_BODY}")
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except msgpack.ExtraData:
        raise RecordError("body", "trailing bytes after the record") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RecordError("body", f"not MessagePack ({exc or type(exc).__name__})") from None
    if type(fields) is not list or len(fields) != len(_FIELDS):
        raise RecordError("body", f"expected an array of {len(_FIELDS)} fields")
    version, agent, stream, seq, timestamp_ms, payload, prev = fields
    if type(version) is not int or version != RECORD_VERSION:
        raise RecordError("version", f"unknown record version {version!r}")
    for name, value, kind in (
        ("agent", agent, bytes),
        ("stream", stream, str),
        ("seq", seq, int),
        ("timestamp_ms", timestamp_ms, int),
        ("payload", payload, bytes),
        ("prev", prev, bytes),
    ):
        if type(value) is not kind:
            raise RecordError(name, f"expected {kind.__name__}, got {type(value).__name__}")
    record = Record(agent, stream, seq, timestamp_ms, payload, prev)
    if record.encode() != body:
        raise RecordError("body", "not the canonical encoding of its fields")
    return record


def open_record(body: bytes, signature: bytes) -> SignedRecord:
    """Decode a body and check its signature; raise `RecordError` if either fails."""
    record = decode_record(body)
    if type(signature) is not bytes or not 8 <= len(signature) <= MAX_SIGNATURE:
        raise RecordError("signature", "not a DER signature")
    signed = SignedRecord(record, body, record_hash(body), signature)
    if not signed.signature_valid():
        raise RecordError("signature", "not the agent's signature over the record hash")
    return signed
