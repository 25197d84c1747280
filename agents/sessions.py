"""Sessions on demand, the Trio shell: executes `agents.partners.SessionPlan` against
the node and the discovery table.

Every half second it dials the partners without a session (each dial in its own task,
so an unreachable peer costs only its own handshake timeout) and static peers whose id
is still unknown, and hangs up on the idle sessions it dialled and no longer needs.
`ensure(peer_id)` is the on-demand path: a frame for a peer without a session waits
(a bounded time) for one to be dialled; `request(peer_id)` asks for one without
waiting (the channel layer's sends: the frames go again when the session is up).
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from agents.partners import SessionPlan, Wanted
from mesh.discovery import PeerTable
from mesh.net.node import ConnectError, Node
from mesh.net.peer import PeerSession
from mesh.session import PeerInfo

log = logging.getLogger("agents.runtime")

TICK = 0.5
"""Seconds between two looks at the table and the sessions."""
GATHER = 0.05
"""Seconds a look waits after being woken, so that news arriving together is one look."""
ENSURE_SECONDS = 5.0
"""How long `ensure` waits for a session to a peer that has none."""

Confirm = Callable[[str, PeerInfo], None]
"""confirm(mailbox, info): a handshake we started proved `info`'s peer at `mailbox`."""


class SessionKeeper:
    """Holds sessions with trading partners only (see `agents.partners`)."""

    def __init__(
        self,
        node: Node,
        table: PeerTable,
        plan: SessionPlan,
        wanted: Callable[[], Iterable[Wanted]],
        usable: Callable[[str], bool],
        confirm: Confirm,
    ) -> None:
        self._node = node
        self._table = table
        self.plan = plan
        self._wanted = wanted
        self._usable = usable
        self._confirm = confirm
        self._dialling: dict[str, trio.Event] = {}  # mailbox -> set when its dial ends
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dial and hang up as the plan says, until cancelled: every `TICK`, and soon
        after the table changes (a provider just heard is dialled at once)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_table)
            task_status.started()
            while True:
                self.step()
                with trio.move_on_after(TICK):
                    await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(GATHER)  # a burst of news (a start's answers) is one look

    async def _watch_table(self) -> None:
        async with self._table.subscribe() as events:
            async for _ in events:
                self._wake.set()

    def step(self) -> None:
        """One look: start the dials and hang-ups the plan asks for now."""
        now = trio.current_time()
        connected = [s.peer_id for s in self._node.sessions()]
        plan = self.plan.plan(
            now, self._table.snapshot().values(), self._wanted(), self._usable, connected
        )
        for peer_id, mailbox in plan.dial:
            self._start_dial(mailbox, peer_id)
        for mailbox, expect in self._table.pending_static():
            self._start_dial(mailbox, expect)
        for peer_id in plan.close:  # its end reaches `session_ended` as any session's
            if self._node.hang_up(peer_id, "idle"):
                log.info("peer %s: idle session closed", peer_id[:16])

    def touch(self, peer_id: str) -> None:
        """An application frame went to or came from `peer_id`."""
        self.plan.touch(peer_id, trio.current_time())

    def look(self, want: Wanted) -> None:
        """Something is choosing a provider of `want`: dial the cheapest ones."""
        self.plan.look(want, trio.current_time())
        self._wake.set()

    def reachable(self, peer_id: str) -> bool:
        """Whether we hold a session with `peer_id` now; asks for one if not."""
        if self._node.session(peer_id) is not None:
            return True
        self.request(peer_id)
        return False

    def session_ended(self, peer_id: str) -> None:
        """The session with `peer_id` ended."""
        self.plan.session_ended(peer_id)

    def request(self, peer_id: str) -> None:
        """Ask for a session with `peer_id` without waiting for it."""
        self.plan.request(peer_id, trio.current_time())
        if self._node.session(peer_id) is None:
            self._wake.set()

    async def ensure(self, peer_id: str, timeout: float = ENSURE_SECONDS) -> PeerSession | None:
        """The session with `peer_id`, dialled now if there is none and the table knows
        where the peer is (None if it cannot be had within `timeout`, or a dial of it
        failed a moment ago: it is in its back-off)."""
        session = self._node.session(peer_id)
        if session is not None:
            return session
        self.plan.request(peer_id, trio.current_time())
        peer = self._table.get(peer_id)
        if peer is None:
            return None
        if not self.plan.may_dial(peer_id, trio.current_time()):
            return None  # it could not be reached a moment ago: no wait now
        with trio.move_on_after(timeout):
            await self._start_dial(peer.mailbox, peer_id).wait()
        return self._node.session(peer_id)

    def _start_dial(self, mailbox: str, expect: str | None) -> trio.Event:
        done = self._dialling.get(mailbox)
        if done is not None:
            return done
        done = self._dialling[mailbox] = trio.Event()
        if self._nursery is None:  # not running: nothing dials
            done.set()
            del self._dialling[mailbox]
            return done
        self._nursery.start_soon(self._dial, mailbox, expect, done)
        return done

    async def _dial(self, mailbox: str, expect: str | None, done: trio.Event) -> None:
        ok = False
        try:
            session = await self._node.connect(mailbox, expect_peer=expect, attempts=1)
        except ConnectError as exc:
            log.info("could not reach %s: %s", mailbox, exc)
        else:
            ok = True
            self._confirm(mailbox, session.peer)
            expect = session.peer_id
        finally:
            if expect is not None:
                self.plan.dial_ended(expect, ok, trio.current_time())
            del self._dialling[mailbox]
            done.set()


__all__ = ["ENSURE_SECONDS", "GATHER", "TICK", "SessionKeeper"]
