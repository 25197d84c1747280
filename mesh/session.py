"""Secure sessions: Noise XX bound to BSV identity keys, and the packet format.

This module owns the session protocol between two agents and does no I/O: the
transport hands it packets (bytes) and gets packets and typed results back.

Packets (the payload of one nng message)::

    HS1   0x01 | sender_index(8) | noise msg 1     payload: HandshakeStart (cleartext)
    HS2   0x02 | receiver(8) | sender_index(8) | noise msg 2     payload: Hello
    HS3   0x03 | receiver(8) | noise msg 3        payload: Hello
    DATA  0x04 | receiver(8) | first_counter(8) | (len(2) | ciphertext)+
          each ciphertext a Noise transport message of (frame_len(2) | frame)+
    REJECT 0x05 | receiver(8) | reason (UTF-8, <= 200 bytes)

Each side picks a random 8-byte *index* for the session and the peer puts it in
every packet it sends, so a mailbox shared by many peers demultiplexes with one
dictionary lookup (WireGuard does the same). A DATA packet carries one Noise
transport message per 64 KiB of frames (usually exactly one: frames are sealed
together, so a burst of small frames costs one AEAD pass, not one each). Their
counters are ``first_counter, first_counter+1, ...`` and must be exactly the
next expected ones: an older counter is a replay, a newer one a gap (a lost or
reordered message). Either ends the session, as does the first authentication
failure -- nng runs over TCP, so nothing legitimate is ever reordered or lost
inside one session.

Identity binding (the libp2p way): each `Hello` carries the identity key and its
ECDSA signature over ``sha256("m2mesh-noise-static:" || noise_static_pubkey)``.
The Noise handshake proves possession of the static key, the signature ties it
to the identity key; a session exists only after both are checked. msg 1 is
cleartext, so the initiator's mailbox in `HandshakeStart` is only a routing hint
until the same mailbox comes back inside the authenticated msg 3.

REJECT tells an initiator that its msg 3 was refused (bad proof, not on the
allow-list). It is unauthenticated, so it is honoured only for a session that
has not yet received anything authenticated: an attacker able to forge it sits
on the path and could as well drop the packets.

Both directions rekey (Noise REKEY) after every `REKEY_INTERVAL` messages. With
messages capped at 64 KiB that also bounds the data under one key to < 1 GiB.
(docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import Enum

from mesh import noise
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import Identity, is_valid_public_key, verify_digest
from mesh.session_frames import HandshakeStart, Hello, ProfileSummary
from mesh.wire import MAX_FRAME_SIZE, PROTOCOL_VERSION, Frame, decode, encode

HS1, HS2, HS3, DATA, REJECT = 1, 2, 3, 4, 5
DEFAULT_SITE = "default"
"""The site of an agent that names none."""
MAX_SITE = 64


def site_problem(site: str) -> str | None:
    """Why `site` cannot name a site (None: it can): 1-64 printable ASCII characters
    without spaces, so it fits a TXT string and reads the same everywhere."""
    if not 1 <= len(site) <= MAX_SITE:
        return f"must be 1..{MAX_SITE} characters"
    if not all("!" <= c <= "~" for c in site):
        return "must be printable ASCII without spaces (e.g. plant-7/line-2)"
    return None


INDEX_LEN = 8
REKEY_INTERVAL = 10_000
PROLOGUE = b"m2mesh/1"
BINDING_PREFIX = b"m2mesh-noise-static:"
MAX_PACKET_SIZE = 256 * 1024
"""Largest packet a node accepts (nng's `recv_max_size`): several coalesced frames."""

_COUNTER = struct.Struct("<Q")
_LEN = struct.Struct("<H")
_DATA_HEADER = 1 + INDEX_LEN + 8
_FRAME_OVERHEAD = _LEN.size
# Plaintext of one Noise transport message: frames, each behind its length.
_RECORD_CAPACITY = noise.MAX_MESSAGE_LEN - noise.TAGLEN


class SessionError(RemoteProtocolError):
    """The peer broke the session protocol; the session is over."""


class DecryptFailed(SessionError):
    """A transport or handshake message failed authentication."""


class ReplayDetected(SessionError):
    """A transport message carried a counter we have already accepted."""


class CounterGap(SessionError):
    """A transport message skipped ahead: something was lost or reordered."""


class IdentityMismatch(SessionError):
    """The identity proof did not verify, or names someone we did not expect."""


class VersionMismatch(SessionError):
    """The peer speaks another protocol version."""


class ForeignPeer(SessionError):
    """The peer is of another site or network: two deployments never mix."""


class NotAllowed(SessionError):
    """The peer authenticated but is not on our allow-list."""


def new_index() -> bytes:
    """A fresh random session index."""
    return secrets.token_bytes(INDEX_LEN)


def reject_packet(remote_index: bytes, reason: str) -> bytes:
    """A REJECT packet telling the peer why its handshake was refused."""
    return bytes([REJECT]) + remote_index + reason.encode()[:200]


def reject_reason(packet: bytes) -> str:
    """The reason carried by a REJECT packet (decoded leniently: it is untrusted)."""
    return packet[1 + INDEX_LEN : 1 + INDEX_LEN + 200].decode(errors="replace")


def binding_digest(noise_static_public: bytes) -> bytes:
    """What the identity key signs to vouch for a Noise static key."""
    return hashlib.sha256(BINDING_PREFIX + noise_static_public).digest()


def packet_kind(packet: bytes) -> int:
    """The packet type byte, or 0 for an empty packet."""
    return packet[0] if packet else 0


def receiver_index(packet: bytes) -> bytes:
    """The receiver index of an HS2, HS3 or DATA packet."""
    if len(packet) < 1 + INDEX_LEN:
        raise SessionError("packet", "too short for a receiver index")
    return packet[1 : 1 + INDEX_LEN]


@dataclass(frozen=True)
class LocalIdentity:
    """What a node proves about itself in every handshake, computed once.

    The Noise static key lives as long as the node; its binding signature by
    the identity key is made once here rather than per handshake.
    """

    identity: Identity
    static: noise.KeyPair
    mailbox: str
    profile: ProfileSummary
    signature: bytes
    site: str = DEFAULT_SITE
    network: str = ""

    @classmethod
    def create(
        cls,
        identity: Identity,
        mailbox: str,
        profile: ProfileSummary | None = None,
        static: noise.KeyPair | None = None,
        *,
        site: str = DEFAULT_SITE,
        network: str = "",
    ) -> LocalIdentity:
        """Bind a (new) Noise static key to `identity`; `site` and `network` (the
        chain's genesis block hash) are what a peer must share to be talked to."""
        static = static or noise.KeyPair.generate()
        return cls(
            identity=identity,
            static=static,
            mailbox=mailbox,
            profile=profile or ProfileSummary(name="", services=()),
            signature=identity.sign_digest(binding_digest(static.public)),
            site=site,
            network=network,
        )

    def foreign(self, site: str, network: str) -> str | None:
        """Why a peer of `site` and `network` is not ours (None: it is)."""
        if site == self.site and network == self.network:
            return None
        return (
            f"another deployment: peer on site {site!r}, network {_short(network)}; "
            f"we are on site {self.site!r}, network {_short(self.network)}"
        )

    def hello(self) -> bytes:
        """The encoded `Hello` this side sends in msg 2 or msg 3."""
        return encode(
            Hello(
                version=PROTOCOL_VERSION,
                identity_key=self.identity.public_key,
                signature=self.signature,
                mailbox=self.mailbox,
                profile=self.profile,
                site=self.site,
                network=self.network,
            )
        )


@dataclass(frozen=True)
class PeerInfo:
    """What a completed handshake proved (identity) and claimed (the rest)."""

    peer_key: bytes
    mailbox: str
    profile: ProfileSummary
    site: str = DEFAULT_SITE
    network: str = ""

    @property
    def peer_id(self) -> str:
        """The peer id (compressed identity key in hex)."""
        return self.peer_key.hex()


class Phase(Enum):
    """Where a handshake stands."""

    AWAIT_HS2 = "await-hs2"
    AWAIT_HS3 = "await-hs3"
    DONE = "done"
    FAILED = "failed"


class Handshake:
    """One side of the XX handshake with identity binding and allow-list.

    Initiator: `start()` -> HS1; `on_hs2(packet)` -> (HS3, Session).
    Responder: `Handshake.respond(local, HS1)` -> (handshake, HS2, reply mailbox);
    `on_hs3(packet)` -> Session. Any failure raises a `SessionError` and leaves
    the handshake `FAILED`.
    """

    def __init__(
        self,
        local: LocalIdentity,
        *,
        initiator: bool,
        allow: Collection[str] | None = None,
        expect_peer: str | None = None,
        index: bytes | None = None,
    ) -> None:
        """Prepare a handshake; `expect_peer` pins the identity we must meet."""
        self.local = local
        self.index = index or new_index()
        self.remote_index = b""
        self.phase = Phase.AWAIT_HS2 if initiator else Phase.AWAIT_HS3
        self._allow = None if allow is None else frozenset(allow)
        self._expect = expect_peer
        self._reply_mailbox = ""
        self._noise = noise.HandshakeState(initiator, local.static, PROLOGUE)

    # ---------------------------------------------------------------- initiator

    def start(self) -> bytes:
        """The HS1 packet that opens the handshake."""
        payload = encode(HandshakeStart(version=PROTOCOL_VERSION, mailbox=self.local.mailbox))
        return bytes([HS1]) + self.index + self._noise.write_message(payload)

    def on_hs2(self, packet: bytes) -> tuple[bytes, Session]:
        """Check the responder's proof; return the HS3 packet and the session."""
        self._require(Phase.AWAIT_HS2, packet, HS2, 1 + 2 * INDEX_LEN)
        self.remote_index = packet[1 + INDEX_LEN : 1 + 2 * INDEX_LEN]
        with self._failing():
            peer = self._check_hello(self._read(packet[1 + 2 * INDEX_LEN :]))
            hs3 = bytes([HS3]) + self.remote_index + self._noise.write_message(self.local.hello())
            session = self._finish(peer)
        return hs3, session

    # ---------------------------------------------------------------- responder

    @classmethod
    def respond(
        cls,
        local: LocalIdentity,
        packet: bytes,
        *,
        allow: Collection[str] | None = None,
        index: bytes | None = None,
    ) -> tuple[Handshake, bytes, str]:
        """Answer an HS1: returns the handshake, the HS2 packet, and where to send it."""
        handshake = cls(local, initiator=False, allow=allow, index=index)
        handshake._require(Phase.AWAIT_HS3, packet, HS1, 1 + INDEX_LEN)
        handshake.remote_index = packet[1 : 1 + INDEX_LEN]
        with handshake._failing():
            start = handshake._read(packet[1 + INDEX_LEN :])
            if not isinstance(start, HandshakeStart):
                raise SessionError("HS1", f"expected HandshakeStart, got {type(start).__name__}")
            _check_version(start.version)
            handshake._reply_mailbox = _check_mailbox(start.mailbox, "HandshakeStart.mailbox")
            hs2 = (
                bytes([HS2])
                + handshake.remote_index
                + handshake.index
                + handshake._noise.write_message(local.hello())
            )
        return handshake, hs2, handshake._reply_mailbox

    def on_hs3(self, packet: bytes) -> Session:
        """Check the initiator's proof; return the session."""
        self._require(Phase.AWAIT_HS3, packet, HS3, 1 + INDEX_LEN)
        with self._failing():
            peer = self._check_hello(self._read(packet[1 + INDEX_LEN :]))
            if peer.mailbox != self._reply_mailbox:
                raise IdentityMismatch("Hello.mailbox", "differs from the mailbox in HS1")
            return self._finish(peer)

    # ---------------------------------------------------------------- shared

    def _require(self, phase: Phase, packet: bytes, kind: int, min_len: int) -> None:
        if self.phase is not phase:
            raise SessionError("handshake", f"unexpected packet in phase {self.phase.value}")
        if packet_kind(packet) != kind or len(packet) < min_len:
            self.phase = Phase.FAILED
            raise SessionError("handshake", f"malformed packet for phase {phase.value}")
        if kind != HS1 and receiver_index(packet) != self.index:
            self.phase = Phase.FAILED
            raise SessionError("handshake", "packet addressed to another handshake")

    def _failing(self) -> _FailGuard:
        return _FailGuard(self)

    def _read(self, message: bytes) -> Frame:
        try:
            payload = self._noise.read_message(message)
        except noise.DecryptError:
            raise DecryptFailed("handshake", "authentication failed") from None
        except noise.NoiseError as exc:
            raise SessionError("handshake", str(exc)) from None
        return decode(payload)

    def _check_hello(self, frame: Frame) -> PeerInfo:
        if not isinstance(frame, Hello):
            raise SessionError("handshake", f"expected Hello, got {type(frame).__name__}")
        _check_version(frame.version)
        remote_static = self._noise.remote_static
        assert remote_static is not None  # read_message of msg 2/3 sets it
        if not is_valid_public_key(frame.identity_key):
            raise IdentityMismatch("Hello.identity_key", "not a compressed secp256k1 key")
        if not verify_digest(frame.identity_key, binding_digest(remote_static), frame.signature):
            raise IdentityMismatch("Hello.signature", "does not bind this Noise key")
        peer_id = frame.identity_key.hex()
        if self._expect is not None and peer_id != self._expect:
            raise IdentityMismatch("Hello.identity_key", f"expected {self._expect}, met {peer_id}")
        if self._allow is not None and peer_id not in self._allow and "*" not in self._allow:
            raise NotAllowed("Hello.identity_key", f"{peer_id} is not on the allow-list")
        foreign = self.local.foreign(frame.site, frame.network)
        if foreign is not None:
            raise ForeignPeer("Hello.site", foreign)
        mailbox = _check_mailbox(frame.mailbox, "Hello.mailbox")
        return PeerInfo(frame.identity_key, mailbox, frame.profile, frame.site, frame.network)

    def _finish(self, peer: PeerInfo) -> Session:
        send, recv = self._noise.split()
        if not self._noise.initiator:
            send, recv = recv, send
        self.phase = Phase.DONE
        return Session(peer, self.index, self.remote_index, send, recv)


_HANDSHAKE_FRAMES = (HandshakeStart, Hello)


def _frames_of(record: bytes, frames: list[Frame]) -> None:
    """Decode the frames of one decrypted record onto `frames`."""
    if not record:
        raise SessionError("record", "a record without frames")
    pos, end = 0, len(record)
    while pos < end:
        if pos + _LEN.size > end:
            raise SessionError("record", "truncated frame length")
        (size,) = _LEN.unpack_from(record, pos)
        pos += _LEN.size
        if pos + size > end:
            raise SessionError("record", "truncated frame")
        frame = decode(record[pos : pos + size])
        pos += size
        if isinstance(frame, _HANDSHAKE_FRAMES):
            raise SessionError("frame", f"{type(frame).__name__} after the handshake")
        frames.append(frame)


class _FailGuard:
    """Marks a handshake FAILED when its block raises."""

    def __init__(self, handshake: Handshake) -> None:
        self._handshake = handshake

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self._handshake.phase = Phase.FAILED


def _short(network: str) -> str:
    """A network id (genesis hash) as people compare it: its first 16 digits."""
    return f"{network[:16]}…" if network else "(none)"


def _check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise VersionMismatch("version", f"peer speaks {version}, we speak {PROTOCOL_VERSION}")


def _check_mailbox(mailbox: str, field: str) -> str:
    if not (mailbox.startswith(("tcp://", "ipc://")) and 8 <= len(mailbox) <= 200):
        raise SessionError(field, f"not a tcp:// or ipc:// address: {mailbox[:60]!r}")
    return mailbox


class Session:
    """An established session: seals outgoing frames, opens incoming packets.

    Any `SessionError` from `open` kills the session; every later call raises.
    """

    def __init__(
        self,
        peer: PeerInfo,
        index: bytes,
        remote_index: bytes,
        send: noise.CipherState,
        recv: noise.CipherState,
    ) -> None:
        """Wrap the two transport ciphers of a completed handshake."""
        self.peer = peer
        self.index = index
        self.remote_index = remote_index
        self._send = send
        self._recv = recv
        self._header = bytes([DATA]) + remote_index
        self.dead: RemoteProtocolError | None = None
        self.frames_sent = 0
        self.frames_received = 0

    def seal(self, frames: Iterable[Frame]) -> bytes:
        """Encrypt frames (in order) into one DATA packet."""
        return self.seal_encoded([encode(f) for f in frames])

    def seal_encoded(self, encoded: Iterable[bytes]) -> bytes:
        """`seal` for frames already encoded with `mesh.wire.encode`."""
        self._check_alive()
        parts = [self._header, _COUNTER.pack(self._send.n)]
        record: list[bytes] = []
        size = 0
        for plaintext in encoded:
            length = len(plaintext)
            if length > MAX_FRAME_SIZE:
                raise LocalProtocolError("frame exceeds MAX_FRAME_SIZE")
            if size + _FRAME_OVERHEAD + length > _RECORD_CAPACITY:
                self._seal_record(parts, record)
                record, size = [], 0
            record += (_LEN.pack(length), plaintext)
            size += _FRAME_OVERHEAD + length
        if not record:
            raise LocalProtocolError("a DATA packet needs at least one frame")
        self._seal_record(parts, record)
        return b"".join(parts)

    def _seal_record(self, parts: list[bytes], record: list[bytes]) -> None:
        """Encrypt one record's frames as one Noise transport message onto `parts`."""
        cipher = self._send
        if cipher.n and cipher.n % REKEY_INTERVAL == 0:
            cipher.rekey()
        ciphertext = cipher.encrypt(b"".join(record))
        parts += (_LEN.pack(len(ciphertext)), ciphertext)
        self.frames_sent += len(record) // 2

    def open(self, packet: bytes) -> list[Frame]:
        """Authenticate, decrypt and decode one DATA packet addressed to us."""
        self._check_alive()
        try:
            return self._open(packet)
        except RemoteProtocolError as exc:
            self.dead = exc
            raise

    def _open(self, packet: bytes) -> list[Frame]:
        if len(packet) < _DATA_HEADER or packet[0] != DATA:
            raise SessionError("packet", "malformed DATA packet")
        if packet[1 : 1 + INDEX_LEN] != self.index:
            raise SessionError("packet", "addressed to another session")
        cipher = self._recv
        (first,) = _COUNTER.unpack_from(packet, 1 + INDEX_LEN)
        if first < cipher.n:
            raise ReplayDetected("packet.counter", f"counter {first} already seen")
        if first > cipher.n:
            raise CounterGap("packet.counter", f"expected {cipher.n}, got {first}")
        frames: list[Frame] = []
        view = memoryview(packet)
        pos = _DATA_HEADER
        while pos < len(packet):
            if pos + _LEN.size > len(packet):
                raise SessionError("packet", "truncated record length")
            (size,) = _LEN.unpack_from(packet, pos)
            pos += _LEN.size
            if size < noise.TAGLEN or pos + size > len(packet):
                raise SessionError("packet", "truncated record")
            if cipher.n and cipher.n % REKEY_INTERVAL == 0:
                cipher.rekey()
            try:
                plaintext = cipher.decrypt(bytes(view[pos : pos + size]))
            except noise.DecryptError:
                raise DecryptFailed("packet", f"message {cipher.n} failed authentication") from None
            pos += size
            _frames_of(plaintext, frames)
        if not frames:
            raise SessionError("packet", "DATA packet without records")
        self.frames_received += len(frames)
        return frames

    def kill(self, reason: RemoteProtocolError) -> None:
        """Mark the session dead (e.g. on timeout or a peer's fatal error)."""
        if self.dead is None:
            self.dead = reason

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise LocalProtocolError(f"session with {self.peer.peer_id} is dead: {self.dead}")
