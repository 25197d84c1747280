"""`mesh buy`: the agent's side of it, and what the command line shows of it.

The agent's side is the control socket's ``buy`` (`buy`): a want of its own, run like
a profile's (`Purchases.want`) until every unit is bought or its time is up -- then it
is stopped, not cut: the seller finishes what is paid for, the buyer pays for what
arrived, and the reply counts it. With ``"deliveries": true`` (what `mesh buy` sends)
every unit that arrived and verified goes to a `DeliverySink` that lives only as long
as that call: it keeps at most the units asked for and at most `KEEP_BYTES` of their
payloads, and the reply carries them. A profile's standing want has no sink, so an
agent that buys forever keeps nothing per unit.

The request payload (a call's question) travels in the command as text, or as hex when
it is not UTF-8 (``request_hex``), and rides in `WantSpec.request` as a string whose
undecodable bytes are surrogate-escaped, so the order carries the exact bytes.

The command line's side: the command's arguments (`add_buy_arguments`), and the reply
as one line per unit (`delivery_lines`) or one JSON document (`json_document`), and a
one-line summary (`summary_line`). Nothing here talks to a seller or touches money: it
asks `Purchases` and reports. (docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from agents.buying import Purchases, WantProgress
from agents.profile import KINDS, WantSpec
from mesh.anchoring.record import decode_record
from mesh.errors import MeshError
from mesh.readings import decode_reading, now_ms, reading_from_json

KEEP_BYTES = 16 * 1024 * 1024
"""Payload bytes one `mesh buy` keeps in the agent, at most; a unit that no longer fits
is counted (``not_kept``), not kept."""
MAX_REQUEST_BYTES = 60 * 1024
"""The largest request payload: an order carrying it still fits in one wire frame."""
STOP_GRACE = 10.0
"""Seconds an order has, once the time of its `mesh buy` is up, to end and settle."""
DEFAULT_TIMEOUT = 60.0
"""Seconds a `mesh buy` buys for, unless it says otherwise."""
_STOPPED_BY_US = "stopped by buyer"  # the seller's word for an order we stopped


class BuyError(MeshError):
    """A ``buy`` command the agent cannot run as given."""


def request_field(payload: bytes) -> dict[str, str]:
    """The command's field carrying `payload`: ``request`` (UTF-8 text) or
    ``request_hex``."""
    try:
        return {"request": payload.decode()}
    except UnicodeDecodeError:
        return {"request_hex": payload.hex()}


def request_text(command: dict[str, Any]) -> str:
    """The request payload of a ``buy`` command as `WantSpec.request` holds it."""
    if "request_hex" in command:
        text = bytes.fromhex(str(command["request_hex"])).decode(errors="surrogateescape")
    else:
        text = str(command.get("request", ""))
    size = len(text.encode(errors="surrogateescape"))  # a lone surrogate: ValueError
    if size > MAX_REQUEST_BYTES:
        raise BuyError(f"buy: the request is {size} bytes; at most {MAX_REQUEST_BYTES}")
    return text


def want_of(command: dict[str, Any]) -> WantSpec:
    """The want a ``buy`` command asks for."""
    kind = str(command.get("kind", ""))
    if kind not in KINDS:
        raise BuyError(f"buy: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return WantSpec(
        service=str(command["service"]),
        max_price=int(command.get("max_price", 10**9)),
        units=int(command["units"]),
        budget=int(command.get("budget", 10**12)),
        prepay=int(command.get("prepay", 1)),
        kind=kind,
        tick=float(command.get("tick", 1.0)),
        request=request_text(command),
        deadline=float(command.get("deadline", 0.0)),
    )


class DeliverySink:
    """The units one `mesh buy` received, as its reply shows them: a reading's seq in
    the seller's signed log and its payload, a call's answer, a tick, and when the agent
    held each (`clock`: wall-clock ms). Bounded by the units asked for and by
    `keep_bytes` of payload."""

    def __init__(
        self,
        kind: str,
        units: int,
        keep_bytes: int = KEEP_BYTES,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.kind = kind
        self.units = units
        self.count = 0
        self.not_kept = 0
        self._room = keep_bytes
        self._clock = clock
        self._kept: list[tuple[int, int | None, bytes, int]] = []  # (unit, seq, payload, ms)

    def add(self, payload: bytes) -> None:
        """One unit that arrived and verified (`Buyer.buy`'s ``on_unit``): held now."""
        received_ms = self._clock()  # first: what follows is the sink's own work
        if self.count >= self.units:
            return  # never more than asked for (the orders cannot deliver more)
        self.count += 1
        seq = None
        if self.kind == "data-feed":  # a signed record the buyer verified: keep its reading
            record = decode_record(payload)
            seq, payload = record.seq, record.payload
        if len(payload) > self._room:
            self.not_kept += 1
            return
        self._room -= len(payload)
        self._kept.append((self.count, seq, payload, received_ms))

    def to_json(self) -> list[dict[str, Any]]:
        """The kept units: ``unit`` (1, 2, ... in this buy), ``kind``,
        ``received_ms`` (when the agent held it, verified: ms since the epoch, its wall
        clock), a reading's ``seq`` and ``reading`` (`Reading.to_json`), else ``payload``
        (UTF-8 text) or ``payload_hex``."""
        shown = []
        for unit, seq, payload, received_ms in self._kept:
            item: dict[str, Any] = {"unit": unit, "kind": self.kind, "received_ms": received_ms}
            if seq is not None:  # a verified feed delivery: its payload is a typed reading
                item["seq"] = seq
                item["reading"] = decode_reading(payload).to_json()
                shown.append(item)
                continue
            try:
                item["payload"] = payload.decode()
            except UnicodeDecodeError:
                item["payload_hex"] = payload.hex()
            shown.append(item)
        return shown


async def buy(
    purchases: Purchases,
    command: dict[str, Any],
    track: Callable[[WantProgress], None],
    gone: trio.Event | None = None,
) -> dict[str, Any]:
    """Run the control socket's ``buy``: its want goes to `track` (to be shown in the
    agent's status) and is bought until done or ``timeout`` seconds; the reply says
    what was delivered and paid, ``why`` not every unit came (empty when they all
    did), and with ``"deliveries": true`` the units themselves (see module). If the
    asker hangs up (`gone`), the want stops as when its time is up: the seller finishes
    what is paid for and the buyer pays for what arrived."""
    want = want_of(command)
    peer = str(command["peer"]) if command.get("peer") else None
    timeout = float(command.get("timeout", DEFAULT_TIMEOUT))
    progress = WantProgress(want)
    track(progress)
    sink = DeliverySink(want.kind, want.units) if command.get("deliveries") else None
    stop = trio.Event()
    deadline = trio.current_time() + timeout
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_at, deadline, stop)
        if gone is not None:
            nursery.start_soon(_set_when, gone, stop)
        with trio.move_on_at(deadline + STOP_GRACE) as cut:
            on_unit = sink.add if sink is not None else None
            await purchases.want(progress, peer, stop=stop, on_unit=on_unit)
        nursery.cancel_scope.cancel()
    time_up = trio.current_time() >= deadline
    reply: dict[str, Any] = {
        "service": want.service,
        "units": want.units,
        "state": progress.state,
        "delivered": progress.delivered,
        "paid": progress.paid,
        "placed": progress.placed,
        "reason": progress.orders[-1].reason if progress.orders else "",
        "why": _why(progress, peer, timeout, time_up=time_up, cut=cut.cancelled_caught),
    }
    if sink is not None:
        reply["not_kept"] = sink.not_kept
        reply["deliveries"] = sink.to_json()
    return reply


