"""The m2mesh wire codec: the one frame registry and the one decoder.

A frame is a frozen dataclass registered with a numeric tag (`frame`). On the wire
it is a MessagePack array ``[tag, field1, field2, ...]``; a nested struct is an
array of its fields, a tuple is an array. One table (`FRAME_TYPES`) holds every
frame type; each layer defines and registers its own frames, so the protocol has a
single, versioned schema (`PROTOCOL_VERSION`) with one owner per frame:

    tags  1-9    the session: mesh/session_frames.py (handshake, hello, heartbeat, message)
    tags 20-29   payment channels: mesh/channel/frames.py
    tags 30-39   services: agents/services/frames.py (orders and deliveries)
    tags 40-49   anchoring receipts: mesh/anchoring/frames.py
    tags 50-59   certificate proofs: mesh/certs/frames.py
    tags 60-69   escrowed work orders: mesh/workflow/frames.py

A frame type is known to `decode` once its module is imported; the agent imports
every layer, and a process that does not know a layer refuses its frames as an
unknown tag, as it would a newer protocol's. Tag ranges are the layers' own.

`decode` is the only door from peer bytes to frames. Whatever a peer sends --
truncated, oversized, deeply nested, unknown tag, wrong type -- it either
returns a fully typed frame or raises `RemoteProtocolError` naming the field and
the reason. This module does no I/O.

MessagePack is produced and parsed by the `msgpack` package (C extension), the
codec the project chose; the schema checks are done here in one pass over the
decoded array, driven by tables built once at import time. (docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from mesh.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 9
"""Bumped on any incompatible change to a frame or to the session protocol
(2: the frames of a DATA packet share one Noise transport message; 3: `ChannelRelease`;
4: `ChannelPays`; 5: a payee acks every open channel on each new session, at seq 0 when
nothing is paid yet, and a restarted payer pays nothing until it has that ack; 6: site
and network in `Hello`; 7: a feed's delivered record carries a typed reading,
`mesh.readings`, which a buyer checks before it pays; 8: the certificate exchange's
frames, `mesh.certs.frames`, and the work-order escrow's, `mesh.workflow.frames`, which a
version-7 peer cannot decode; 9: `WorkRecord`, the machine's meter statement for a work
order's passport)."""

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
