"""Our own records at every listener: periodic announcements and the adaptive TTL.

An agent refreshes its own records instead of having every listener query for
them (RFC 6762 §5.2 cache maintenance costs N listeners x N peers; one unsolicited
multicast response refreshes every listener at once). `Announcer` registers the
service, then multicasts the registration broadcast -- PTR, SRV, TXT and A in one
response built by zeroconf from the registered `ServiceInfo`, sent from port 5353
-- every `pacing.announce_every(ttl)` seconds, +-`JITTER`, so a listener hears it
twice before its rescue query (table.py) would go out.

Every `TTL_CHECK_EVERY` seconds it computes the TTL the site needs
(`pacing.advertised_ttl` of the table's size and the measured size of one
announcement, never below the configured TTL) and, when `pacing.should_readvertise`
says so, re-registers with it (`update_service`: three broadcasts carrying the new
TTL), and announces once more `STALE_ANSWERS` seconds later. All zeroconf calls that
block run in a Trio worker thread. (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import trio
from zeroconf import ServiceInfo, Zeroconf

# zeroconf re-exports DNSOutgoing "for backwards compat" outside __all__, so mypy
# --strict needs the defining module.
from zeroconf._protocol.outgoing import DNSOutgoing

from mesh.discovery.pacing import advertised_ttl, announce_every, should_readvertise
from mesh.discovery.table import PeerTable

JITTER = 0.1
"""Each interval between two announcements is drawn within +-this fraction."""

TTL_CHECK_EVERY = 5.0
"""Seconds between two checks of the TTL the site needs."""

STALE_ANSWERS = 1.5
"""Seconds after a re-registration at which we announce once more: zeroconf may still
multicast an answer with the old records that it queued (aggregated, up to ~1.2 s)
just before the update, and listeners would take it for the latest."""


class Announcer:
    """Registers our service and keeps it alive at every listener (see the module).

    `service_info(ttl)` builds the `ServiceInfo` to publish with that TTL from the
    current announcement; `floor` is the configured TTL, the least ever advertised.
    """

    def __init__(
        self,
        zc: Zeroconf,
        table: PeerTable,
        service_info: Callable[[int], ServiceInfo],
        floor: int,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._zc = zc
        self._table = table
        self._service_info = service_info
        self._floor = floor
        self._rng = rng or random.Random()
        self._lock = trio.Lock()
        self._rescheduled = trio.Event()
        self.ttl = floor
        """The TTL our records are advertised with now."""
        self.info = service_info(floor)
        self._packet = self._render(self.info)
        self.sent = 0
        """Periodic announcements sent (registration and update broadcasts not counted)."""
        self.ttl_changes = 0
        """Re-registrations with another TTL."""

    @property
    def record_bytes(self) -> int:
        """Bytes of one announcement (the UDP payload, all packets of it)."""
        return sum(len(packet) for packet in self._packet.packets())

    def _render(self, info: ServiceInfo) -> DNSOutgoing:
        """The registration broadcast of `info`, rendered once (sending reuses the bytes)."""
        out = self._zc.generate_service_broadcast(info, None)
        out.packets()
        return out

    async def register(self) -> None:
        """Register our service (cooperating responders: names are unique by construction)."""
        register = functools.partial(self._zc.register_service, cooperating_responders=True)
        await trio.to_thread.run_sync(register, self.info)

    async def republish(self, ttl: int | None = None) -> None:
        """Re-register with fresh records -- the announcement changed, or the TTL is `ttl`."""
        async with self._lock:
            ttl = self.ttl if ttl is None else ttl
            info = self._service_info(ttl)
            await trio.to_thread.run_sync(self._zc.update_service, info)
            self.info, self.ttl, self._packet = info, ttl, self._render(info)
            self._rescheduled.set()  # the update broadcasts count as an announcement

    def announce(self) -> None:
        """Multicast our records once, now (non-blocking: zeroconf's loop sends it)."""
        if self._zc.done:
            return
        self._zc.send(self._packet)
        self.sent += 1

    def _interval(self) -> float:
        return announce_every(self.ttl) * self._rng.uniform(1 - JITTER, 1 + JITTER)

    async def run(self) -> None:
        """Announce and adapt the TTL until cancelled; call after `register`."""
        now = trio.current_time()
        next_announce, next_check = now + self._interval(), now + TTL_CHECK_EVERY
        while True:
            with trio.move_on_at(min(next_announce, next_check)):
                await self._rescheduled.wait()
            now = trio.current_time()
            if self._rescheduled.is_set():
                self._rescheduled = trio.Event()
                next_announce = now + STALE_ANSWERS
                continue
            if now >= next_check:
                next_check = now + TTL_CHECK_EVERY
                target = advertised_ttl(len(self._table), self.record_bytes, floor=self._floor)
                if should_readvertise(self.ttl, target):
                    await self.republish(target)
                    self.ttl_changes += 1
                    continue
            if now >= next_announce:
                self.announce()
                next_announce = now + self._interval()


__all__ = ["JITTER", "STALE_ANSWERS", "TTL_CHECK_EVERY", "Announcer"]
