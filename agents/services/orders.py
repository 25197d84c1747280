"""Orders, the provider's side: running a service for a buyer (the buyer's side is
`agents.services.buyer`).

The provider delivers a unit only when its meter allows it (paid + credit window),
calls the vendor's handler to produce it, and stops the tool when payment stops
arriving. On a stop request it still delivers what is already paid for, so at the end
of every order ``paid == delivered x price`` on both sides.

Meters live here, one per channel (buyer, provider, service), fed by the channel
manager's durable totals; a dead peer's meters freeze at once.

A storage fault (the agent's `StorageHealth`) pauses business: while it lasts the
provider refuses new orders and gives no credit; a running order delivers only units
already durably paid for (a reading only once it is in the signed log, so it may wait
for storage), then waits for storage rather than ending -- the buyer's payments sent
meanwhile are acknowledged once they are written, and the order goes on (a stop or a
lost buyer still ends it). So a fault costs the buyer time, not its prepay window.
Meter statements are logged after `ServiceDone` is sent, by a task that waits for
storage to work; at most `MAX_UNLOGGED_STATEMENTS` wait (more are dropped, and said so).
(docs/ARCHITECTURE.md §6, §7)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from agents.logs import log_context
from agents.profile import ServiceSpec
from agents.services.frames import ServiceDelivery, ServiceDone, ServiceOrder, ServiceStop
from agents.services.metering import ProviderMeter
from agents.services.tally import Tallies
from agents.services.vendor import (
    CallHandler,
    FeedHandler,
    Handler,
    HandlerError,
    ServiceContext,
    ToolHandler,
)
from mesh.anchoring.record import Record as AnchorRecord
from mesh.anchoring.record import sign_record
from mesh.health import StorageHealth
from mesh.identity import Identity
from mesh.readings import Reading, now_ms, readings_stream
from mesh.wire import Frame

log = logging.getLogger("agents.services")
Send = Callable[[str, Frame], Awaitable[None]]
Pay = Callable[[bytes, int], Awaitable[object]]


LogRecord = Callable[[str, bytes, str | None], Awaitable[tuple[bytes, bytes]]]
"""log_record(stream, payload, audience) -> (record body, signature): the agent's signed
log; `audience` is the peer id the record goes to (the one that may ask for its receipt).
It returns once the record is stored (waiting while storage fails)."""
OnStatement = Callable[[str, ServiceOrder, bytes, bytes], Awaitable[None]]
"""on_statement(buyer, order, record body, signature): an order's final statement."""
STALL_FLOOR = 1.0
"""Seconds a provider waits for a payment at least, however short its tick: at 100
readings/s three ticks are 30 ms, and a scheduler hiccup would end the order. Waiting
costs nothing -- it delivers nothing more meanwhile."""
MAX_UNLOGGED_STATEMENTS = 1024
"""Meter statements kept in memory while they wait for storage to work again."""
STATEMENT_UNITS = 100
STATEMENT_SECONDS = 10.0
"""A running order logs a cumulative meter statement every this many units or seconds,
whichever comes first, so a kill -9 loses at most one such period of the record."""


def statement(
    role: str,
    order_id: bytes,
    service: str,
    peer: str,
    channel_id: bytes,
    units: int,
    price: int,
    paid: int,
    *,
    final: bool = True,
) -> bytes:
    """A meter statement: what one order delivered and what was paid, as JSON. A running
    order's statements (`final` false) are cumulative: the latest one of an order
    supersedes the earlier ones."""
    fields = {
        "role": role,
        "order": order_id.hex(),
        "service": service,
        "peer": peer,
        "channel": channel_id.hex(),
        "units": units,
        "price": price,
        "paid": paid,
        "final": final,
    }
    return json.dumps(fields, sort_keys=True).encode()


def _standalone(identity: Identity, ctx: ServiceContext, reading: bytes, seq: int) -> AnchorRecord:
    """A reading as a record outside any log (when the agent keeps no log); `seq`
    grows over the provider's life, as a log's would (buyers refuse a seq again)."""
    return AnchorRecord(
        agent=identity.public_key,
        stream=readings_stream(ctx.service_id),
        seq=seq,
        timestamp_ms=0,
        payload=reading,
        prev=bytes(32),
    )


