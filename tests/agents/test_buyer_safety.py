"""A dishonest seller against the project's own buyer: pay only for what arrived verified.

Each case of issue 34 is a seller that takes an order and answers with frames an honest
provider would never send (a patched provider: the buyer is the real `Buyer`, the
readings real signed records). Before the fix the buyer paid for whatever a
`ServiceDelivery` said; now it pays for verified, new units only, ends the order at the
first violation or after its wait limit, and carries what it paid ahead into the next
order on the channel, so the most a seller can take is one prepay window. Every case
prints what the honest buyer lost (`LOSS` rows) and asserts it is at most that window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from agents.profile import WantSpec
from agents.services.buyer import Buyer, OrderResult
from agents.services.frames import ServiceDelivery, ServiceDone, ServiceOrder
from agents.services.standing import SellerStanding
from mesh.anchoring.record import Record as AnchorRecord
from mesh.anchoring.record import sign_record
from mesh.identity import Identity
from mesh.readings import Reading
from mesh.wire import Frame

CHANNEL = b"\x07" * 32
PRICE = 2
PREPAY = 3  # units


def reading(seller: Identity, seq: int, stream: str = "readings/svc") -> tuple[bytes, bytes]:
    payload = Reading.of("rms_velocity", seq / 10, "mm/s", source_ms=seq).encode()
    record = AnchorRecord(seller.public_key, stream, seq, 0, payload, bytes(32))
    signed = sign_record(seller, record)
    return signed.body, signed.signature


Cheat = Callable[["Market", ServiceOrder], Awaitable[None]]


class Market:
    """A real `Buyer` and a patched seller that answers each order with `cheat`."""

    def __init__(self, cheat: Cheat) -> None:
        self.seller = Identity.generate()
        self.cheat = cheat
        self.paid = 0
        self.buyer = Buyer(self._to_seller, self._pay)
        self.nursery: trio.Nursery | None = None

    async def _to_seller(self, _: str, frame: Frame) -> None:
        if isinstance(frame, ServiceOrder):
            assert self.nursery is not None
            self.nursery.start_soon(self.cheat, self, frame)

    async def _pay(self, _: bytes, amount: int) -> None:
        self.paid += amount

    async def deliver(self, frame: Frame) -> None:
        await self.buyer.handle(self.seller.peer_id, frame)

    async def buy(self, kind: str, units: int, tick: float = 1.0) -> OrderResult:
        want = WantSpec("svc", PRICE, units, 10**6, PREPAY, kind=kind, tick=tick)
        return await self.buyer.buy(self.seller.peer_id, want, PRICE, CHANNEL)


async def run(
    cheat: Cheat, kind: str, units: int, orders: int = 1
) -> tuple[Market, list[OrderResult]]:
    market = Market(cheat)
    results = []
    async with trio.open_nursery() as nursery:
        market.nursery = nursery
        for _ in range(orders):
            results.append(await market.buy(kind, units, tick=0.25 if kind == "tool-time" else 1.0))
        nursery.cancel_scope.cancel()
    return market, results


def loss(market: Market, results: list[OrderResult], case: str) -> int:
    """Satoshis paid beyond what arrived verified (printed as a LOSS row)."""
    delivered = sum(r.delivered for r in results)
    lost = market.paid - delivered * PRICE
    print(f"\nLOSS {case}: paid {market.paid}, verified units {delivered}, lost {lost} sat"
          f" (prepay window {PREPAY * PRICE})")  # fmt: skip
    assert 0 <= lost <= PREPAY * PRICE, (case, lost)
    return lost


# --------------------------------------------------------------------------- the cheats


async def overclaim(market: Market, order: ServiceOrder) -> None:
    """1. One frame claiming 400 units of a 40-unit tool-time order (spindle never ran)."""
    await market.deliver(ServiceDelivery(order.order_id, 400, 400, b"", b""))


async def unsigned(market: Market, order: ServiceOrder) -> None:
    """2. 100 readings with no payload and no signature."""
    for i in range(100):
        await market.deliver(ServiceDelivery(order.order_id, i + 1, 1, b"", b""))


async def replay(market: Market, order: ServiceOrder) -> None:
    """3. One genuine signed reading delivered 100 times."""
    body, signature = reading(market.seller, 0)
    for i in range(100):
        await market.deliver(ServiceDelivery(order.order_id, i + 1, 1, body, signature))


async def wrong_stream(market: Market, order: ServiceOrder) -> None:
    """4. The seller's own meter statement sold as a vibration reading."""
    body, signature = reading(market.seller, 5, stream="meters")
    await market.deliver(ServiceDelivery(order.order_id, 1, 1, body, signature))


