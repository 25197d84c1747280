"""The m2mesh wire schema: every frame type, its tag, and the one decoder.

A frame is a frozen dataclass registered here with a numeric tag. On the wire it
is a MessagePack array ``[tag, field1, field2, ...]``; a nested struct is an
array of its fields, a tuple is an array. One table (`FRAME_TYPES`) holds every
frame type of the protocol; later layers add theirs here so the protocol has a
single, versioned schema.

`decode` is the only door from peer bytes to frames. Whatever a peer sends --
truncated, oversized, deeply nested, unknown tag, wrong type -- it either
returns a fully typed frame or raises `RemoteProtocolError` naming the field and
the reason. This module does no I/O.

MessagePack is produced and parsed by the `msgpack` package (C extension), the
codec the project chose; the schema checks are done here in one pass over the
decoded array, driven by tables built once at import time.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from mesh.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 7
"""Bumped on any incompatible change to a frame or to the session protocol
(2: the frames of a DATA packet share one Noise transport message; 3: `ChannelRelease`;
4: `ChannelPays`; 5: a payee acks every open channel on each new session, at seq 0 when
nothing is paid yet, and a restarted payer pays nothing until it has that ack; 6: site
and network in `Hello`; 7: a feed's delivered record carries a typed reading,
`mesh.readings`, which a buyer checks before it pays)."""

MAX_FRAME_SIZE = 65_517
"""Largest encoded frame: the Noise limit (65 535) less its 16-byte tag and the
frame's 2-byte length inside the message."""

_Checker = Callable[[Any, str], Any]


class Struct:
    """Base of every wire struct: frozen dataclasses encoded as arrays."""

    __slots__ = ()
    _checkers: ClassVar[tuple[tuple[str, _Checker], ...]] = ()
    # Set when every field is a plain bool/int/str/bytes: the types to check
    # with one comparison instead of a call per field (the payment path's frames).
    _plain: ClassVar[tuple[type, ...] | None] = None


class Frame(Struct):
    """Base of every top-level frame; `TAG` identifies its type on the wire."""

    __slots__ = ()
    TAG: ClassVar[int] = -1


FRAME_TYPES: dict[int, type[Frame]] = {}
"""The schema table: tag -> frame type, for every frame of the protocol."""

S = TypeVar("S", bound=type[Struct])


def struct(cls: S) -> S:
    """Register a nested (untagged) wire struct and build its field checkers."""
    hints = _hints(cls)
    cls._checkers = tuple((f.name, _checker_for(hint)) for f, hint in hints)
    if all(hint in _PLAIN for _, hint in hints):
        cls._plain = tuple(hint for _, hint in hints)
    return cls


def frame(tag: int) -> Callable[[S], S]:
    """Register a frame type under `tag` in `FRAME_TYPES`."""

    def register(cls: S) -> S:
        if not issubclass(cls, Frame):
            raise TypeError(f"{cls.__name__} must derive from Frame")
        if tag in FRAME_TYPES:
            raise TypeError(f"tag {tag} already used by {FRAME_TYPES[tag].__name__}")
        cls.TAG = tag
        FRAME_TYPES[tag] = cls
        return struct(cls)

    return register


# --------------------------------------------------------------------------- codec


def _pack_default(obj: object) -> object:
    if isinstance(obj, Struct):
        return [getattr(obj, name) for name, _ in obj._checkers]
    raise TypeError(f"cannot encode {type(obj).__name__}")


_packer = msgpack.Packer(default=_pack_default, use_bin_type=True)


def encode(message: Frame) -> bytes:
    """Encode a frame; raises `LocalProtocolError` if it is too large to send."""
    try:
        data: bytes = _packer.pack(
            [message.TAG, *(getattr(message, name) for name, _ in message._checkers)]
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    if len(data) > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"{type(message).__name__} encodes to {len(data)} bytes (max {MAX_FRAME_SIZE})"
        )
    return data


def decode(data: bytes) -> Frame:
    """Decode one frame from peer bytes, or raise `RemoteProtocolError`."""
    if len(data) > MAX_FRAME_SIZE:
        raise RemoteProtocolError("frame", f"{len(data)} bytes exceeds max {MAX_FRAME_SIZE}")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
        )
    except msgpack.ExtraData:
        raise RemoteProtocolError("frame", "trailing bytes after the frame") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(
            "frame", f"not valid MessagePack ({exc or type(exc).__name__})"
        ) from None
    if not isinstance(raw, tuple) or not raw:
        raise RemoteProtocolError("frame", "expected a non-empty array [tag, ...]")
    tag = raw[0]
    cls = FRAME_TYPES.get(tag) if type(tag) is int else None
    if cls is None:
        raise RemoteProtocolError("frame.tag", f"unknown frame tag {tag!r}")
    return _build(cls, raw[1:], cls.__name__)  # type: ignore[return-value]


