"""Channels as the operator names them and hears of them: ids by prefix, a close that
says what happens when it cannot finish, and what each channel's expiry means.

A channel id may be given as any unique prefix of at least `MIN_PREFIX` hex digits
(`mesh status` shows 16), resolved against the channels the agent holds and those
only its store keeps (released, settled). `close_channel` is the control socket's
``close``; `at_expiry` is the line `mesh status` and `mesh channels` print under each
channel, for a running agent and a stopped one alike.

This module never changes how a channel settles: it asks the manager to close, and
when the close does not come it says what the manager does instead.
(docs/ARCHITECTURE.md §4, §6.2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import trio

from agents.channels import ChannelManager
from agents.offline import stored_ids
from mesh.channel.config import ChannelConfig, ChannelFailure
from mesh.channel.settle import LOCKING_STATES
from mesh.channel.state import FINAL_STATES, Record, Role, State
from mesh.errors import MeshError

MIN_PREFIX = 8
"""The fewest hex digits of a channel id that name it (about 4 x 10^9 values)."""
SHOWN_MATCHES = 5
"""An ambiguous prefix lists at most this many of the ids it matches."""
CLOSE_MARGIN = ChannelConfig().close_margin_blocks
_FINAL = frozenset(state.value for state in FINAL_STATES)
_HEX = frozenset("0123456789abcdef")


class ChannelIdError(MeshError):
    """A channel id that is not hex, too short, unknown or ambiguous."""


def channel_prefix(text: str) -> str:
    """`text` checked as a channel id or a prefix of one: lowercase hex digits, at
    least `MIN_PREFIX` and at most 64 of them."""
    prefix = text.strip().lower()
    if not prefix or not set(prefix) <= _HEX:
        raise ChannelIdError(
            f"channel id {text!r} is not hex: give the id, or a unique prefix of at least"
            f" {MIN_PREFIX} hex digits of it, as `mesh channels` lists them"
        )
    if len(prefix) < MIN_PREFIX:
        raise ChannelIdError(
            f"channel id {prefix} is too short ({len(prefix)} hex digits): give at least"
            f" {MIN_PREFIX} (a unique prefix of the id, as `mesh channels` lists them)"
        )
    if len(prefix) > 64:
        raise ChannelIdError(f"channel id {prefix[:16]}… is longer than 64 hex digits")
    return prefix


def resolve_channel(prefix: str, candidates: Iterable[bytes]) -> bytes:
    """The one id among `candidates` that starts with the checked `prefix`."""
    matches = sorted({cid for cid in candidates if cid.hex().startswith(prefix)})
    if not matches:
        raise ChannelIdError(f"no channel {prefix}: no channel id of this agent starts with it")
    if len(matches) > 1:
        shown = ", ".join(cid.hex() for cid in matches[:SHOWN_MATCHES])
        more = " and more" if len(matches) > SHOWN_MATCHES else ""
        raise ChannelIdError(
            f"channel id prefix {prefix} is ambiguous: it matches {shown}{more}; give more digits"
        )
    return matches[0]


async def find_channel(manager: ChannelManager, database: Path, text: str) -> bytes:
    """The channel `text` names: among those `manager` holds and those stored at
    `database` (read-only, off the Trio thread)."""
    prefix = channel_prefix(text)
    held = [record.terms.channel_id for record, _ in manager.records()]
    stored = await trio.to_thread.run_sync(stored_ids, database, prefix, SHOWN_MATCHES + 1)
    return resolve_channel(prefix, [*held, *stored])


async def close_channel(manager: ChannelManager, database: Path, text: str) -> dict[str, Any]:
    """Close the channel `text` names (`ChannelManager.close`); the reply says what
    comes next where the close is not the end of it (``note``). A payer's close the
    payee does not answer fails with what happens instead: the refund at the expiry."""
    channel_id = await find_channel(manager, database, text)
    try:
        record = await manager.close(channel_id)
    except ChannelFailure as exc:
        raise ChannelFailure(await _not_closed(manager, channel_id, exc)) from None
    reply: dict[str, Any] = {
        "channel_id": record.terms.channel_id.hex(),
        "state": record.state.value,
        "total": record.total,
        "close_txid": record.close_txid,
    }
    note = await _close_note(manager, record)
    if note:
        reply["note"] = note
    return reply


def blocks(count: int) -> str:
    """`count` blocks, in words."""
    return "1 block" if count == 1 else f"{count} blocks"


def refund_words(record: Record, height: int | None) -> str:
    """When a payer's refund of `record` is valid and what this agent does then."""
    terms = record.terms
    refund = f"the refund of {terms.capacity - terms.refund_fee} sat (the capacity less its fee)"
    expiry = terms.expiry_height
    if height is None:
        return (
            f"{refund} becomes valid at height {expiry} (the chain's height is not known now)"
            " and this agent broadcasts it then"
        )
    if height >= expiry:
        return f"{refund} is valid now (expiry {expiry} reached) and this agent broadcasts it"
    return (
        f"{refund} becomes valid at height {expiry} ({blocks(expiry - height)} from now)"
        " and this agent broadcasts it then"
    )


