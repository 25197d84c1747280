"""Session liveness as a pure core: what a node does about a session's heartbeats,
silences, goodbyes and lost connections. Times and frames in; actions out. The node
(`mesh.net.node`) executes them: it sends, delivers to the application, or ends the
session; it never decides any of it itself.

Rules:
- every `heartbeat_interval` without sending anything, a session gets a heartbeat;
  a heartbeat asking for a reply is answered at once;
- a session heard nothing from for `dead_after` ends ("peer silent");
- a session whose outbox connection is lost ends (it is never redialled);
- a `Close` ends the session (frames after it in the same packet are not delivered);
- a fatal `Error` ends the session, then reaches the application, so the application
  never sees it while the session still looks alive;
- every other frame is the application's;
- a handshake we answered is given up at its deadline, or as soon as the connection
  its reply needs is lost (`handshake_expired`);
- the node's timer runs at the earliest deadline ahead (a session's `Liveness.deadline`,
  a handshake's), at most every `least` and at least every `most` seconds (`next_pass`).

(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mesh.session_frames import Close, Error, Heartbeat
from mesh.wire import Frame


@dataclass(frozen=True, slots=True)
class Send:
    """Send `frame` on the session (without waiting: a heartbeat may be dropped)."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand `frame` to the application."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class End:
    """End the session: `reason` for its record; `warn` is worth a warning line."""

    reason: str
    warn: str = ""


Action = Send | Deliver | End


def on_frames(frames: Iterable[Frame]) -> Iterator[Action]:
    """The actions for the frames of one packet, in order; nothing after an `End`
    but the fatal error's own delivery."""
    for frame in frames:
        if isinstance(frame, Heartbeat):
            if not frame.reply:
                yield Send(Heartbeat(frame.seq, reply=True))
        elif isinstance(frame, Close):
            yield End(f"peer closed: {frame.reason}")
            return
        elif isinstance(frame, Error) and frame.fatal:
            yield End(f"peer error {frame.code}: {frame.reason}")
            yield Deliver(frame)
            return
        else:
            yield Deliver(frame)


class Liveness:
    """Heartbeats and silences of a node's sessions (one object per node: the
    heartbeat sequence numbers are the node's)."""

    def __init__(self, heartbeat_interval: float, dead_after: float) -> None:
        """Send a heartbeat after `heartbeat_interval` s idle; end after `dead_after` s
        of silence."""
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self._seq = 0

    def check(
        self, now: float, last_received: float, last_sent: float, lost: bool
    ) -> Action | None:
        """What a session needs at `now`, if anything."""
        if lost:
            return End("connection to the peer's mailbox lost", "connection lost; closing")
        silent = now - last_received
        if silent >= self.dead_after:
            return End("peer silent (no heartbeat)", f"silent for {silent:.1f} s; closing")
        if now - last_sent >= self.heartbeat_interval:
            self._seq += 1
            return Send(Heartbeat(self._seq, reply=False))
        return None

    def deadline(self, last_received: float, last_sent: float) -> float:
        """When `check` will next have something to say about this session."""
        return min(last_received + self.dead_after, last_sent + self.heartbeat_interval)


def handshake_expired(now: float, deadline: float, lost: bool) -> bool:
    """Whether a handshake we answered (HS2 sent, HS3 awaited) is given up at `now`:
    its `deadline` passed, or its reply's connection is `lost` (nothing gets through)."""
    return now >= deadline or lost


def next_pass(now: float, deadlines: Iterable[float], most: float, least: float) -> float:
    """When a node's timer should run next, after a pass at `now`: at the earliest of
    `deadlines` still ahead, but no sooner than `least` and no later than `most` seconds
    from now.

    `most` bounds what no deadline announces (a lost connection) and a deadline the pass
    could not act on (a heartbeat a full send queue refused: not ahead of `now`, it waits
    for `most` rather than spin); `least` bounds how often the staggered deadlines of
    many sessions wake the node (each pass looks at every session).
    """
    earliest = min((d for d in deadlines if d > now), default=now + most)
    return min(max(earliest, now + least), now + most)


__all__ = [
    "Action",
    "Deliver",
    "End",
    "Liveness",
    "Send",
    "handshake_expired",
    "next_pass",
    "on_frames",
]