def _build(cls: type[Struct], values: tuple[Any, ...], where: str) -> Struct:
    plain = cls._plain
    if plain is not None and tuple(map(type, values)) == plain:
        return cls(*values)  # else the checkers below say which field and why
    checkers = cls._checkers
    if len(values) != len(checkers):
        raise RemoteProtocolError(where, f"expected {len(checkers)} fields, got {len(values)}")
    return cls(
        *(check(v, f"{where}.{name}") for (name, check), v in zip(checkers, values, strict=True))
    )


# --------------------------------------------------------------------------- checkers


def _hints(cls: type) -> list[tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls)]


def _checker_for(hint: Any) -> _Checker:
    """Build a function that validates one decoded value against a type hint."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return _exact(bool)
    if hint is int:
        return _exact(int)
    if hint is str:
        return _exact(str)
    if hint is bytes:
        return _exact(bytes)
    if hint is float:
        return _float
    if isinstance(hint, type) and issubclass(hint, Struct):
        return _nested(hint)
    if origin is tuple:
        item_hint, ellipsis = typing.get_args(hint)
        if ellipsis is not Ellipsis:
            raise TypeError(f"only tuple[T, ...] is supported, not {hint}")
        return _tuple_of(_checker_for(item_hint), item_hint if item_hint in _PLAIN else None)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"only Optional[T] unions are supported, not {hint}")
        return _optional(_checker_for(options[0]))
    raise TypeError(f"unsupported wire type {hint!r}")


_PLAIN = (bool, int, str, bytes)


def _exact(kind: type) -> _Checker:
    def check(value: Any, where: str) -> Any:
        # type() rather than isinstance(): True must not pass as an int.
        if type(value) is not kind:
            raise RemoteProtocolError(
                where, f"expected {kind.__name__}, got {type(value).__name__}"
            )
        return value

    return check


def _float(value: Any, where: str) -> Any:
    if type(value) is float or type(value) is int:
        return float(value)
    raise RemoteProtocolError(where, f"expected float, got {type(value).__name__}")


def _nested(cls: type[Struct]) -> _Checker:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, tuple):
            raise RemoteProtocolError(where, f"expected {cls.__name__}, got {type(value).__name__}")
        return _build(cls, value, where)

    return check


def _tuple_of(item: _Checker, plain: type | None) -> _Checker:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, tuple):
            raise RemoteProtocolError(where, f"expected array, got {type(value).__name__}")
        if plain is not None and all(type(v) is plain for v in value):
            return value  # the common case, without a call per item
        return tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))

    return check


def _optional(inner: _Checker) -> _Checker:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)

    return check


# --------------------------------------------------------------------------- frames


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


# --------------------------------------------------------------------------- channels
# A Spilman channel between a payer and a payee (mesh/channel). Amounts are
# satoshis; `channel_id` is 32 random bytes chosen by the payer.


@frame(20)
@dataclass(frozen=True, slots=True)
class ChannelOpen(Frame):
    """Payer -> payee: proposed terms. Only the funding outpoint is revealed, never
    the signed funding transaction, until the payee's refund signature is back."""

    channel_id: bytes
    service: str
    capacity: int
    close_fee: int
    refund_fee: int
    expiry_height: int
    funding_txid: str
    funding_vout: int
    payer_payout: bytes


@frame(21)
@dataclass(frozen=True, slots=True)
class ChannelRefundSigned(Frame):
    """Payee -> payer: the payee's signature on the time-locked refund, and the
    P2PKH script the payee wants its payments paid to."""

    channel_id: bytes
    signature: bytes
    payee_payout: bytes


@frame(22)
@dataclass(frozen=True, slots=True)
class ChannelFunded(Frame):
    """Payer -> payee: the funding transaction, now broadcast."""

    channel_id: bytes
    funding_tx: bytes


@frame(23)
@dataclass(frozen=True, slots=True)
class ChannelPay(Frame):
    """Payer -> payee: the new total and the payer's signature over that state."""

    channel_id: bytes
    seq: int
    total: int
    signature: bytes


