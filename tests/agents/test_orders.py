"""Provider and buyer order engines joined over an in-memory link (STYLE §9).

The channel is simulated by its one observable effect: the payee's durable total
(`Provider.on_paid`). Time is Trio's autojump clock, so ticks cost nothing.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import trio

from agents.profile import ServiceSpec, WantSpec
from agents.services.buyer import Buyer, OrderResult
from agents.services.orders import STATEMENT_UNITS, Provider
from agents.services.vendor import Handler, Registry, ServiceContext, resolve
from mesh.health import StorageHealth
from mesh.identity import Identity
from mesh.readings import Reading
from mesh.wire import Frame

CHANNEL = secrets.token_bytes(32)


def spec(kind: str, price: int = 10, credit: int = 1, tick: float = 1.0) -> ServiceSpec:
    return ServiceSpec("svc", kind, "unit", price, tick, credit, "builtin:x", ("*",))


class Link:
    """Buyer and provider in one process; frames cross without a network."""

    def __init__(self, nursery: trio.Nursery, service: ServiceSpec, handler: Handler) -> None:
        self.provider_identity = Identity.generate()
        self.buyer_id = Identity.generate().peer_id
        self.paid_total = 0
        self.payments_blocked = False
        self.payments_held = False
        self.health = StorageHealth()
        self.provider = Provider(
            self.provider_identity,
            {service.id: (service, handler)},
            self._to_buyer,
            lambda peer, cid, svc: None,
            nursery,
            health=self.health,
        )
        self.buyer = Buyer(self._to_provider, self._pay)
        self.kind, self.tick = service.kind, service.tick

    async def _to_provider(self, _: str, frame: Frame) -> None:
        await self.provider.handle(self.buyer_id, frame)

    async def _to_buyer(self, _: str, frame: Frame) -> None:
        await self.buyer.handle(self.provider_identity.peer_id, frame)

    async def _pay(self, channel_id: bytes, amount: int) -> None:
        if self.payments_blocked:
            return  # signed but never arrives: the provider sees no new total
        self.paid_total += amount
        if not self.payments_held:  # held: arrived, not durable yet (a storage fault)
            self.provider.on_paid(channel_id, self.buyer_id, "svc", self.paid_total)

    def release_held(self) -> None:
        """The held payments are durable now: the provider sees their total."""
        self.payments_held = False
        self.provider.on_paid(CHANNEL, self.buyer_id, "svc", self.paid_total)

    async def buy(
        self, units: int, price: int = 10, prepay: int = 1, deadline: float = 0.0, **kw: object
    ) -> OrderResult:
        want = WantSpec(
            "svc", max_price=price, units=units, budget=10**9, prepay=prepay,
            kind=self.kind, tick=self.tick, deadline=deadline,
        )  # fmt: skip
        return await self.buyer.buy(
            self.provider_identity.peer_id,
            want,
            price,
            CHANNEL,
            **kw,  # type: ignore[arg-type]
        )


def registry_with(kind: str, fn: Callable[..., object]) -> Handler:
    registry = Registry()
    maker = {"tool-time": registry.tool, "data-feed": registry.feed, "call": registry.call}[kind]
    return maker("x")(fn)  # type: ignore[arg-type]


async def tick(ctx: ServiceContext) -> None:
    await trio.sleep(ctx.tick)


async def test_tool_time_paid_exactly_for_what_was_delivered(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time"), resolve("builtin:spindle", "tool-time"))
        result = await link.buy(units=12)
    assert result.delivered == 12 and result.reason == "complete"
    assert result.paid == 12 * 10 == link.paid_total
    meter = next(iter(link.provider.meters().values()))
    assert meter.delivered_units == 12 and meter.paid == 120
    assert link.provider.state["svc"]["stops"] == 1  # the lease ended: spindle stopped


async def test_data_feed_readings_are_signed_and_verified(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(
            nursery, spec("data-feed", price=1, credit=2), resolve("builtin:vibration", "data-feed")
        )
        units: list[bytes] = []
        result = await link.buy(units=20, price=1, prepay=2, on_unit=units.append)
    assert result.delivered == 20 and result.paid == 20
    assert len(units) == 20 and all(b"readings/svc" in body for body in units)


async def test_a_forged_reading_stops_the_order(autojump_clock: object) -> None:
    async def read(ctx: ServiceContext) -> Reading:
        await trio.sleep(ctx.tick)
        return Reading.of("rms_velocity", 1.5, "mm/s")

    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("data-feed", price=1), registry_with("data-feed", read))
        link.provider.identity = Identity.generate()  # signs with someone else's key
        result = await link.buy(units=5, price=1)
    assert result.reason.startswith("violation: a reading signed by another agent")
    assert result.delivered == 0 and result.fault == "cheat"


@pytest.mark.parametrize(
    ("produced", "reason"),
    [
        (b"1.5 mm/s", "handler failed: feed handler 'x' returned a bytes, not a"),
        (ZeroDivisionError("the sensor's driver"), "handler failed: ZeroDivisionError"),
    ],
)
async def test_a_feed_handler_that_fails_ends_its_order_not_the_agent(
    autojump_clock: object, produced: object, reason: str
) -> None:
    async def read(ctx: ServiceContext) -> Any:
        await trio.sleep(ctx.tick)
        if isinstance(produced, Exception):
            raise produced
        return produced

    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("data-feed", price=1), registry_with("data-feed", read))
        result = await link.buy(units=5, price=1)
        assert result.delivered == 0 and result.reason.startswith(reason), result.reason
        again = await link.buy(units=1, price=1)  # the provider still runs
        assert again.delivered == 0 and again.reason.startswith(reason)


async def test_calls_are_paid_before_they_run(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(
            nursery, spec("call", price=50, credit=0), resolve("builtin:inspection", "call")
        )
        answers: list[bytes] = []
        result = await link.buy(units=3, price=50, on_unit=answers.append)
    assert result.delivered == 3 and result.paid == 150
    assert len(answers) == 3 and all(b"verdict" in payload for payload in answers)


async def test_provider_that_stops_delivering_stops_being_paid(autojump_clock: object) -> None:
    async def stuck(ctx: ServiceContext) -> None:
        if ctx.seq >= 3:
            await trio.sleep_forever()  # the machine jams
        await trio.sleep(ctx.tick)

    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time"), registry_with("tool-time", stuck))
        with trio.move_on_after(60):
            await link.buy(units=10, prepay=1)
        # 3 delivered; the buyer paid for those plus its one-unit prepay window, no more.
        assert link.paid_total == (3 + 1) * 10
        nursery.cancel_scope.cancel()


async def test_buyer_that_stops_paying_stops_receiving_within_one_tick(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time", credit=1), resolve("builtin:spindle", "tool-time"))
        stopped_at: list[float] = []

        async def cut_payments() -> None:
            await trio.sleep(4.5)
            link.payments_blocked = True
            stopped_at.append(trio.current_time())

        nursery.start_soon(cut_payments)
        result = await link.buy(units=100)
    meter = next(iter(link.provider.meters().values()))
    # Paid units plus at most the one-unit credit window, then the tool stops.
    assert meter.delivered_value <= meter.paid + 10
    assert result.reason == "payment stopped"
    assert link.provider.state["svc"]["stops"] == 1


async def test_killed_peer_freezes_the_meter_at_once(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time", credit=5), resolve("builtin:spindle", "tool-time"))
        results: list[OrderResult] = []

        async def buy() -> None:
            results.append(await link.buy(units=100, prepay=5))

        nursery.start_soon(buy)
        await trio.sleep(3.5)
        delivered_before = next(iter(link.provider.meters().values())).delivered_units
        link.provider.peer_lost(link.buyer_id)
        await trio.sleep(10)
        meter = next(iter(link.provider.meters().values()))
        assert meter.frozen and meter.delivered_units <= delivered_before + 1
        assert results and results[0].reason == "buyer lost"


async def test_stop_request_finishes_only_what_is_paid(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time", credit=2), resolve("builtin:spindle", "tool-time"))
        stop = trio.Event()

        async def stop_later() -> None:
            await trio.sleep(5.2)
            stop.set()

        nursery.start_soon(stop_later)
        result = await link.buy(units=100, prepay=3, stop=stop)
    assert result.reason == "stopped by buyer"
    assert result.paid == result.delivered * 10 == link.paid_total


@pytest.mark.parametrize("reason", ["price", "unknown"])
async def test_orders_are_refused_with_a_reason(reason: str, autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time"), resolve("builtin:spindle", "tool-time"))
        if reason == "price":
            result = await link.buy(units=3, price=9)  # the provider charges 10
        else:
            want = WantSpec("nothing-here", 10, 3, 100, 1, kind="call")
            result = await link.buyer.buy(link.provider_identity.peer_id, want, 10, CHANNEL)
    assert result.delivered == 0 and result.reason.startswith("refused")


async def test_a_storage_fault_pauses_orders_and_refuses_new_ones(autojump_clock: object) -> None:
    """The disk fills mid-order: the buyer's payments are held (not durable, so no new
    paid total), no credit is given and the order waits instead of ending; new orders
    are refused. When a write works again the held payments count, the order finishes
    paid to the satoshi and its meter statement, kept meanwhile, is logged."""
    statements: list[bytes] = []

    async def log_record(stream: str, payload: bytes, audience: str | None) -> tuple[bytes, bytes]:
        statements.append(payload)
        return b"", b""

    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time", credit=2), resolve("builtin:spindle", "tool-time"))
        link.provider.log_record = log_record
        results: list[OrderResult] = []

        async def buy() -> None:
            # (a buyer waiting this long for a paused seller: its own choice)
            results.append(await link.buy(units=20, prepay=3, deadline=600))

        nursery.start_soon(buy)
        await trio.sleep(5.2)
        link.payments_held = True  # the payee cannot make them durable: no on_paid
        link.health.fault("channels", sqlite3.OperationalError("database or disk is full"))
        at_fault = next(iter(link.provider.meters().values()))
        await trio.sleep(60)  # far past the stall timeout
        meter = next(iter(link.provider.meters().values()))
        assert not results  # paused, not ended
        assert meter.delivered_value <= max(at_fault.delivered_value, at_fault.paid)  # no credit
        refused = await link.buy(units=3)
        assert refused.delivered == 0
        assert refused.reason == "refused: storage fault: channels: database or disk is full"
        link.health.ok("channels")  # storage is back: the held payments are committed
        link.release_held()
        await trio.sleep(60)
        assert results and (results[0].delivered, results[0].reason) == (20, "complete")
        assert results[0].paid == 20 * 10 == link.paid_total - refused.paid  # (its prepay)
        # The order's final statement (the refused one never ran), after cumulative ones
        # logged while it ran (every STATEMENT_SECONDS of the 60 s pause).
        finals = [json.loads(p) for p in statements if json.loads(p)["final"]]
        assert [f["units"] for f in finals] == [20]
        assert all(json.loads(p)["units"] <= 20 for p in statements)


async def test_a_running_order_logs_cumulative_statements_and_a_final_one(
    autojump_clock: object,
) -> None:
    """A kill loses at most one period of the meter record: a running order logs a
    cumulative statement every STATEMENT_UNITS units (or STATEMENT_SECONDS)."""
    statements: list[dict[str, object]] = []

    async def log_record(stream: str, payload: bytes, audience: str | None) -> tuple[bytes, bytes]:
        if stream == "meters":
            statements.append(json.loads(payload))
        return payload, b""

    units = 2 * STATEMENT_UNITS + 5
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time", tick=0.001), resolve("builtin:spindle", "tool-time"))
        link.provider.log_record = log_record
        result = await link.buy(units=units, prepay=3)
        await trio.sleep(1)
    assert result.delivered == units
    assert [s["units"] for s in statements if not s["final"]] == [100, 200]
    assert [s["units"] for s in statements if s["final"]] == [units]


async def test_a_lost_seller_ends_the_order_at_once(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time"), resolve("builtin:spindle", "tool-time"))
        results: list[OrderResult] = []

        async def buy() -> None:
            results.append(await link.buy(units=50, prepay=2))

        nursery.start_soon(buy)
        await trio.sleep(5.5)
        link.provider.peer_lost(link.buyer_id)  # (both ends see the session end)
        started = trio.current_time()
        link.buyer.peer_lost(link.provider_identity.peer_id)
        while not results:
            await trio.sleep(0.01)
        assert trio.current_time() - started < 0.1
    [result] = results
    assert (result.reason, result.fault) == ("seller lost", "lost") and 5 <= result.delivered < 50
    # It paid for what arrived and at most its prepay window (2 units) ahead.
    assert result.delivered * 10 <= result.paid == link.paid_total <= (result.delivered + 2) * 10


async def test_a_restarted_provider_counts_what_was_paid_before_as_delivered() -> None:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, spec("tool-time", credit=2), resolve("builtin:spindle", "tool-time"))
        # A channel paid 95 sat before this start (price 10): no order of ours made it.
        link.provider.on_paid(CHANNEL, link.buyer_id, "svc", 95)
        meter = link.provider.meters()[CHANNEL]
        assert (meter.paid, meter.delivered_units) == (95, 10)
        assert meter.deliverable_units() == 1  # the credit window, not the 95 sat again
        nursery.cancel_scope.cancel()
