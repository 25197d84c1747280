"""Sessions on demand, the rules (no I/O): with whom an agent holds a session, whom it
dials, and which idle session it closes.

An agent keeps the discovery table for every peer but a session only with the peers
it trades with (`SessionPlan.plan`):

* the providers of what it is buying now -- per active want, the `ALTERNATES` + 1
  cheapest usable offers within the want's price (a want restricted to one peer, as
  `mesh buy --peer` or a work order's machine, names only that one) -- and of what it
  is looking for (`look`: a work order choosing its machine) for `LOOK_SECONDS`;
* static peers (the profile's ``static_peers``), always;
* peers something asked for (`request`: a frame to send, a channel's payment or
  close, a certificate to prove, a work order's party) for `idle_close` seconds after
  the last request;
* peers that dialled it (it never closes those for being idle: the dialler decides).

A session this agent dialled and no longer needs closes once no application frame
went either way for `idle_close` seconds; a channel on it stays open, and its next
payment asks for a session again (`request`), which the shell dials, and the channel
layer resends what the peer may have missed when the session is up. Liveness of
peers without a session comes from discovery alone (the table's TTL).

A dial that failed waits before the next try (`BACKOFF_FIRST` doubling to
`BACKOFF_MAX`), so an unreachable peer costs a handshake now and then, not a storm.
Time is injected (`now`); the Trio shell is `agents.sessions`. (docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mesh.discovery import Peer

ALTERNATES = 2
"""Providers held per wanted service beyond the cheapest (to fail over without a dial)."""
IDLE_CLOSE = 60.0
"""Seconds without an application frame after which a session we dialled and no
longer need is closed (the profile's ``[discovery] idle_close``)."""
LOOK_SECONDS = 5.0
"""How long a `look` for a service keeps its providers dialled."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
"""Seconds before dialling a peer again after a failed dial: doubles to the max."""


def parse_offer(summary: str, service: str) -> int | None:
    """The price of `service` in an mDNS ``svc`` summary (``id=price/unit,...``)."""
    for item in summary.split(","):
        sid, _, rest = item.partition("=")
        if sid.strip() == service:
            price = rest.split("/", 1)[0].strip()
            return int(price) if price.isdigit() else None
    return None


@dataclass(frozen=True)
class Wanted:
    """A service being bought now: up to `max_price` a unit, only from `only` if set."""

    service: str
    max_price: int
    only: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to do now: dial these (peer id, mailbox), hang up on these (peer ids)."""

    dial: tuple[tuple[str, str], ...] = ()
    close: tuple[str, ...] = ()


def providers(
    peers: Iterable[Peer],
    wanted: Iterable[Wanted],
    usable: Callable[[str], bool],
    alternates: int = ALTERNATES,
) -> set[str]:
    """For each wanted service the `alternates` + 1 cheapest usable offers (ties by id)."""
    listed = list(peers)
    chosen: set[str] = set()
    for want in wanted:
        offers = []
        for peer in listed:
            if want.only is not None and peer.peer_id != want.only:
                continue
            price = parse_offer(peer.services, want.service)
            if price is not None and price <= want.max_price and usable(peer.peer_id):
                offers.append((price, peer.peer_id))
        chosen.update(peer_id for _, peer_id in sorted(offers)[: alternates + 1])
    return chosen


@dataclass
class _Backoff:
    wait: float
    until: float


@dataclass
class SessionPlan:
    """The state of sessions on demand: requests, activity, dials and their back-off."""

    idle_close: float = IDLE_CLOSE
    alternates: int = ALTERNATES
    _requested: dict[str, float] = field(default_factory=dict)
    _active: dict[str, float] = field(default_factory=dict)
    _dialled: set[str] = field(default_factory=set)
    _backoff: dict[str, _Backoff] = field(default_factory=dict)
    _looking: dict[Wanted, float] = field(default_factory=dict)

    def look(self, want: Wanted, now: float) -> None:
        """Something is choosing a provider of `want` (dial its cheapest for a while)."""
        self._looking[want] = now

    def request(self, peer_id: str, now: float) -> None:
        """Something needs a session with `peer_id` (it is dialled if there is none)."""
        self._requested[peer_id] = now

    def touch(self, peer_id: str, now: float) -> None:
        """An application frame went to or came from `peer_id`."""
        self._active[peer_id] = now

    def dial_ended(self, peer_id: str, ok: bool, now: float) -> None:
        """A dial of `peer_id` ended: a session we now own, or a back-off."""
        if ok:
            self._dialled.add(peer_id)
            self._backoff.pop(peer_id, None)
            self._active[peer_id] = now
            return
        last = self._backoff.get(peer_id)
        wait = BACKOFF_FIRST if last is None else min(2 * last.wait, BACKOFF_MAX)
        self._backoff[peer_id] = _Backoff(wait, now + wait)

    def session_ended(self, peer_id: str) -> None:
        """The session with `peer_id` ended (whoever ended it)."""
        self._dialled.discard(peer_id)

    def may_dial(self, peer_id: str, now: float) -> bool:
        """Whether `peer_id` is out of its back-off."""
        backoff = self._backoff.get(peer_id)
        return backoff is None or now >= backoff.until

    def partners(
        self, peers: Iterable[Peer], wanted: Iterable[Wanted], usable: Callable[[str], bool]
    ) -> set[str]:
        """The peers we hold sessions with on purpose now (see the module)."""
        listed = list(peers)
        keep = providers(listed, wanted, usable, self.alternates)
        keep.update(peer.peer_id for peer in listed if peer.static)
        return keep

    def plan(
        self,
        now: float,
        peers: Iterable[Peer],
        wanted: Iterable[Wanted],
        usable: Callable[[str], bool],
        connected: Iterable[str],
    ) -> Plan:
        """Whom to dial and whom to hang up on, given the table's `peers` and the peers
        with a session now (`connected`)."""
        self._requested = {p: t for p, t in self._requested.items() if now - t < self.idle_close}
        self._looking = {w: t for w, t in self._looking.items() if now - t < LOOK_SECONDS}
        listed = {peer.peer_id: peer for peer in peers}
        wanted = [*wanted, *self._looking]
        keep = self.partners(listed.values(), wanted, usable) | set(self._requested)
        live = set(connected)
        dial = tuple(
            (peer_id, listed[peer_id].mailbox)
            for peer_id in sorted(keep - live)
            if peer_id in listed and self.may_dial(peer_id, now)
        )
        close = tuple(
            peer_id
            for peer_id in sorted(live & self._dialled)
            if peer_id not in keep and now - self._active.get(peer_id, now) >= self.idle_close
        )
        for peer_id in set(self._active) - live - keep:
            del self._active[peer_id]  # bounded by the sessions and the wants
        for peer_id in [p for p, b in self._backoff.items() if p not in keep and now >= b.until]:
            del self._backoff[peer_id]
        return Plan(dial, close)


__all__ = [
    "ALTERNATES",
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "IDLE_CLOSE",
    "LOOK_SECONDS",
    "Plan",
    "SessionPlan",
    "Wanted",
    "parse_offer",
    "providers",
]