@dataclass
class _MeterCell:
    """A provider meter and the event that wakes deliveries when payment arrives."""

    meter: ProviderMeter
    peer_id: str
    service: str
    changed: trio.Event = field(default_factory=trio.Event)

    def update(self, meter: ProviderMeter) -> None:
        self.meter = meter
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class _ProviderOrder:
    order: ServiceOrder
    peer_id: str
    stopping: bool = False
    delivered: int = 0
    stated: int = 0  # units in the latest meter statement logged
    stated_at: float = field(default_factory=trio.current_time)


class Provider:
    """Runs orders for the services of a profile."""

    def __init__(
        self,
        identity: Identity,
        services: dict[str, tuple[ServiceSpec, Handler]],
        send: Send,
        channel_check: Callable[[str, bytes, str], str | None],
        nursery: trio.Nursery,
        stall_ticks: float = 3.0,
        health: StorageHealth | None = None,
    ) -> None:
        """`channel_check(peer, channel_id, service)` returns a problem or None; while
        `health` reports a storage fault no new order is taken and no credit given."""
        self.identity = identity
        self.services = services
        self._send = send
        self._channel_check = channel_check
        self._nursery = nursery
        self._stall_ticks = stall_ticks
        self._meters: dict[bytes, _MeterCell] = {}
        self._orders: dict[bytes, _ProviderOrder] = {}
        self._ended: set[bytes] = set()  # channels whose funding went: meters stay frozen
        self._standalone_seqs: dict[str, int] = {}  # service -> last seq (no log kept)
        self._health = health or StorageHealth()
        self._unlogged = 0  # meter statements waiting to be logged
        self.state: dict[str, dict[str, Any]] = {sid: {} for sid in services}
        self.log_record: LogRecord | None = None
        self.on_statement: OnStatement | None = None
        """Told of each order's final meter statement once logged (work orders)."""
        """Set by the runtime: readings and meter statements go into the signed log."""
        self.sales = Tallies()
        """Orders begun and units delivered per service (status, metrics)."""
        self.on_reading: Callable[[str, Reading], None] | None = None
        """Set by the runtime: each reading sold (service id, reading as signed), for the
        bridges that publish it."""

    def meters(self) -> dict[bytes, ProviderMeter]:
        """Every meter by channel id (snapshots)."""
        return {cid: cell.meter for cid, cell in self._meters.items()}

    def meter_rows(self) -> list[dict[str, Any]]:
        """Every meter as `mesh status` shows it: channel, buyer, service, units, sats."""
        return [
            {
                "channel_id": cid.hex(),
                "role": "provider",
                "buyer": cell.peer_id,
                "service": cell.service,
                "price": cell.meter.price,
                "delivered_units": cell.meter.delivered_units,
                "paid": cell.meter.paid,
                "frozen": cell.meter.frozen,
            }
            for cid, cell in self._meters.items()
        ]

    def on_paid(self, channel_id: bytes, peer_id: str, service: str, total: int) -> None:
        """The channel manager's durable new total for a channel we are paid on."""
        cell = self._meters.get(channel_id)
        if cell is None:
            spec = self.services.get(service)
            if spec is None:
                return
            # A channel paid on before this start (no order of ours created its meter):
            # what was paid was consumed by orders we no longer know of -- counted as
            # delivered, so a restart never gives the paid-ahead units away twice.
            price = spec[0].price
            meter = ProviderMeter(price, spec[0].credit * price, -(-total // price), total)
            cell = self._meters[channel_id] = _MeterCell(meter, peer_id, service)
        if total > cell.meter.paid:
            cell.update(cell.meter.paid_up_to(total))

    def peer_lost(self, peer_id: str) -> None:
        """The buyer is gone: its meters freeze, its orders stop."""
        for cell in self._meters.values():
            if cell.peer_id == peer_id and not cell.meter.frozen:
                cell.update(cell.meter.freeze())

    def channel_ended(self, channel_id: bytes) -> None:
        """The channel paying for a meter ended early (its funding is gone): nothing
        more is delivered against it, ever."""
        self._ended.add(channel_id)
        cell = self._meters.get(channel_id)
        if cell is not None and not cell.meter.frozen:
            cell.update(cell.meter.freeze())

    def channel_final(self, channel_id: bytes) -> None:
        """The channel is settled and the manager let it go: so does its meter (an
        order still running on it keeps its own reference to the frozen cell)."""
        cell = self._meters.pop(channel_id, None)
        if cell is not None and not cell.meter.frozen:
            cell.update(cell.meter.freeze())
        self._ended.discard(channel_id)

    def peer_back(self, peer_id: str) -> None:
        """The buyer has a session again."""
        for cid, cell in self._meters.items():
            if cell.peer_id == peer_id and cell.meter.frozen and cid not in self._ended:
                cell.update(cell.meter.thaw())

    async def handle(self, peer_id: str, frame: Frame) -> bool:
        """Handle an order-related frame from a buyer; False if it is not one."""
        if isinstance(frame, ServiceOrder):  # its deliveries run in a task started inside
            with log_context(peer=peer_id, channel=frame.channel_id.hex(), service=frame.service):
                await self._start(peer_id, frame)
        elif isinstance(frame, ServiceStop):
            running = self._orders.get(frame.order_id)
            if running is not None and running.peer_id == peer_id:
                running.stopping = True
                cell = self._meters.get(running.order.channel_id)
                if cell is not None:
                    cell.update(cell.meter)  # wake the delivery loop
        else:
            return False
        return True

    async def _start(self, peer_id: str, order: ServiceOrder) -> None:
        entry = self.services.get(order.service)
        problem = None
        if not self._health.healthy:
            problem = f"storage fault: {self._health.reason()}"
        elif entry is None:
            problem = f"no service {order.service!r} here"
        elif not entry[0].may_buy(peer_id):
            problem = f"{peer_id[:16]}… may not buy {order.service}"
        elif order.price != entry[0].price:
            problem = f"price is {entry[0].price}, not {order.price}"
        elif order.units <= 0 or order.order_id in self._orders:
            problem = "bad order"
        else:
            problem = self._channel_check(peer_id, order.channel_id, order.service)
        if problem is not None or entry is None:
            await self._send(peer_id, ServiceDone(order.order_id, 0, f"refused: {problem}"))
            return
        spec, handler = entry
        cell = self._meters.get(order.channel_id)
        if cell is None:
            cell = self._meters[order.channel_id] = _MeterCell(
                ProviderMeter(price=spec.price, credit=spec.credit * spec.price),
                peer_id,
                order.service,
            )
        running = self._orders[order.order_id] = _ProviderOrder(order, peer_id)
        self.sales[spec.id].orders += 1
        self._nursery.start_soon(self._run, running, spec, handler, cell)

    async def _run(
        self, running: _ProviderOrder, spec: ServiceSpec, handler: Handler, cell: _MeterCell
    ) -> None:
        order = running.order
        ctx = ServiceContext(
            spec.id, running.peer_id, order.order_id, 0, spec.tick, spec.price, self.state[spec.id]
        )
        reason = "complete"
        try:
            while running.delivered < order.units:
                meter = cell.meter
                allowed = meter.deliverable_units()
                faulted = not self._health.healthy
                if running.stopping or faulted:  # finish only what is paid for, no credit
                    allowed = min(allowed, max(0, meter.paid - meter.delivered_value) // spec.price)
                if allowed == 0:
                    if running.stopping or meter.frozen:
                        reason = "stopped by buyer" if running.stopping else "buyer lost"
                        break
                    stall = max(self._stall_ticks * spec.tick, STALL_FLOOR)
                    with trio.move_on_after(stall) as waited:
                        await cell.changed.wait()
                    # Payments may be waiting for storage: no stall while it fails.
                    if waited.cancelled_caught and not faulted and self._health.healthy:
                        reason = "payment stopped"
                        break
                    continue
                ctx.seq = running.delivered
                try:
                    payload, signature = await self._produce(handler, ctx, order)
                except HandlerError as exc:
                    log.error("service %s: %s", spec.id, exc)  # noqa: TRY400 - one line says it
                    reason = f"handler failed: {exc}"
                    break
                except Exception as exc:  # vendor code: its bug ends the order, not the agent
                    log.exception("service %s: handler %s failed", spec.id, handler.name)
                    reason = f"handler failed: {type(exc).__name__}: {exc}"
                    break
                if cell.meter.deliverable_units() == 0:  # frozen while producing
                    reason = "buyer lost"
                    break
                cell.update(cell.meter.deliver(1))
                running.delivered += 1
                self.sales[spec.id].deliveries += 1
                await self._send(
                    running.peer_id,
                    ServiceDelivery(order.order_id, running.delivered, 1, payload, signature),
                )
                now = trio.current_time()
                if (
                    running.delivered - running.stated >= STATEMENT_UNITS
                    or now - running.stated_at >= STATEMENT_SECONDS
                ):  # a kill loses at most one period of the record
                    running.stated, running.stated_at = running.delivered, now
                    self._log_statement_soon(
                        self._statement(running, spec, cell, final=False), running.peer_id
                    )
        finally:
            with trio.CancelScope(shield=True):
                if isinstance(handler, ToolHandler) and handler.stop is not None:
                    await handler.stop(ctx)
                del self._orders[order.order_id]
        log.info(
            "order %s for %s: %d unit(s), %s",
            order.order_id.hex()[:8],
            spec.id,
            running.delivered,
            reason,
        )
        await self._send(running.peer_id, ServiceDone(order.order_id, running.delivered, reason))
        self._log_statement_soon(self._statement(running, spec, cell), running.peer_id, order)

    @staticmethod
    def _statement(
        running: _ProviderOrder, spec: ServiceSpec, cell: _MeterCell, *, final: bool = True
    ) -> bytes:
        order = running.order
        return statement(
            "provider",
            order.order_id,
            spec.id,
            running.peer_id,
            order.channel_id,
            running.delivered,
            spec.price,
            cell.meter.paid,
            final=final,
        )

    def _log_statement_soon(
        self, payload: bytes, peer_id: str, final: ServiceOrder | None = None
    ) -> None:
        """Log a meter statement from a task of its own: it waits while storage fails,
        and the order's end must not (bounded: past `MAX_UNLOGGED_STATEMENTS`, dropped).
        The `final` statement of an order goes to `on_statement` too, once logged."""
        log_record = self.log_record
        if log_record is None:
            return
        if self._unlogged >= MAX_UNLOGGED_STATEMENTS:
            log.warning("meter statement dropped: %d wait for storage already", self._unlogged)
            return
        self._unlogged += 1
        self._nursery.start_soon(self._log_statement, log_record, payload, peer_id, final)

    async def _log_statement(
        self, log_record: LogRecord, payload: bytes, peer_id: str, final: ServiceOrder | None
    ) -> None:
        try:
            await self._health.wait_healthy()
            body, signature = await log_record("meters", payload, peer_id)
        finally:
            self._unlogged -= 1
        if final is not None and self.on_statement is not None:
            await self.on_statement(peer_id, final, body, signature)

    async def _produce(
        self, handler: Handler, ctx: ServiceContext, order: ServiceOrder
    ) -> tuple[bytes, bytes]:
        if isinstance(handler, ToolHandler):
            await handler.run(ctx)
            return b"", b""
        if isinstance(handler, FeedHandler):
            produced = await handler.read(ctx)
            if not isinstance(produced, Reading):
                raise HandlerError(
                    f"feed handler {handler.name!r} returned a {type(produced).__name__},"
                    " not a mesh.readings.Reading"
                )
            stamped = produced.stamped(now_ms())
            reading = stamped.encode()
            if self.log_record is not None:  # a signed, hash-chained, anchored record
                logged = await self.log_record(readings_stream(ctx.service_id), reading, ctx.buyer)
            else:
                seq = self._standalone_seqs[ctx.service_id] = (
                    self._standalone_seqs.get(ctx.service_id, -1) + 1
                )
                signed = sign_record(self.identity, _standalone(self.identity, ctx, reading, seq))
                logged = signed.body, signed.signature
            if self.on_reading is not None:  # signed (and stored): the bridges may show it
                self.on_reading(ctx.service_id, stamped)
            return logged
        assert isinstance(handler, CallHandler)
        return await handler.handle(ctx, order.request), b""