async def _not_closed(manager: ChannelManager, channel_id: bytes, failure: ChannelFailure) -> str:
    """What a payer's close that did not come means: the channel stays closing, the
    request goes again when the payee is back (`peer_connected`), the payee may still
    close with the latest payment, and else the watcher broadcasts the refund at the
    expiry (`check_expiry`)."""
    try:
        record = manager.record(channel_id)
    except ChannelFailure:
        return str(failure)
    if record.role is not Role.PAYER or record.state not in LOCKING_STATES:
        return str(failure)
    height = await manager.chain_height()
    peer = record.peer_id[:16]
    if manager.node.session(record.peer_id) is None:
        why = f"the payee {peer} is not connected"
    else:
        why = f"the payee {peer} did not answer within {manager.config.open_timeout:.0f} s"
    return (
        f"channel {channel_id.hex()[:16]} not closed in time: {why}. It stays"
        f" {record.state.value}: the close is asked again when the payee is back, and the"
        f" payee can still close with the latest payment ({record.total} sat); otherwise"
        f" {refund_words(record, height)}"
    )


async def _close_note(manager: ChannelManager, record: Record) -> str | None:
    """What comes after a close call that returned (`ChannelSettlement.close`)."""
    expiry = record.terms.expiry_height
    if record.role is Role.PAYER:
        if record.state is State.REFUSED:  # never opened: nothing to close
            height = await manager.chain_height()
            return f"the payee refused the funding; {refund_words(record, height)}"
        if record.state in (State.PROPOSED, State.REFUND_SIGNED):
            return "still opening: nothing to close yet"
        return None
    gone = manager.node.session(record.peer_id) is None
    if record.state is State.CLOSED:
        if not gone:
            return None
        return (
            f"closed by this agent alone with the latest payment the payer signed"
            f" ({record.total} sat); the payer hears of it when it is back"
        )
    if record.state is State.CLOSING:
        return (
            "the close with the latest payment is recorded but the chain has not taken it"
            " yet: this agent broadcasts it again at every expiry check"
        )
    if record.state is State.OPEN and record.total == 0:
        return (
            "nothing was paid on this channel, so there is nothing for this agent to close:"
            f" the payer releases it, or its refund takes the coins back at height {expiry}"
        )
    return None


def at_expiry(channel: Mapping[str, Any], height: int | None) -> str:
    """A channel's expiry height, the blocks left to it at `height` (None: unknown),
    and what happens then, from its `channel_summary`."""
    expiry = int(channel["expiry_height"])
    if height is None:
        when = f"expiry {expiry} (height unknown)"
    elif height >= expiry:
        when = f"expiry {expiry} (reached)"
    else:
        when = f"expiry {expiry} ({blocks(expiry - height)} left)"
    state, paid = channel["state"], int(channel["signed_total"])
    if state in _FINAL:
        return f"{when}: settled, nothing happens then"
    if channel["role"] == Role.PAYER.value:
        if state in (State.PROPOSED.value, State.REFUND_SIGNED.value):
            return f"{when}: still opening; once funded, the refund is valid from then"
        return (
            f"{when}: the refund of the whole capacity ({channel['capacity']} sat, less its"
            " fee) becomes valid then and this agent broadcasts it, unless the payee has"
            f" closed with the latest payment ({paid} sat) first"
        )
    if state in (State.PROPOSED.value, State.REFUND_SIGNED.value):
        return f"{when}: not funded, nothing at stake"
    if paid == 0:
        return f"{when}: nothing paid, nothing to close; the payer's refund takes it back then"
    if state == State.CLOSING.value:
        return (
            f"{when}: the close with the latest payment ({paid} sat) is broadcast again until"
            " the chain takes it; from the expiry on, the payer's refund could take everything"
        )
    return (
        f"{when}: this agent closes with the latest payment ({paid} sat) at height"
        f" {expiry - CLOSE_MARGIN}, before the payer's refund of everything becomes valid"
    )


__all__ = [
    "MIN_PREFIX",
    "ChannelIdError",
    "at_expiry",
    "channel_prefix",
    "close_channel",
    "find_channel",
    "resolve_channel",
]
