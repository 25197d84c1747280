"""The peer table: observe/refresh/goodbye, TTL expiry on an injected clock, static peers."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from mesh.discovery.records import Announcement, announce
from mesh.discovery.table import (
    MAX_PEERS,
    REFRESH_POINTS,
    Peer,
    PeerAdded,
    PeerRemoved,
    PeerTable,
    PeerUpdated,
    Refresh,
    Removal,
    parse_static,
)
from mesh.identity import Identity

A = Identity.from_secret(bytes(range(1, 33)))
B = Identity.from_secret(bytes(range(2, 34)))


def ann(identity: Identity = A, mailbox: str = "tcp://10.0.0.1:1", svc: str = "") -> Announcement:
    return announce(identity, mailbox=mailbox, name="n", services=svc)


def see(
    table: PeerTable, a: Announcement, *, now: float, ttl: float = 10.0
) -> PeerAdded | PeerUpdated | PeerRemoved | None:
    return table.observe(a, txt=a.to_txt(), addresses=("10.0.0.1",), port=1, ttl=ttl, now=now)


def test_observe_adds_then_updates_only_on_change() -> None:
    table = PeerTable(own_peer_id=B.peer_id)
    a = ann()
    event = see(table, a, now=0)
    assert isinstance(event, PeerAdded)
    assert event.peer.peer_id == A.peer_id and event.peer.instance == a.instance
    assert table.by_instance(a.instance.upper()) == event.peer
    assert see(table, a, now=1) is None  # same facts: just seen again
    peer = table.get(A.peer_id)
    assert peer is not None and peer.last_seen == 1 and peer.expires_at == 11
    event = see(table, ann(svc="feed=2/call,tool=5/s"), now=2)
    assert isinstance(event, PeerUpdated)
    assert event.previous.services == "" and event.peer.service_ids() == ("feed", "tool")
    # Our own announcement never enters the table.
    assert see(table, ann(B), now=3) is None
    assert len(table) == 1 and B.peer_id not in table


def test_refresh_matches_the_verified_txt_only() -> None:
    table = PeerTable()
    a = ann()
    see(table, a, now=0)
    assert table.refresh(a.instance, a.to_txt(), ttl=20, now=5) is Refresh.REFRESHED
    peer = table.get(A.peer_id)
    assert peer is not None and (peer.last_seen, peer.ttl) == (5, 20)
    # A different TXT under the same name (e.g. forged) refreshes nothing.
    assert table.refresh(a.instance, a.to_txt() + b"\x01x", ttl=20, now=9) is Refresh.CHANGED
    assert table.get(A.peer_id) == peer
    assert table.refresh(ann(B).instance, b"", ttl=20, now=9) is Refresh.UNKNOWN


def test_goodbye_removes() -> None:
    table = PeerTable()
    a = ann()
    see(table, a, now=0)
    events = table.subscribe()
    event = table.goodbye(a.instance, now=1)
    assert isinstance(event, PeerRemoved) and event.reason is Removal.GOODBYE
    assert events.receive_nowait() == event
    assert table.goodbye(a.instance, now=2) is None
    assert len(table) == 0 and table.statistics().goodbyes == 1


def test_timer_queries_at_refresh_points_then_expires() -> None:
    table = PeerTable()
    a = ann()
    see(table, a, now=100, ttl=10)
    deadlines = []
    queried = []
    now = 100.0
    while len(table):
        now = table.next_deadline()
        deadlines.append(now - 100)
        actions = table.handle_timer(now)
        queried.append(actions.queries)
        if actions.removed:
            assert actions.removed[0].reason is Removal.EXPIRED
    assert deadlines == pytest.approx([10 * f for f in REFRESH_POINTS] + [10])
    assert queried == [(a.instance,)] * len(REFRESH_POINTS) + [()]
    assert table.next_deadline() == math.inf
    assert table.statistics().expired == 1


def test_refresh_resets_the_query_schedule() -> None:
    table = PeerTable()
    a = ann()
    see(table, a, now=0, ttl=10)
    assert table.handle_timer(8.9).queries == ()  # owners' announcements come first
    assert table.handle_timer(9.0).queries == (a.instance,)  # the one rescue query
    assert table.refresh(a.instance, a.to_txt(), ttl=10, now=9.2) is Refresh.REFRESHED
    assert table.next_deadline() == pytest.approx(18.2)
    assert table.handle_timer(9.9) == table.handle_timer(9.9)  # nothing due, nothing expired
    assert len(table) == 1


def test_a_late_timer_sends_one_query_not_a_burst() -> None:
    table = PeerTable()
    a = ann()
    see(table, a, now=0, ttl=10)
    assert table.handle_timer(9.6).queries == (a.instance,)
    assert table.handle_timer(9.7).queries == ()


async def test_run_timers_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    table = PeerTable()
    a = ann()
    sent: list[tuple[float, tuple[str, ...]]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            table.run_timers, lambda q: sent.append((round(trio.current_time(), 6), q))
        )
        start = trio.current_time()
        see(table, a, now=start, ttl=4)
        await trio.sleep(3.7)  # heard again just after the rescue query at 0.9 TTL
        table.refresh(a.instance, a.to_txt(), ttl=4, now=trio.current_time())
        await table.wait_for_peer_gone(A.peer_id, timeout=10)
        gone = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert gone == pytest.approx(3.7 + 4)
    offsets = [round(t - start, 6) for t, _ in sent]
    assert offsets == pytest.approx([3.6] + [3.7 + 4 * f for f in REFRESH_POINTS])


async def test_wait_for_peer(autojump_clock: trio.testing.MockClock) -> None:
    table = PeerTable()

    async def later() -> None:
        await trio.sleep(2)
        see(table, ann(B, svc="tool=1/s"), now=trio.current_time())
        await trio.sleep(1)
        see(table, ann(A), now=trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        peer = await table.wait_for_peer(lambda p: p.peer_id == A.peer_id, timeout=5)
        assert trio.current_time() == pytest.approx(3)
        assert peer.peer_id == A.peer_id
        with pytest.raises(trio.TooSlowError):
            await table.wait_for_peer(lambda p: "nope" in p.service_ids(), timeout=1)
        found = await table.wait_for_peer(lambda p: "tool" in p.service_ids(), timeout=0)
        assert found.peer_id == B.peer_id


def test_static_peer_pending_until_confirmed_and_outlives_mdns() -> None:
    table = PeerTable()
    table.add_static("tcp://10.0.0.9:7")
    table.add_static("tcp://10.0.0.9:7")
    assert table.pending_static() == (("tcp://10.0.0.9:7", None),) and len(table) == 0
    event = table.confirm(A.peer_id, "tcp://10.0.0.9:7", now=1, name="press")
    assert isinstance(event, PeerAdded)
    assert event.peer.static and event.peer.confirmed and event.peer.ttl is None
    assert table.pending_static() == ()
    # It also shows up on mDNS; a goodbye there leaves the static peer in place.
    a = ann(mailbox="tcp://10.0.0.9:7")
    see(table, a, now=2)
    peer = table.get(A.peer_id)
    assert peer is not None and peer.instance == a.instance and peer.confirmed
    assert isinstance(table.goodbye(a.instance, now=3), PeerUpdated)
    peer = table.get(A.peer_id)
    assert peer is not None and peer.instance is None and peer.ttl is None
    assert table.next_deadline() == math.inf
    # The runtime drops it (session lost): back to pending, to be dialled again.
    removed = table.remove(A.peer_id)
    assert isinstance(removed, PeerRemoved) and removed.reason is Removal.REMOVED
    assert table.pending_static() == (("tcp://10.0.0.9:7", None),)


def test_confirm_marks_an_mdns_peer_and_a_new_mailbox_unconfirms_it() -> None:
    table = PeerTable()
    see(table, ann(), now=0)
    event = table.confirm(A.peer_id, "tcp://10.0.0.1:1", now=1)
    assert isinstance(event, PeerUpdated) and event.peer.confirmed and not event.peer.static
    assert table.confirm(A.peer_id, "tcp://10.0.0.1:1", now=2) is None
    event = see(table, ann(mailbox="tcp://10.0.0.2:1"), now=3)
    assert isinstance(event, PeerUpdated) and not event.peer.confirmed
    # A confirmed mDNS peer still goes when its agent says goodbye.
    table.confirm(A.peer_id, "tcp://10.0.0.2:1", now=4)
    assert isinstance(table.goodbye(ann().instance, now=5), PeerRemoved)


def test_add_static_for_an_already_confirmed_mailbox() -> None:
    table = PeerTable()
    table.confirm(A.peer_id, "tcp://10.0.0.9:7", now=0)  # inbound, not static
    peer = table.get(A.peer_id)
    assert peer is not None and not peer.static and peer.ttl is None
    table.add_static("tcp://10.0.0.9:7")
    peer = table.get(A.peer_id)
    assert peer is not None and peer.static and table.pending_static() == ()


def test_a_pinned_static_mailbox_is_only_ever_its_own_peer() -> None:
    table = PeerTable()
    table.confirm(B.peer_id, "tcp://10.0.0.9:7", now=0)  # B dialled in claiming it
    table.add_static("tcp://10.0.0.9:7", A.peer_id)
    peer = table.get(B.peer_id)
    assert peer is not None and not peer.static
    assert table.pending_static() == (("tcp://10.0.0.9:7", A.peer_id),)
    # B proves itself at that mailbox again: still not the static peer, still pending.
    event = table.confirm(B.peer_id, "tcp://10.0.0.9:7", now=1)
    assert event is None or not event.peer.static
    assert table.pending_static() == (("tcp://10.0.0.9:7", A.peer_id),)
    event = table.confirm(A.peer_id, "tcp://10.0.0.9:7", now=2)
    assert isinstance(event, PeerAdded) and event.peer.static
    assert table.pending_static() == ()
    table.remove(A.peer_id)
    assert table.pending_static() == (("tcp://10.0.0.9:7", A.peer_id),)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("tcp://10.0.0.9:7700", ("tcp://10.0.0.9:7700", None)),
        (f"{A.peer_id}@tcp://10.0.0.9:7700", ("tcp://10.0.0.9:7700", A.peer_id)),
        (f"{A.peer_id.upper()}@tcp://h:1", ("tcp://h:1", A.peer_id)),
    ],
)
def test_parse_static_reads_a_mailbox_and_an_optional_pin(
    entry: str, expected: tuple[str, str | None]
) -> None:
    assert parse_static(entry) == expected


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("http://10.0.0.9:7700", "tcp://host:port"),
        ("tcp://", "tcp://host:port"),
        (f"{A.peer_id}@10.0.0.9:7700", "tcp://host:port"),
        ("press@tcp://10.0.0.9:7700", "not hex"),
        ("02" + "00" * 32 + "@tcp://10.0.0.9:7700", ""),  # hex, but not a point
        (A.peer_id[:-2] + "@tcp://10.0.0.9:7700", ""),  # a byte short
    ],
)
def test_parse_static_says_what_is_wrong(entry: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason or None):
        parse_static(entry)


def test_table_is_bounded_and_slow_subscribers_lose_events() -> None:
    table = PeerTable(max_peers=1)
    assert table.max_peers == 1 and PeerTable().max_peers == MAX_PEERS
    events = table.subscribe(buffer=1)
    see(table, ann(A), now=0)
    assert see(table, ann(B), now=0) is None
    see(table, ann(A, svc="x=1"), now=1)
    stats = table.statistics()
    assert (stats.peers, stats.dropped_full, stats.events_dropped) == (1, 1, 1)
    assert isinstance(events.receive_nowait(), PeerAdded)
    events.close()
    see(table, ann(A, svc="x=2"), now=2)  # a closed subscriber is dropped quietly
    assert table.statistics().events_dropped == 1


def test_snapshot_is_a_copy() -> None:
    table = PeerTable()
    see(table, ann(), now=0)
    snap = table.snapshot()
    table.remove(A.peer_id)
    assert isinstance(snap[A.peer_id], Peer) and len(table) == 0
    assert [p.peer_id for p in table] == []
