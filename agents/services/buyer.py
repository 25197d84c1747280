"""Orders, the buyer's side: ordering a service and paying as verified units arrive.

The buyer pays through its channel for what arrived plus its prepay window, never above
the price it agreed or its budget; what counts as arrived is `agents.services.delivery`'s
(verified, new, no faster than the clock). An order ends when every unit came, on a
stop, on a delivery that does not verify (a cheat), on silence past the want's wait
limit, when the seller is lost, or when the channel cannot pay any more; whichever it
is, `OrderResult` says so, and what was paid ahead on the channel carries to the next
order on it. (docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import trio

from agents.logs import log_context
from agents.profile import WantSpec
from agents.services.delivery import DeliveryCheck, DeliveryViolation, Expected, SeqMemory
from agents.services.frames import ServiceDelivery, ServiceDone, ServiceOrder, ServiceStop
from agents.services.metering import BuyerMeter
from agents.services.orders import Pay, Send
from agents.services.tally import Tallies
from mesh.anchoring.record import SignedRecord
from mesh.errors import MeshError
from mesh.wire import Frame

log = logging.getLogger("agents.services")


@dataclass
class OrderResult:
    """How a bought order ended, as the buyer saw it."""

    order_id: bytes
    service: str
    provider: str
    channel_id: bytes
    price: int
    delivered: int
    paid: int
    reason: str
    fault: str = ""
    """Why the seller is to blame, if it is: "cheat" (a delivery that did not verify),
    "silent" (no unit within the want's wait limit), "refused", "lost" (session gone).
    An order whose channel could not pay any more ("payment failed: ...") is nobody's
    fault: it still counts what arrived and what was paid."""

    @property
    def stopped_by_channel(self) -> bool:
        """Whether the channel ended the order (it is full, closed or gone)."""
        return self.reason.startswith("payment failed")


@dataclass
class _BuyerOrder:
    deliveries: trio.MemorySendChannel[Frame]
    provider: str
    result: OrderResult
    meter: BuyerMeter
    ahead: int  # paid ahead by an earlier order on the channel, counted in `meter.paid`
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


SETTLE_AFTER_LOSS = 2.0
"""Seconds an order whose seller was lost may spend paying for what had arrived."""


class Buyer:
    """Buys services: orders, verifies deliveries, pays as they arrive."""

    def __init__(self, send: Send, pay: Pay) -> None:
        """`pay(channel_id, amount)` pays through the channel manager."""
        self._send = send
        self._pay = pay
        self._orders: dict[bytes, _BuyerOrder] = {}
        self._ahead: dict[bytes, int] = {}  # channel id -> paid ahead, not yet received
        self._seqs = SeqMemory()
        self.purchases = Tallies()
        """Orders placed and units accepted per service (status, metrics)."""
        self.keep_record: Callable[[SignedRecord], None] | None = None
        """Set by the runtime: readings the buyer paid for, kept for later proofs."""

    def peer_lost(self, peer_id: str) -> None:
        """The seller is gone: its orders end now (the want moves on, and orders again
        once a session is back) instead of waiting for deliveries that cannot come."""
        for running in self._orders.values():
            if running.provider == peer_id and not running.scope.cancel_called:
                running.result.reason, running.result.fault = "seller lost", "lost"
                running.scope.cancel()

    def channel_final(self, channel_id: bytes) -> None:
        """The channel is settled and the manager let it go: forget what was paid
        ahead on it (nothing more can be delivered against it)."""
        self._ahead.pop(channel_id, None)

    def in_flight(self) -> list[OrderResult]:
        """Orders still running, with what they have delivered and paid so far."""
        return [order.result for order in self._orders.values()]

    async def handle(self, peer_id: str, frame: Frame) -> bool:
        """Route a delivery or done frame to its order; False if it is not one."""
        if not isinstance(frame, ServiceDelivery | ServiceDone):
            return False
        running = self._orders.get(frame.order_id)
        if running is not None and running.provider == peer_id:
            try:
                running.deliveries.send_nowait(frame)
            except trio.WouldBlock:
                log.warning("order %s: deliveries arriving faster than handled", frame.order_id)
        return True

    async def buy(
        self,
        provider: str,
        want: WantSpec,
        price: int,
        channel_id: bytes,
        *,
        stop: trio.Event | None = None,
        on_unit: Callable[[bytes], None] | None = None,
    ) -> OrderResult:
        """Order `want` from `provider` at `price` and pay as units arrive.

        Setting `stop` asks the provider to finish what is paid for and end. Each unit
        that arrived and verified goes to `on_unit` (its payload), if given: the buyer
        keeps nothing per unit. A payment the channel refuses (`MeshError`: it is full,
        closing or gone) ends the order with what arrived and was paid counted.
        """
        prefix = want.order_prefix[:8]
        order_id = prefix + secrets.token_bytes(16 - len(prefix))
        budget = min(want.budget, want.units * price)
        # What an earlier order on this channel paid ahead and never got is counted as
        # paid for this one: a seller that took a prepay and delivered nothing is not
        # paid ahead again, however often it is ordered from.
        ahead = self._ahead.pop(channel_id, 0)
        # Order only the units the budget pays: a seller running a tick of credit ahead
        # would otherwise deliver one more than a nearly full channel -- or the want's
        # last satoshis -- can pay, and be left with it unpaid.
        want = replace(want, units=max(1, min(want.units, max(budget, ahead) // price)))
        # Paid in steps of half the prepay window (a unit at least): the seller never
        # runs dry, and a fast feed is not one signed update -- and one journal write
        # on each side -- per reading.
        window = want.prepay * price
        meter = BuyerMeter(
            price=price,
            prepay=window,
            budget=max(budget, ahead),
            paid=ahead,
            min_payment=max(price, window // 2),
        )
        send, receive = trio.open_memory_channel[Frame](min(want.units, 4096) + 16)
        result = OrderResult(order_id, want.service, provider, channel_id, price, 0, 0, "")
        running = self._orders[order_id] = _BuyerOrder(send, provider, result, meter, ahead)
        self.purchases[want.service].orders += 1
        expected = Expected(want.kind, want.service, provider, want.units, want.tick)
        check = DeliveryCheck(expected, trio.current_time(), self._seqs)
        with log_context(peer=provider, channel=channel_id.hex(), service=want.service):
            try:
                with running.scope:
                    try:
                        await self._order_and_pay(
                            running, want, price, channel_id, order_id, receive, stop, check,
                            on_unit=on_unit,
                        )  # fmt: skip
                    except MeshError as exc:  # the channel cannot pay: the order ends here
                        result.reason = f"payment failed: {exc}"
                        log.info("order %s: %s", order_id.hex()[:8], result.reason)
                        await self._send(provider, ServiceStop(order_id, result.reason))
                if running.scope.cancelled_caught:  # the seller is gone: owe it no prepay
                    running.meter = replace(running.meter, prepay=0)
                    with trio.move_on_after(SETTLE_AFTER_LOSS):  # pay what arrived, if we can
                        try:
                            await self._settle_running(running, channel_id)
                        except MeshError as exc:
                            log.info(
                                "order %s: paying after loss failed: %s", order_id.hex()[:8], exc
                            )
            finally:
                del self._orders[order_id]
                meter = running.meter
                self._ahead[channel_id] = max(0, meter.paid - meter.received_value)
        result.paid = meter.paid - ahead
        return result

    async def _order_and_pay(
        self,
        running: _BuyerOrder,
        want: WantSpec,
        price: int,
        channel_id: bytes,
        order_id: bytes,
        receive: trio.MemoryReceiveChannel[Frame],
        stop: trio.Event | None,
        check: DeliveryCheck,
        *,
        on_unit: Callable[[bytes], None] | None,
    ) -> None:
        """Send the order, then pay for what arrives -- verified, new, no faster than the
        clock (`check`) -- until it is done, cheats or falls silent; `running.meter` and
        `running.result` stay current (also when the order is cancelled)."""
        provider, result = running.provider, running.result
        request = want.request.encode(errors="surrogateescape")  # any bytes `mesh buy` sent
        order = ServiceOrder(order_id, want.service, channel_id, want.units, price, request)
        await self._send(provider, order)
        await self._settle_running(running, channel_id)
        stop_sent = False
        while True:
            if stop is not None and stop.is_set() and not stop_sent:
                await self._send(provider, ServiceStop(order_id, "buyer stopping"))
                stop_sent = True
                running.meter = replace(running.meter, prepay=0)
            limit = want.wait_limit()
            with trio.move_on_after(limit) as waited:
                frame = await self._next(receive, stop if not stop_sent else None)
            if waited.cancelled_caught:
                result.reason, result.fault = f"no unit within {limit:g} s", "silent"
                await self._send(provider, ServiceStop(order_id, result.reason))
                break
            if frame is None:
                continue
            if isinstance(frame, ServiceDone):
                result.reason = frame.reason
                if frame.reason.startswith("refused"):
                    result.fault = "refused"
                break
            assert isinstance(frame, ServiceDelivery)
            try:
                reading = check.accept(frame, trio.current_time())
            except DeliveryViolation as exc:  # not paid; the order ends here
                result.reason, result.fault = f"violation: {exc}", "cheat"
                log.warning("order %s from %s: %s", order_id.hex()[:8], provider[:16], exc)
                await self._send(provider, ServiceStop(order_id, result.reason))
                break
            running.meter = running.meter.receive(1)
            result.delivered += 1
            self.purchases[result.service].deliveries += 1
            if reading is not None and self.keep_record is not None:
                self.keep_record(reading)
            if on_unit is not None:
                on_unit(frame.payload)
            await self._settle_running(running, channel_id)
        # Pay what is owed for what arrived, and nothing ahead.
        running.meter = replace(running.meter, prepay=0)
        await self._settle_running(running, channel_id)

    async def _settle_running(self, running: _BuyerOrder, channel_id: bytes) -> None:
        running.meter = await self._settle(running.meter, channel_id)
        running.result.paid = running.meter.paid - running.ahead

    async def _settle(self, meter: BuyerMeter, channel_id: bytes) -> BuyerMeter:
        amount = meter.due()
        if amount:
            await self._pay(channel_id, amount)
            meter = meter.pay(amount)
        return meter

    async def _next(
        self, receive: trio.MemoryReceiveChannel[Frame], stop: trio.Event | None
    ) -> Frame | None:
        if stop is None:
            return await receive.receive()
        async with trio.open_nursery() as nursery:
            got: list[Frame] = []

            async def read() -> None:
                got.append(await receive.receive())
                nursery.cancel_scope.cancel()

            async def stopped() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            nursery.start_soon(stopped)
        return got[0] if got else None


__all__ = ["SETTLE_AFTER_LOSS", "Buyer", "OrderResult"]