async def silent(market: Market, order: ServiceOrder) -> None:
    """5. The prepay taken, nothing delivered, the order never answered."""
    await trio.sleep_forever()


async def too_fast(market: Market, order: ServiceOrder) -> None:
    """Tool time: 40 one-unit frames at once, as if 10 s of spindle ran in no time."""
    for i in range(40):
        await market.deliver(ServiceDelivery(order.order_id, i + 1, 1, b"", b""))


async def honest_then_replay(market: Market, order: ServiceOrder) -> None:
    """Ten genuine readings, then the first of them again."""
    for i in range(10):
        body, signature = reading(market.seller, i)
        await market.deliver(ServiceDelivery(order.order_id, i + 1, 1, body, signature))
    body, signature = reading(market.seller, 0)
    await market.deliver(ServiceDelivery(order.order_id, 11, 1, body, signature))


@pytest.mark.parametrize(
    ("cheat", "kind", "units", "verified"),
    [
        (overclaim, "tool-time", 40, 0),
        (unsigned, "data-feed", 100, 0),
        (replay, "data-feed", 100, 1),
        (wrong_stream, "data-feed", 100, 0),
        (too_fast, "tool-time", 40, 1),
        (honest_then_replay, "data-feed", 100, 10),
    ],
)
async def test_a_cheating_seller_is_paid_only_for_verified_new_units(
    autojump_clock: object, cheat: Cheat, kind: str, units: int, verified: int
) -> None:
    market, [result] = await run(cheat, kind, units)
    assert result.fault == "cheat" and result.reason.startswith("violation: "), result
    assert result.delivered == verified
    loss(market, [result], cheat.__name__)


async def test_a_silent_seller_ends_the_order_at_its_wait_limit(autojump_clock: object) -> None:
    started = trio.current_time()
    market, [result] = await run(silent, "data-feed", 100)
    assert result.fault == "silent" and result.delivered == 0
    assert trio.current_time() - started < 11  # 10 ticks of 1 s, not forever
    loss(market, [result], "silent")


@pytest.mark.parametrize("cheat", [silent, unsigned, overclaim])
async def test_ordering_again_from_a_cheat_costs_nothing_more(
    autojump_clock: object, cheat: Cheat
) -> None:
    """6. Cheat, re-order, repeat: what the buyer paid ahead is counted toward the next
    order on the channel, so ten orders cost what one did."""
    kind = "tool-time" if cheat is overclaim else "data-feed"
    market, results = await run(cheat, kind, 40, orders=10)
    assert all(r.fault in ("cheat", "silent") for r in results)
    assert [r.paid for r in results[1:]] == [0] * 9
    loss(market, results, f"{cheat.__name__} x10")


async def test_an_honest_seller_after_a_cheat_is_paid_exactly(autojump_clock: object) -> None:
    """The carried prepay is used, not lost: a seller that delivers after a silent
    order is paid for exactly the units delivered in all."""
    calls = {"n": 0}

    async def silent_then_honest(market: Market, order: ServiceOrder) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            await trio.sleep_forever()
        for i in range(order.units):
            body, signature = reading(market.seller, 100 + i)
            await market.deliver(ServiceDelivery(order.order_id, i + 1, 1, body, signature))
            await trio.sleep(0.001)
        await market.deliver(ServiceDone(order.order_id, order.units, "complete"))

    market, results = await run(silent_then_honest, "data-feed", 20, orders=2)
    assert [r.delivered for r in results] == [0, 20]
    assert market.paid == 20 * PRICE


def test_a_seller_caught_is_set_aside_with_a_growing_backoff() -> None:
    standing = SellerStanding()
    assert standing.judge("s", "cheat", 0.0) == 600.0
    assert not standing.usable("s", 599.0) and standing.usable("s", 600.0)
    assert standing.judge("s", "cheat", 600.0) == 1800.0  # 1 200 s the second time
    assert standing.judge("s", "", 1800.0) is None  # a complete order forgives no cheat
    assert standing.judge("q", "silent", 0.0) == 30.0
    assert standing.judge("q", "silent", 30.0) == 90.0
    assert standing.judge("q", "", 90.0) is None
    assert standing.judge("q", "silent", 100.0) == 130.0  # forgiven: 30 s again
    assert standing.judge("l", "lost", 0.0) is None and standing.usable("l", 0.0)
    assert set(standing.aside(100.0)) == {"s", "q"}
