"""Buying what an agent wants: the cheapest usable offer, a channel with room, orders
until the units are bought or the budget is spent.

`Purchases.want(progress)` runs one want (a profile's ``[[wants]]`` entry, or a
`mesh buy`): it picks the cheapest seller with a session whose offer is within the
want's price and whose standing allows it (`SellerStanding`: a cheat, a silent seller or
a refused funding sets it aside), finds or opens a channel, and lets the `Buyer` run an
order on it. Every order counts toward the want however it ended, and a signed meter
statement records it. Then, until the want is done:

* a want whose remaining budget cannot pay one more unit stops ("budget spent");
* an open channel with room for a unit is used again (a stopped order resumes on it),
  a full one is closed first so its coins do not stay locked;
* a new channel holds the profile's ``[channels] capacity``, or what is left of the
  want's budget if that is less: what is locked per seller is bounded by configuration,
  never by the whole budget, and a channel outlives the order that opened it.

Nothing here is kept per unit; `WantProgress` keeps totals and the last few orders.
(docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace

import trio

from agents.channels import ChannelFailure, ChannelManager, FundingRefused
from agents.logs import log_context
from agents.partners import parse_offer
from agents.profile import Profile, WantSpec
from agents.proofs import Proofs
from agents.services.buyer import Buyer, OrderResult
from agents.services.orders import LogRecord, statement
from agents.services.standing import SellerStanding
from mesh.channel.config import ChannelRefused
from mesh.channel.state import Role, State
from mesh.discovery import PeerTable
from mesh.errors import MeshError
from mesh.net.node import Node

log = logging.getLogger("agents.runtime")

LOOK_FAST_SECONDS = 5.0
"""A want that found no usable offer looks again every 0.1 s for this long, then every
0.5 s (a want nobody sells costs little however big the table)."""
RECENT_ORDERS = 16
"""Finished orders a want remembers (for status); older ones live on only in its
totals and in the signed meter statements."""


@dataclass
class WantProgress:
    """How one want is going: totals over every order however it ended, and the last
    few orders. ``state`` is looking, buying, done (every unit bought), budget spent,
    or stopped."""

    want: WantSpec
    delivered: int = 0
    paid: int = 0
    placed: int = 0
    orders: deque[OrderResult] = field(default_factory=lambda: deque(maxlen=RECENT_ORDERS))
    state: str = "looking"
    failure: str = ""
    """The latest attempt that placed no order (a channel that could not be opened)."""

    def count(self, result: OrderResult) -> None:
        """Add a finished order to the totals."""
        self.placed += 1
        self.delivered += result.delivered
        self.paid += result.paid
        self.orders.append(result)


class Purchases:
    """Runs wants against the agent's channels, buyer and peer table (see module)."""

    def __init__(
        self,
        profile: Profile,
        manager: ChannelManager,
        buyer: Buyer,
        node: Node,
        table: Callable[[], PeerTable | None],
        log_record: LogRecord,
        close: Callable[[bytes], Awaitable[None]],
        standing: SellerStanding,
        stop: trio.Event,
        proofs: Proofs | None = None,
    ) -> None:
        """`close(channel_id)` closes a channel cooperatively (never raising); `stop`
        ends every want (providers finish what is paid)."""
        self.profile = profile
        self._manager = manager
        self._buyer = buyer
        self._node = node
        self._table = table
        self._log_record = log_record
        self._close = close
        self._standing = standing
        self._stop = stop
        self._proofs = proofs
        self._asked: dict[str, float] = {}  # provider -> when it last asked us for proof
        self._order_locks: dict[tuple[str, str], trio.Lock] = {}
        self._running: dict[int, tuple[WantSpec, str | None]] = {}

    def running(self) -> list[tuple[WantSpec, str | None]]:
        """The wants being bought now, each with the one peer it is restricted to."""
        return list(self._running.values())

    async def want(
        self,
        progress: WantProgress,
        peer: str | None = None,
        *,
        stop: trio.Event | None = None,
        on_unit: Callable[[bytes], None] | None = None,
    ) -> None:
        """Buy `progress.want` (only from `peer`, if given) until done, spent or stopped:
        by the agent's stop, or by `stop` if given (a `mesh buy` whose time is up). Each
        unit that arrived and verified goes to `on_unit` (its payload), if given; nothing
        is kept here."""
        key = id(progress)
        self._running[key] = (progress.want, peer)
        try:
            if stop is None:
                await self._want(progress, peer, self._stop, on_unit)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_relay, self._stop, stop)  # the agent's stop ends it too
                await self._want(progress, peer, stop, on_unit)
                nursery.cancel_scope.cancel()
        finally:
            del self._running[key]

    async def _want(
        self,
        progress: WantProgress,
        peer: str | None,
        stop: trio.Event,
        on_unit: Callable[[bytes], None] | None,
    ) -> None:
        want = progress.want
        looking_since = trio.current_time()
        while not stop.is_set() and progress.delivered < want.units:
            offer = self.best_offer(want, peer)
            if offer is None:  # look often at first (its providers are being dialled)
                fresh = trio.current_time() - looking_since < LOOK_FAST_SECONDS
                with trio.move_on_after(0.1 if fresh else 0.5):
                    await stop.wait()
                continue
            looking_since = trio.current_time()
            provider, price = offer
            budget = want.budget - progress.paid
            if budget < price:  # not one more unit: the want ends here, and says so
                log.info("want %s: budget spent (%d sat paid)", want.service, progress.paid)
                progress.state = "budget spent"
                return
            progress.state = "buying"
            try:
                if want.require:  # before any coin moves: the provider proves it first
                    if self._proofs is None:
                        raise MeshError(f"no certificate exchange for {want.require}")
                    progress.state = "asking for proof"
                    await self._proofs.require(provider, want.require)
                    progress.state = "buying"
                # One order at a time per seller and service where work orders buy tool
                # time beside the wants: each order is sized to its channel's room.
                async with self._one_order(provider, want.service):
                    channel_id, room = await self.channel_for(provider, want.service, price, budget)
                    remaining = replace(
                        want, units=want.units - progress.delivered, budget=min(budget, room)
                    )
                    result = await self._buyer.buy(
                        provider, remaining, price, channel_id, stop=stop, on_unit=on_unit
                    )
            except (ChannelFailure, MeshError) as exc:
                log.warning("buying %s from %s failed: %s", want.service, provider[:16], exc)
                progress.failure = f"buying from {provider[:16]} failed: {exc}"
                # A payee that refused our funding locked our coins until the expiry:
                # never fund it again soon. One asking for a certificate first is no
                # fault: try again in a second. Any other failure: a short back-off.
                asking = isinstance(exc, ChannelRefused) and exc.code == "proof-required"
                if not (asking and self._first_ask(provider)):
                    fault = "funding" if isinstance(exc, FundingRefused) else "refused"
                    self._standing.judge(provider, fault, trio.current_time())
                progress.state = "looking"
                with trio.move_on_after(1.0):
                    await stop.wait()
                continue
            progress.count(result)
            await self._record(result)
            if result.delivered == 0 and not stop.is_set():
                progress.state = "looking"
                await trio.sleep(1.0)
        progress.state = "done" if progress.delivered >= want.units else "stopped"

    def _one_order(self, provider: str, service: str) -> AbstractAsyncContextManager[object]:
        """The lock of (`provider`, `service`) when the profile has work orders (their
        tool time and a want of the same service would share a channel's room: two
        orders at once could overrun it); nothing to wait for otherwise."""
        if not self.profile.workflows:
            return contextlib.nullcontext()
        return self._order_locks.setdefault((provider, service), trio.Lock())

    def _first_ask(self, provider: str) -> bool:
        """Whether `provider` asks us for a certificate for the first time in a minute
        (then no fault: it is asking; asking again and again is a refusal like any)."""
        now = trio.current_time()
        self._asked = {p: t for p, t in self._asked.items() if now - t < 60.0}
        first = provider not in self._asked
        self._asked[provider] = now
        return first

    async def _record(self, result: OrderResult) -> None:
        """Judge the seller by how the order ended, log it, and sign its statement."""
        provider = result.provider
        with log_context(peer=provider, channel=result.channel_id.hex(), service=result.service):
            aside = self._standing.judge(provider, result.fault, trio.current_time())
            if aside is not None:
                log.warning(
                    "seller %s set aside for %.0f s: %s",
                    provider[:16],
                    aside - trio.current_time(),
                    result.reason,
                )
            log.info(
                "order for %s from %s: %d unit(s), %d sat, %s",
                result.service,
                provider[:16],
                result.delivered,
                result.paid,
                result.reason,
            )
        await self._log_record(
            "meters",
            statement(
                "buyer",
                result.order_id,
                result.service,
                result.provider,
                result.channel_id,
                result.delivered,
                result.price,
                result.paid,
            ),
            None,
        )

    def best_offer(self, want: WantSpec, only: str | None = None) -> tuple[str, int] | None:
        """(seller, price) of the cheapest usable offer of `want`, if any."""
        offers = []
        table = self._table()
        peers = table.snapshot() if table is not None else {}
        for peer in peers.values():
            if only is not None and peer.peer_id != only:
                continue
            price = parse_offer(peer.services, want.service)
            if (
                price is not None
                and price <= want.max_price
                and self._node.session(peer.peer_id)
                and self._standing.usable(peer.peer_id, trio.current_time())
            ):
                offers.append((price, peer.peer_id))
        return (min(offers)[1], min(offers)[0]) if offers else None

    async def channel_for(
        self, provider: str, service: str, price: int, budget: int
    ) -> tuple[bytes, int]:
        """A channel to pay `provider` for `service` on, and how much it can still pay
        (see the module docstring for which one)."""
        for record, svc in self._manager.records():
            if (
                record.role is Role.PAYER
                and record.peer_id == provider
                and svc == service
                and record.state is State.OPEN
            ):
                room = record.terms.max_total - record.total
                if room >= price:
                    return record.terms.channel_id, room
                await self._close(record.terms.channel_id)  # full: settle it
        capacity = min(budget, self.profile.capacity) + (await self._manager.fees()).close
        channel_id = await self._manager.open(
            provider, service, capacity, self.profile.lifetime_blocks
        )
        record = self._manager.record(channel_id)
        return channel_id, record.terms.max_total - record.total


async def _relay(source: trio.Event, target: trio.Event) -> None:
    await source.wait()
    target.set()


__all__ = ["RECENT_ORDERS", "Purchases", "WantProgress"]