async def _set_at(deadline: float, event: trio.Event) -> None:
    await trio.sleep_until(deadline)
    event.set()


async def _set_when(first: trio.Event, then: trio.Event) -> None:
    await first.wait()
    then.set()


def _why(
    progress: WantProgress, peer: str | None, timeout: float, *, time_up: bool, cut: bool
) -> str:
    """Why a `mesh buy` did not get every unit, in one line ("" when it did)."""
    want = progress.want
    if progress.delivered >= want.units:
        return ""
    if progress.state == "budget spent":
        return f"the budget is spent ({progress.paid} sat paid)"
    within = f"within {timeout:g} s"
    if cut:
        return f"not all units {within}, and the order did not end {STOP_GRACE:g} s after"
    if not time_up:
        return "the agent is stopping"
    if progress.placed == 0:
        if progress.failure:
            return f"no order placed {within}: {progress.failure}"
        seller = f"peer {peer[:16]}" if peer else "connected peer"
        price = f" at or below {want.max_price} sat a unit" if want.max_price < 10**9 else ""
        return f"no {seller} offered {want.service}{price} {within}"
    ended = [o.reason for o in progress.orders if o.reason != _STOPPED_BY_US]
    last = f" (an order ended: {ended[-1]})" if ended else ""
    return f"not all units {within}{last}"


# ---------------------------------------------------------------- the command line's side


BUY_DESCRIPTION = (
    "Ask a running agent to buy UNITS of SERVICE at the cheapest offer among "
    "the peers it is connected to (or from --peer), paying through a channel it opens "
    "on demand. Prints what was delivered, one line per unit -- a data feed's "
    "readings as '#SEQ  READING' (SEQ: the reading's place in the seller's signed "
    "log), a call's answers, 'tick N' for tool time; text that is not UTF-8 as "
    "'hex:...' -- and then a summary line on stderr. Exits 0 when every unit was "
    "delivered, else 1 with one line saying why (no offer, the agent not running, "
    "orders that ended early...)."
)