@frame(29)
@dataclass(frozen=True, slots=True)
class ChannelPays(Frame):
    """Payer -> payee: consecutive payments in one frame, payment ``i`` being seq
    ``seq + i`` with ``totals[i]`` and ``signatures[i]``: each exactly a `ChannelPay`,
    without a frame (its decode and dispatch) per payment."""

    channel_id: bytes
    seq: int
    totals: tuple[int, ...]
    signatures: tuple[bytes, ...]


@frame(24)
@dataclass(frozen=True, slots=True)
class ChannelAck(Frame):
    """Payee -> payer: everything up to `seq` (cumulative) is persisted.

    seq 0 means the channel is open: the funding was seen on chain. `signature` is the
    payer's own signature on that state (empty at seq 0): a payer that lost its latest
    states (a power cut) takes them back from it, having checked it is its own.
    """

    channel_id: bytes
    seq: int
    total: int
    signature: bytes


@frame(25)
@dataclass(frozen=True, slots=True)
class ChannelClose(Frame):
    """Either side asks the payee to close with the latest state."""

    channel_id: bytes


@frame(26)
@dataclass(frozen=True, slots=True)
class ChannelClosed(Frame):
    """Payee -> payer: the close transaction was broadcast."""

    channel_id: bytes
    close_txid: str
    total: int


@frame(28)
@dataclass(frozen=True, slots=True)
class ChannelRelease(Frame):
    """Payer -> payee: give up a channel nothing was paid on. `signature` is the payer's
    on the release transaction (mesh/channel/txs.py); the payee co-signs, broadcasts it
    and answers `ChannelClosed` with total 0."""

    channel_id: bytes
    signature: bytes


@frame(27)
@dataclass(frozen=True, slots=True)
class ChannelError(Frame):
    """A channel-level refusal naming its rule (`code`); the channel state is unchanged."""

    channel_id: bytes
    code: str
    reason: str


# --------------------------------------------------------------------------- services
# Orders for a provider's service (agents/services), paid through the channel
# named in the order. `order_id` is 16 random bytes chosen by the buyer.


@frame(30)
@dataclass(frozen=True, slots=True)
class ServiceOrder(Frame):
    """Buyer -> provider: deliver up to `units` of `service`, paid on `channel_id`."""

    order_id: bytes
    service: str
    channel_id: bytes
    units: int
    price: int
    request: bytes


@frame(31)
@dataclass(frozen=True, slots=True)
class ServiceDelivery(Frame):
    """Provider -> buyer: `units` more delivered (a tick, a reading, a call result).

    For a data feed, `payload` is the signed reading and `signature` the device
    key's signature over it; for tool time both may be empty.
    """

    order_id: bytes
    seq: int
    units: int
    payload: bytes
    signature: bytes


@frame(32)
@dataclass(frozen=True, slots=True)
class ServiceStop(Frame):
    """Buyer -> provider: stop after what is already paid for."""

    order_id: bytes
    reason: str


@frame(33)
@dataclass(frozen=True, slots=True)
class ServiceDone(Frame):
    """Provider -> buyer: the order is over; `delivered` units in all."""

    order_id: bytes
    delivered: int
    reason: str


# --------------------------------------------------------------------------- anchoring
# What a data-feed buyer needs from the producer to prove the readings it holds
# (mesh/anchoring/receipt.py owns the rules). The buyer asks; the producer answers
# with one `AnchorReceipt` per mined batch (split to fit a frame) for the records
# it delivered to that buyer, and nothing for records not mined yet.

MAX_RECEIPT_REQUEST = 1024
"""Most seqs one `ReceiptRequest` may name."""


@frame(40)
@dataclass(frozen=True, slots=True)
class ReceiptRequest(Frame):
    """Buyer -> producer: receipts, please, for these seqs of `stream` I hold."""

    stream: str
    seqs: tuple[int, ...]


@struct
@dataclass(frozen=True, slots=True)
class ReceiptPath(Struct):
    """One record's place in the batch: its seq and its Merkle path (32-byte entries)."""

    seq: int
    path: bytes


@frame(41)
@dataclass(frozen=True, slots=True)
class AnchorReceipt(Frame):
    """Producer -> buyer: a mined batch and the paths of the buyer's records in it."""

    anchor_tx: bytes
    block_height: int
    block_hash: str
    bump: bytes
    paths: tuple[ReceiptPath, ...]
