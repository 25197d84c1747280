"""The session layer's frames (tags 1-9): the handshake's payloads, `Hello`, the
session's `Error`, `Heartbeat` and `Close`, and `Message`, an application message
(`mesh.session`, `mesh.net.node`). Registered in the codec's one table (`mesh.wire`).
(docs/ARCHITECTURE.md §3)"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Frame, Struct, frame, struct


@struct
@dataclass(frozen=True, slots=True)
class ProfileSummary(Struct):
    """What an agent says about itself during the handshake (a hint, not a contract).

    `services` are its offers in the short form of its mDNS TXT ``svc`` key,
    ``id=price/unit`` each, so a peer met without mDNS (a static peer) can be bought
    from too.
    """

    name: str
    services: tuple[str, ...]


@frame(1)
@dataclass(frozen=True, slots=True)
class HandshakeStart(Frame):
    """Payload of Noise message 1 (cleartext): where to send message 2.

    Untrusted until the same mailbox is repeated inside the authenticated
    `Hello` of message 3.
    """

    version: int
    mailbox: str


@frame(2)
@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Payload of Noise messages 2 and 3: the identity binding.

    `signature` is the identity key's ECDSA signature over
    ``sha256("m2mesh-noise-static:" || noise_static_pubkey)``.
    """

    version: int
    identity_key: bytes
    signature: bytes
    mailbox: str
    profile: ProfileSummary
    site: str
    network: str
    """The sender's site (an operator's name) and network (its chain's genesis block
    hash): a peer of another site or network is refused (`mesh.session.ForeignPeer`)."""


@frame(3)
@dataclass(frozen=True, slots=True)
class Error(Frame):
    """A peer reports a problem. `fatal` errors end the session after sending."""

    code: str
    reason: str
    fatal: bool


@frame(4)
@dataclass(frozen=True, slots=True)
class Heartbeat(Frame):
    """Liveness probe; the receiver answers with `reply=True` and the same `seq`."""

    seq: int
    reply: bool


@frame(5)
@dataclass(frozen=True, slots=True)
class Close(Frame):
    """A polite goodbye: the sender is ending the session on purpose."""

    reason: str


@frame(6)
@dataclass(frozen=True, slots=True)
class Message(Frame):
    """An application message: opaque `body` addressed to a `topic`."""

    topic: str
    body: bytes