def add_buy_arguments(buy: argparse.ArgumentParser) -> None:
    """`mesh buy`'s arguments, but for --data-dir (`agents.agent_cli` adds it)."""
    buy.add_argument("service", help="service id, e.g. spindle-time")
    buy.add_argument(
        "--units", type=int, required=True, help="how many units (ticks, readings, calls)"
    )
    buy.add_argument(
        "--kind",
        required=True,
        choices=KINDS,
        help="what is bought: the buyer pays only for units it can verify as this kind "
        "(a signed new reading, an answer, or tool time no faster than --tick)",
    )
    buy.add_argument(
        "--tick",
        type=float,
        default=1.0,
        help="seconds one unit lasts (tool time: no unit is paid faster); default 1",
    )
    buy.add_argument("--peer", help="buy from this peer id only")
    buy.add_argument(
        "--max-price", type=int, help="refuse offers above this many satoshis per unit"
    )
    buy.add_argument(
        "--request",
        metavar="TEXT|@FILE",
        help="the request every unit is ordered with (a call's question): TEXT as UTF-8, "
        f"or @FILE for the bytes of FILE; at most {MAX_REQUEST_BYTES} bytes",
    )
    buy.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to buy for (default {DEFAULT_TIMEOUT:g}); then the order is stopped, "
        "what was delivered is paid, and the command says so (exit 1)",
    )
    buy.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document instead: service, units, state, delivered, paid, "
        "placed (orders), reason (the last order's end), why (empty when complete), "
        "deliveries (unit, kind, received_ms: when this agent held the unit, verified, in "
        "ms since 1970 by its clock; a reading's seq and its fields: name, kind, value, unit, "
        "quality, source and agent times; a call's answer as payload text or payload_hex) and "
        f"not_kept (units past {KEEP_BYTES // 2**20} MiB of payload, counted, not shown)",
    )
    buy.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the deliveries (JSON with --json) to FILE instead of stdout; the "
        "summary on stderr says where",
    )


def delivery_lines(reply: dict[str, Any]) -> Iterator[str]:
    """One line per delivered unit: ``#SEQ  NAME = VALUE UNIT (QUALITY, measured TIME)``
    for a data feed, the answer of a
    call, ``tick N`` for tool time. Text that is not one printable line is shown as a
    JSON string (a seller's bytes never drive the terminal); non-UTF-8 as ``hex:...``."""
    for item in reply.get("deliveries", []):
        if item["kind"] == "tool-time":
            yield f"tick {item['unit']}"
            continue
        if "reading" in item:
            text = reading_from_json(item["reading"]).describe()
            yield f"#{item['seq']}  {text if text.isprintable() else json.dumps(text)}"
            continue
        if "payload" in item:
            text = str(item["payload"])
            shown = text if text.isprintable() else json.dumps(text)
        else:
            shown = f"hex:{item['payload_hex']}"
        yield f"#{item['seq']}  {shown}" if "seq" in item else shown


def json_document(reply: dict[str, Any]) -> str:
    """The reply as `mesh buy --json` prints it: one JSON document."""
    return json.dumps(reply, indent=1)


def complete(reply: dict[str, Any]) -> bool:
    """Whether every unit asked for was delivered."""
    return int(reply["delivered"]) >= int(reply["units"])


def summary_line(reply: dict[str, Any], where: str | None = None) -> str:
    """One line: the units delivered of those asked, the satoshis paid, the state, why
    it did not complete if it did not, where the deliveries went (`where`) and how many
    were not kept."""
    line = (
        f"{reply['delivered']}/{reply['units']} unit(s) of {reply['service']} delivered,"
        f" {reply['paid']} sat paid ({reply['state']})"
    )
    if reply.get("why"):
        line += f": {reply['why']}"
    if where is not None:
        line += f"; deliveries in {where}"
    if reply.get("not_kept"):
        line += f"; {reply['not_kept']} not kept (over {KEEP_BYTES // 2**20} MiB)"
    return line


__all__ = [
    "BUY_DESCRIPTION",
    "DEFAULT_TIMEOUT",
    "KEEP_BYTES",
    "MAX_REQUEST_BYTES",
    "STOP_GRACE",
    "BuyError",
    "DeliverySink",
    "add_buy_arguments",
    "buy",
    "complete",
    "delivery_lines",
    "json_document",
    "request_field",
    "request_text",
    "summary_line",
    "want_of",
]
