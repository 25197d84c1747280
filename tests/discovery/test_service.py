"""The Trio shell's own rules, without the network: announcing, the adaptive TTL, the
resolve queue and the verification memo (real mDNS runs in test_loopback.py)."""

from __future__ import annotations

import random
import time
from typing import Any, cast

import pytest
import trio
import trio.testing
from zeroconf import ServiceInfo, Zeroconf
from zeroconf._protocol.outgoing import DNSOutgoing

from mesh.discovery import records, service
from mesh.discovery.announcer import JITTER, STALE_ANSWERS, TTL_CHECK_EVERY, Announcer
from mesh.discovery.bridge import Heard
from mesh.discovery.pacing import advertised_ttl, announce_every
from mesh.discovery.records import Announcement, announce, instance_name
from mesh.discovery.table import PeerTable
from mesh.identity import Identity

LO = "127.0.0.1"
ME = Identity.from_secret(bytes(range(1, 33)))
PEER = Identity.from_secret(bytes(range(2, 34)))


class FakeZeroconf:
    """What `Announcer` uses of a `Zeroconf`, recording the calls on the Trio clock."""

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock  # readable from the worker threads zeroconf calls run in
        self.done = False
        self.calls: list[tuple[str, float, int]] = []  # (what, when, ttl)
        self.zc = Zeroconf.__new__(Zeroconf)  # only for generate_service_broadcast

    def generate_service_broadcast(self, info: ServiceInfo, ttl: int | None) -> DNSOutgoing:
        return Zeroconf.generate_service_broadcast(self.zc, info, ttl)

    def send(self, out: DNSOutgoing) -> None:
        self.calls.append(("send", self.clock.current_time(), out.answers[0][0].ttl))

    def register_service(self, info: ServiceInfo, *, cooperating_responders: bool) -> None:
        assert cooperating_responders
        self.calls.append(("register", self.clock.current_time(), info.other_ttl))

    def update_service(self, info: ServiceInfo) -> None:
        self.calls.append(("update", self.clock.current_time(), info.other_ttl))

    def times(self, what: str) -> list[float]:
        return [when for kind, when, _ in self.calls if kind == what]


def _info(ttl: int) -> ServiceInfo:
    a = announce(ME, mailbox=f"tcp://{LO}:5555", name="me", services="feed=1/call")
    return ServiceInfo(
        records.SERVICE_TYPE,
        a.instance,
        port=5555,
        properties=a.to_txt(),
        server=records.host_name(a.peer_id),
        host_ttl=ttl,
        other_ttl=ttl,
        parsed_addresses=[LO],
    )


def _announcer(zc: FakeZeroconf, table: PeerTable, floor: int) -> Announcer:
    return Announcer(cast(Zeroconf, zc), table, _info, floor, rng=random.Random(7))


