"""Session liveness rules (`mesh.net.liveness`) without an event loop: times and
frames in, actions out."""

from __future__ import annotations

from mesh.net.liveness import (
    Deliver,
    End,
    Liveness,
    Send,
    handshake_expired,
    next_pass,
    on_frames,
)
from mesh.session_frames import Close, Error, Heartbeat, Message


def test_a_heartbeat_asking_for_a_reply_is_answered_and_nothing_reaches_the_app() -> None:
    assert list(on_frames([Heartbeat(7, reply=False)])) == [Send(Heartbeat(7, reply=True))]
    assert list(on_frames([Heartbeat(7, reply=True)])) == []


def test_a_close_ends_the_session_and_what_follows_it_is_not_delivered() -> None:
    frames = [Message("a", b""), Close("bye"), Message("b", b"")]
    assert list(on_frames(frames)) == [Deliver(Message("a", b"")), End("peer closed: bye")]


def test_a_fatal_error_ends_the_session_before_the_application_sees_it() -> None:
    fatal = Error("protocol", "bad", fatal=True)
    actions = list(on_frames([fatal, Message("late", b"")]))
    assert actions == [End("peer error protocol: bad"), Deliver(fatal)]
    mild = Error("busy", "later", fatal=False)
    assert list(on_frames([mild])) == [Deliver(mild)]


def test_heartbeats_silence_and_lost_connections_by_the_clock() -> None:
    live = Liveness(heartbeat_interval=5.0, dead_after=15.0)
    assert live.check(now=4.9, last_received=0.0, last_sent=0.0, lost=False) is None
    first = live.check(now=5.0, last_received=0.0, last_sent=0.0, lost=False)
    second = live.check(now=10.0, last_received=0.0, last_sent=5.0, lost=False)
    assert first == Send(Heartbeat(1, reply=False))
    assert second == Send(Heartbeat(2, reply=False))  # the node's own sequence
    silent = live.check(now=15.0, last_received=0.0, last_sent=14.0, lost=False)
    assert isinstance(silent, End) and silent.reason == "peer silent (no heartbeat)"
    lost = live.check(now=1.0, last_received=1.0, last_sent=1.0, lost=True)
    assert isinstance(lost, End) and "lost" in lost.reason
    assert live.deadline(last_received=3.0, last_sent=2.0) == 7.0
    assert live.deadline(last_received=0.0, last_sent=14.0) == 15.0


def test_a_handshake_we_answered_expires_at_its_deadline_or_when_its_reply_is_lost() -> None:
    assert not handshake_expired(now=4.9, deadline=5.0, lost=False)
    assert handshake_expired(now=5.0, deadline=5.0, lost=False)
    assert handshake_expired(now=1.0, deadline=5.0, lost=True)


def test_the_timer_runs_at_the_earliest_deadline_ahead_within_its_bounds() -> None:
    def wake(*deadlines: float) -> float:
        return next_pass(10.0, deadlines, most=1.25, least=0.25)

    assert wake() == 11.25  # nothing due: a tick from now (what no deadline announces)
    assert wake(15.0, 10.5, 12.0) == 10.5  # the earliest deadline ahead
    assert wake(10.1) == 10.25  # not sooner than `least`
    assert wake(9.0, 10.0) == 11.25  # due already and not acted on: no spinning
    assert wake(10.0, 10.75) == 10.75
