"""A guard against nng's crash when a dialled connection closes as it opens.

The nng inside pynng 0.9.0 (1.11, built with statistics) crashes the whole process
(SIGSEGV, or an abort: "appending node already on a list") when a dialer *redials*
after its connection was closed by the far end right as it opened: a listener that
completes the SP header and hangs up at once brought a dialer down within 6 to 3 700
connections in our trials. Every agent dials mailboxes that others name -- the
mailbox in a first handshake packet, a discovered address -- so before this guard any
host that could reach a mailbox crashed the agent with one unauthenticated packet
naming such a listener (`tests/transport/test_nngguard.py`).

Without the redial there is no crash: 6 000 connections closed as they opened, one
per dialer, left the dialers standing, while the same run with redials crashed. So a
`RedialGuard` watches its socket's connections and, when one closes within `EARLY`
seconds of opening, pushes the dialer's redial out to `NEVER` before nng schedules it
(nng runs the close hook first). A mailbox that does that is hostile or going away;
the sessions on it end by their heartbeats, and a new connect dials afresh. A
connection that lived longer is redialled as before (a peer restarting).

Remove this module once pynng ships an nng without the bug (pynng's development
branch builds nng without statistics, which removes the crashing path).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pynng

EARLY = 0.25  # seconds: a connection closed sooner than this was refused, not lost
NEVER_MS = 24 * 3600 * 1000  # nng's redial delay once stopped (it draws below this)


class RedialGuard:
    """Stops a dialer's redials once one of its connections closes as it opens.

    Attach it to a fresh socket, then dial through the guard's `dial`. nng calls the hooks on its
    own threads; `stopped` may be read from any thread.
    """

    def __init__(self, sock: pynng.Socket, clock: Callable[[], float] = time.monotonic) -> None:
        self.stopped = False
        self._sock = sock
        self._clock = clock
        self._dialer: pynng.Dialer | None = None
        self._opened: dict[int, float] = {}
        sock.add_post_pipe_connect_cb(self._on_open)
        sock.add_post_pipe_remove_cb(self._on_close)

    def dial(self, address: str) -> None:
        """Dial `address` without blocking; nng connects, and redials, in the background."""
        self._dialer = self._sock.dial(address, block=False)
        if self.stopped:  # a connection came and went before `dial` returned
            self._stop()

    def _on_open(self, pipe: pynng.Pipe) -> None:
        self._opened[pipe.id] = self._clock()

    def _on_close(self, pipe: pynng.Pipe) -> None:
        opened = self._opened.pop(pipe.id, None)
        if opened is None or self._clock() - opened < EARLY:
            self.stopped = True
            self._stop()

    def _stop(self) -> None:
        dialer = self._dialer
        if dialer is None:
            return
        try:
            dialer.reconnect_time_max = NEVER_MS
            dialer.reconnect_time_min = NEVER_MS  # also the next delay's bound
        except pynng.NNGException:
            pass  # the dialer is closing anyway


__all__ = ["EARLY", "NEVER_MS", "RedialGuard"]
