"""Sessions on demand, the rules (agents.partners): who is dialled, who is hung up on.
Pure: no event loop, times passed in."""

from __future__ import annotations

from agents.partners import BACKOFF_FIRST, BACKOFF_MAX, SessionPlan, Wanted, providers
from mesh.discovery import Peer


def peer(n: int, services: str = "", *, static: bool = False) -> Peer:
    return Peer(
        peer_id=f"02{n:064x}",
        mailbox=f"tcp://127.0.0.1:{7000 + n}",
        name=f"m{n}",
        services=services,
        addresses=(),
        port=None,
        instance=None,
        static=static,
        confirmed=False,
        last_seen=0.0,
        ttl=120.0,
    )


def pid(n: int) -> str:
    return f"02{n:064x}"


def everyone(_: str) -> bool:
    return True


# A crowd of 200 sellers of vibration at 5..204 sat, one of spindle time, others idle.
CROWD = [peer(i, f"vibration={5 + i}/reading") for i in range(200)] + [
    peer(300, "spindle-time=2/s"),
    *(peer(400 + i, "other=1/call") for i in range(100)),
]


def test_a_want_keeps_the_cheapest_provider_and_two_alternates_only() -> None:
    chosen = providers(CROWD, [Wanted("vibration", 100)], everyone)
    assert chosen == {pid(0), pid(1), pid(2)}


def test_offers_above_the_price_or_set_aside_are_not_partners() -> None:
    def usable(peer_id: str) -> bool:
        return peer_id != pid(0)  # the cheapest cheated: set aside

    assert providers(CROWD, [Wanted("vibration", 7)], usable) == {pid(1), pid(2)}
    assert providers(CROWD, [Wanted("vibration", 4)], everyone) == set()
    assert providers(CROWD, [Wanted("vibration", 100, only=pid(50))], everyone) == {pid(50)}


def test_no_want_no_partner_but_static_peers() -> None:
    plan = SessionPlan()
    crowd = [*CROWD, peer(999, static=True)]
    assert plan.plan(0.0, crowd, [], everyone, []).dial == ((pid(999), crowd[-1].mailbox),)


def test_dials_only_partners_without_a_session() -> None:
    plan = SessionPlan()
    wanted = [Wanted("vibration", 100), Wanted("spindle-time", 3)]
    step = plan.plan(0.0, CROWD, wanted, everyone, connected=[pid(1)])
    assert {p for p, _ in step.dial} == {pid(0), pid(2), pid(300)}
    assert step.close == ()


def test_a_requested_peer_is_dialled_and_kept_while_requested() -> None:
    plan = SessionPlan(idle_close=60.0)
    plan.request(pid(450), 10.0)
    assert {p for p, _ in plan.plan(10.0, CROWD, [], everyone, []).dial} == {pid(450)}
    assert plan.plan(69.0, CROWD, [], everyone, []).dial  # still wanted at 59 s
    assert plan.plan(70.0, CROWD, [], everyone, []).dial == ()  # a minute later: not
    plan.request(pid(9999), 10.0)  # not in the table: nowhere to dial
    assert plan.plan(11.0, CROWD, [], everyone, []).dial == ()


def test_an_idle_session_we_dialled_closes_once_no_longer_needed() -> None:
    plan = SessionPlan(idle_close=60.0)
    wanted = [Wanted("vibration", 100)]
    plan.dial_ended(pid(0), True, 0.0)
    plan.dial_ended(pid(450), True, 0.0)  # dialled for a frame, not a partner
    plan.touch(pid(450), 30.0)
    live = [pid(0), pid(450), pid(460)]  # pid(460) dialled us
    assert plan.plan(60.0, CROWD, wanted, everyone, live).close == ()  # 450 active at 30
    assert plan.plan(89.0, CROWD, wanted, everyone, live).close == ()
    assert plan.plan(90.0, CROWD, wanted, everyone, live).close == (pid(450),)
    # The want is over: its provider closes too; one that dialled us never does.
    assert plan.plan(200.0, CROWD, [], everyone, live).close == (pid(0), pid(450))


def test_a_partner_with_traffic_is_never_idle_and_a_new_request_keeps_it() -> None:
    plan = SessionPlan(idle_close=60.0)
    plan.dial_ended(pid(450), True, 0.0)
    plan.request(pid(450), 100.0)  # a payment on its channel asked for it again
    assert plan.plan(120.0, CROWD, [], everyone, [pid(450)]).close == ()


def test_a_failed_dial_backs_off_doubling_to_the_max() -> None:
    plan = SessionPlan()
    wanted = [Wanted("spindle-time", 3)]
    now, waits = 0.0, []
    for _ in range(8):
        plan.dial_ended(pid(300), False, now)
        assert not plan.plan(now, CROWD, wanted, everyone, []).dial
        wait = 0.0
        while not plan.plan(now + wait, CROWD, wanted, everyone, []).dial:
            wait += 0.5
        waits.append(wait)
        now += wait
    assert waits[0] == BACKOFF_FIRST and waits[-1] == BACKOFF_MAX
    assert waits == sorted(waits)
    plan.dial_ended(pid(300), True, now)  # reached: the back-off is forgotten
    plan.dial_ended(pid(300), False, now)
    assert plan.plan(now + BACKOFF_FIRST, CROWD, wanted, everyone, []).dial