async def test_announces_every_0_4_ttl_with_jitter(autojump_clock: trio.testing.MockClock) -> None:
    zc, ttl = FakeZeroconf(autojump_clock), 10
    announcer = _announcer(zc, PeerTable(), ttl)
    assert 300 < announcer.record_bytes < 600  # PTR, SRV, TXT, A (+NSEC) in one packet
    async with trio.open_nursery() as nursery:
        await announcer.register()
        start = trio.current_time()
        nursery.start_soon(announcer.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    sent = zc.times("send")
    gaps = [b - a for a, b in zip([start, *sent], sent, strict=False)]
    assert len(sent) == announcer.sent and 22 <= len(sent) <= 28
    low, high = announce_every(ttl) * (1 - JITTER), announce_every(ttl) * (1 + JITTER)
    assert all(low - 1e-6 <= gap <= high + 1e-6 for gap in gaps)
    assert len({round(gap, 6) for gap in gaps}) > len(gaps) // 2  # jittered, not fixed
    assert {ttl_ for kind, _, ttl_ in zc.calls} == {ttl}
    assert zc.times("update") == []  # a small site keeps its TTL


async def changes(announcer: Announcer, count: int) -> None:
    """Wait until the announcer re-registered `count` times. Updates run in a worker
    thread, and the autojump clock runs on while one does (by as much as the thread
    takes on a loaded machine), so the bound is on the wall clock."""
    deadline = time.monotonic() + 30.0
    while announcer.ttl_changes < count:
        assert time.monotonic() < deadline, f"{announcer.ttl_changes} of {count} changes"
        await trio.sleep(0.01)


async def test_the_ttl_follows_the_size_of_the_site(autojump_clock: trio.testing.MockClock) -> None:
    zc, table = FakeZeroconf(autojump_clock), PeerTable()
    announcer = _announcer(zc, table, 120)
    async with trio.open_nursery() as nursery:
        await announcer.register()
        nursery.start_soon(announcer.run)
        for i in range(1000):  # a thousand peers join at once
            table.confirm(f"{i:066x}", f"tcp://10.0.{i // 256}.{i % 256}:1", now=0)
        await trio.sleep(TTL_CHECK_EVERY)
        await changes(announcer, 1)
        big = advertised_ttl(1000, announcer.record_bytes, floor=120)
        assert big > 900 and announcer.ttl == big
        updated = zc.times("update")
        assert len(updated) == 1
        await trio.sleep(STALE_ANSWERS + announce_every(big) * (1 + JITTER))
        # once more after any stale answer zeroconf queued, then at the new pace
        after = [(when, ttl) for kind, when, ttl in zc.calls[-2:] if kind == "send"]
        assert len(after) == 2 and {ttl for _, ttl in after} == {big}
        assert after[0][0] - updated[0] >= STALE_ANSWERS
        gap = after[1][0] - after[0][0]
        assert announce_every(big) * (1 - JITTER) - 1e-6 <= gap <= announce_every(big) * 1.1
        for i in range(100):  # 10 % leave: not worth re-advertising
            table.remove(f"{i:066x}")
        await trio.sleep(2 * TTL_CHECK_EVERY)
        assert announcer.ttl == big and announcer.ttl_changes == 1
        for i in range(100, 1000):  # nearly everyone leaves: back to the configured TTL
            table.remove(f"{i:066x}")
        await changes(announcer, 2)
        assert announcer.ttl == 120
        nursery.cancel_scope.cancel()


async def test_update_keeps_the_site_and_network() -> None:
    network = "0f" * 32
    discovery = service.Discovery(
        ME, interfaces=[LO], mailbox=f"tcp://{LO}:1", site="plant-7", network=network
    )
    await discovery.update(services="feed=2/call")  # not running: re-signs only
    a = discovery.announcement
    assert (a.site, a.network, a.services) == ("plant-7", network, "feed=2/call")
    assert records.verify_announcement(a.to_txt(), a.instance) == a


def test_rebrowse_is_off_unless_asked() -> None:
    discovery = service.Discovery(ME, interfaces=[LO], mailbox=f"tcp://{LO}:1")
    assert discovery.statistics().browse_queries == 0
    with pytest.raises(ValueError, match="rebrowse"):
        service.Discovery(ME, interfaces=[LO], mailbox=f"tcp://{LO}:1", rebrowse=0)


async def test_names_beyond_the_old_backlog_are_queued_not_dropped() -> None:
    """The start burst: every name waits for a resolve slot; only a flood beyond the
    table's size is refused (counted)."""
    discovery = service.Discovery(
        ME, interfaces=[LO], mailbox=f"tcp://{LO}:1", table=PeerTable(max_peers=1000)
    )
    send, receive = trio.open_memory_channel[str](float("inf"))
    discovery._resolve_queue = send  # what `run` sets up, minus zeroconf
    names = [f"m2mesh-{i:016x}.{records.SERVICE_TYPE}" for i in range(1001)]
    for name in names:
        discovery._start_resolve(name)
    for name in names[:1000]:
        discovery._start_resolve(name)  # heard again while queued: still one resolve
    queued = []
    while True:
        try:
            queued.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert queued == names[:1000]
    assert discovery.statistics().resolve_failures == 1


async def test_a_txt_is_verified_once_whatever_the_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    verify = records.verify_announcement

    def counting(txt: bytes, name: str) -> Announcement:
        calls.append(name)
        return verify(txt, name)

    monkeypatch.setattr(service, "verify_announcement", counting)
    discovery = service.Discovery(ME, interfaces=[LO], mailbox=f"tcp://{LO}:1")
    good = announce(PEER, mailbox=f"tcp://{LO}:2")
    forged = announce(PEER, mailbox=f"tcp://{LO}:3").to_txt().replace(b"3", b"4")
    kwargs: dict[str, Any] = {"addresses": (LO,), "port": 2, "ttl": 10.0, "now": 0.0}
    discovery.table.observe(good, txt=good.to_txt(), **kwargs)
    for _ in range(5):
        discovery._on_heard(good.instance, Heard(good.instance, good.to_txt(), 10.0))
        discovery._on_heard(good.instance, Heard(good.instance, forged, 10.0))
    assert calls == [instance_name(PEER.peer_id)]  # the forged one; the good TXT refreshes
    stats = discovery.statistics()
    assert stats.rejected_signature + stats.rejected_malformed == 1
    assert discovery.table.get(PEER.peer_id) is not None
