"""Fuzzing the Noise/session state machine with arbitrary packet sequences.

Three parties run the real handshake and session cores (`mesh.session`, hence
`mesh.noise`): Alice and Bob are honest; Mallory has a valid identity of her own, may
squat Alice's mailbox, sees every packet on the wire and may replay, reorder,
truncate, splice, bit-flip or forge any of them, and may finish handshakes with
messages meant for others. Each party keeps the tables `mesh.net.node.Node` keeps
(handshakes in progress, sessions by index) and routes packets the way its
`_dispatch` does, dropping a session at its first error.

Invariants after every step:

* every frame a session delivered was sealed, in that order, by the one session on
  the other side whose indices match -- no forgery, loss-then-continue, duplicate
  or reordering ever reaches the application;
* a session's peer id is the identity of the party that holds the other end (the
  identity binding holds under any packet sequence);
* the cores only ever raise `RemoteProtocolError` (typed) on peer bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mesh.errors import RemoteProtocolError
from mesh.identity import Identity
from mesh.session import (
    DATA,
    HS1,
    HS2,
    HS3,
    INDEX_LEN,
    REJECT,
    Handshake,
    LocalIdentity,
    Session,
    packet_kind,
    receiver_index,
)
from mesh.session_frames import Heartbeat, Message, ProfileSummary
from mesh.wire import Frame
from tests.reliability.budget import CI_EXAMPLES, SLOW_EXAMPLES, fuzz_settings

BOXES = ("tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000", "tcp://10.0.0.3:7000")
NAMES = ("alice", "bob", "mallory")
STEPS = 20


@dataclass
class Party:
    """One party's handshake and session tables, as a `Node` keeps them."""

    name: str
    local: LocalIdentity
    initiating: dict[bytes, Handshake] = field(default_factory=dict)
    responding: dict[bytes, Handshake] = field(default_factory=dict)
    sessions: dict[bytes, Session] = field(default_factory=dict)
    every_session: list[Session] = field(default_factory=list)
    confirmed: set[bytes] = field(default_factory=set)
    delivered: dict[bytes, list[Frame]] = field(default_factory=dict)
    sealed: dict[bytes, list[Frame]] = field(default_factory=dict)


@dataclass
class Counts:
    """What the fuzz runs did, summed over examples."""

    examples: int = 0
    packets: int = 0
    sessions: int = 0
    frames_delivered: int = 0
    errors: int = 0


COUNTS = Counts()


def _identities() -> list[Identity]:
    return [Identity.generate() for _ in NAMES]


class SessionMachine(RuleBasedStateMachine):
    """Alice, Bob and Mallory exchanging packets under an adversarial scheduler."""

    def __init__(self) -> None:
        super().__init__()
        COUNTS.examples += 1
        ids = _identities()
        self.parties = [
            Party(name, LocalIdentity.create(ident, box, ProfileSummary(name, ())))
            for name, ident, box in zip(NAMES, ids, BOXES, strict=True)
        ]
        self.by_box = {box: party for box, party in zip(BOXES, self.parties, strict=True)}
        self.wire: dict[str, list[bytes]] = {box: [] for box in BOXES}
        self.seen: list[bytes] = []
        self.counter = 0

    # ------------------------------------------------------------------ plumbing

    def _send(self, box: str, packet: bytes) -> None:
        self.wire.setdefault(box, []).append(packet)
        self.seen.append(packet)

    def _fresh_frames(self, count: int) -> list[Frame]:
        frames: list[Frame] = []
        for _ in range(count):
            self.counter += 1
            frames.append(Message("t", self.counter.to_bytes(4, "big")))
        return frames

    def _drop(self, party: Party, index: bytes) -> None:
        party.sessions.pop(index, None)

    def _dispatch(self, party: Party, packet: bytes) -> None:
        """What `Node._dispatch` does with one packet, on the real cores."""
        COUNTS.packets += 1
        kind = packet_kind(packet)
        if kind != HS1 and len(packet) < 1 + INDEX_LEN:
            return
        try:
            if kind == HS1:
                handshake, hs2, reply_to = Handshake.respond(party.local, packet)
                party.responding[handshake.index] = handshake
                self._send(reply_to, hs2)
            elif kind == HS2:
                initiator = party.initiating.pop(receiver_index(packet), None)
                if initiator is not None:
                    hs3, session = initiator.on_hs2(packet)
                    self._established(party, session)
                    self._send(session.peer.mailbox, hs3)
            elif kind == HS3:
                responder = party.responding.pop(receiver_index(packet), None)
                if responder is not None:
                    session = responder.on_hs3(packet)
                    self._established(party, session)
                    party.confirmed.add(session.index)
            elif kind == DATA:
                index = receiver_index(packet)
                live = party.sessions.get(index)
                if live is not None:
                    try:
                        frames = live.open(packet)
                    except RemoteProtocolError:
                        self._drop(party, index)
                        raise
                    party.confirmed.add(index)
                    party.delivered[index].extend(frames)
                    COUNTS.frames_delivered += len(frames)
            elif kind == REJECT:
                index = receiver_index(packet)
                if index in party.sessions and index not in party.confirmed:
                    self._drop(party, index)
        except RemoteProtocolError as exc:
            assert exc.field and exc.reason
            COUNTS.errors += 1

    def _established(self, party: Party, session: Session) -> None:
        COUNTS.sessions += 1
        party.sessions[session.index] = session
        party.every_session.append(session)
        party.delivered[session.index] = []
        party.sealed[session.index] = []

    # ------------------------------------------------------------------ rules

    @rule(src=st.integers(0, 2), dst=st.integers(0, 2), squat=st.booleans())
    def start(self, src: int, dst: int, squat: bool) -> None:
        """A party opens a handshake; Mallory may name Alice's mailbox as hers."""
        if src == dst:
            return
        party = self.parties[src]
        local = party.local
        if party.name == "mallory" and squat:
            local = LocalIdentity(
                local.identity, local.static, BOXES[0], local.profile, local.signature
            )
        handshake = Handshake(local, initiator=True)
        party.initiating[handshake.index] = handshake
        self._send(BOXES[dst], handshake.start())

    @precondition(lambda self: bool(self.seen))
    @rule(dst=st.integers(0, 2), pick=st.integers(0, 10**6))
    def replay(self, dst: int, pick: int) -> None:
        """Deliver any packet ever seen on the wire (late, again, or to someone else)."""
        self._dispatch(self.parties[dst], self.seen[pick % len(self.seen)])

    @rule(src=st.integers(0, 2), dst=st.integers(0, 2))
    def handshake(self, src: int, dst: int) -> None:
        """A whole honest handshake in one step (interleaved with what is pending)."""
        if src == dst:
            return
        self.start(src, dst, squat=False)
        for box in (dst, src, dst):
            self.flush(box)

    @rule(dst=st.integers(0, 2))
    def flush(self, dst: int) -> None:
        """Deliver everything pending for a mailbox in order: honest progress."""
        queue = self.wire[BOXES[dst]]
        while queue:
            self._dispatch(self.parties[dst], queue.pop(0))

    @rule(src=st.integers(0, 2), pick=st.integers(0, 10**6), count=st.integers(1, 4))
    def send(self, src: int, pick: int, count: int) -> None:
        """A party seals frames on one of its live sessions."""
        party = self.parties[src]
        if not party.sessions:
            return
        index = sorted(party.sessions)[pick % len(party.sessions)]
        session = party.sessions[index]
        frames = self._fresh_frames(count)
        if pick % 5 == 0:
            frames.append(Heartbeat(pick, reply=False))
        packet = session.seal(frames)
        party.sealed[index].extend(frames)
        self._send(session.peer.mailbox, packet)

    @rule(src=st.integers(0, 2), pick=st.integers(0, 10**6), count=st.integers(1, 4))
    def converse(self, src: int, pick: int, count: int) -> None:
        """Seal frames and deliver them to the peer at once, after what is pending."""
        self.send(src, pick, count)
        party = self.parties[src]
        if party.sessions:
            index = sorted(party.sessions)[pick % len(party.sessions)]
            box = party.sessions[index].peer.mailbox
            if box in BOXES:
                self.flush(BOXES.index(box))

    @precondition(lambda self: bool(self.seen))
    @rule(
        dst=st.integers(0, 2),
        pick=st.integers(0, 10**6),
        pos=st.integers(0, 10**6),
        mask=st.integers(1, 255),
    )
    def tamper(self, dst: int, pick: int, pos: int, mask: int) -> None:
        """Deliver a bit-flipped copy of any packet seen on the wire."""
        packet = bytearray(self.seen[pick % len(self.seen)])
        packet[pos % len(packet)] ^= mask
        self._dispatch(self.parties[dst], bytes(packet))

    @precondition(lambda self: bool(self.seen))
    @rule(dst=st.integers(0, 2), pick=st.integers(0, 10**6), cut=st.integers(0, 10**6))
    def truncate(self, dst: int, pick: int, cut: int) -> None:
        """Deliver a truncated copy of any packet seen on the wire."""
        packet = self.seen[pick % len(self.seen)]
        self._dispatch(self.parties[dst], packet[: cut % (len(packet) + 1)])

    @precondition(lambda self: bool(self.seen))
    @rule(
        dst=st.integers(0, 2),
        first=st.integers(0, 10**6),
        second=st.integers(0, 10**6),
        cut=st.integers(0, 10**6),
    )
    def splice(self, dst: int, first: int, second: int, cut: int) -> None:
        """Deliver the head of one seen packet joined to the tail of another."""
        a, b = self.seen[first % len(self.seen)], self.seen[second % len(self.seen)]
        at = cut % (min(len(a), len(b)) + 1)
        self._dispatch(self.parties[dst], a[:at] + b[at:])

    @rule(
        dst=st.integers(0, 2),
        kind=st.sampled_from([0, HS1, HS2, HS3, DATA, REJECT, 6, 255]),
        aim=st.booleans(),
        body=st.binary(max_size=200),
    )
    def forge(self, dst: int, kind: int, aim: bool, body: bytes) -> None:
        """Deliver forged bytes, optionally addressed to a real handshake or session."""
        party = self.parties[dst]
        known = [*party.sessions, *party.responding, *party.initiating]
        prefix = bytes([kind]) + (known[len(body) % len(known)] if aim and known else b"")
        self._dispatch(party, prefix + body)

    @precondition(lambda self: bool(self.seen))
    @rule(pick=st.integers(0, 10**6))
    def mallory_hijacks(self, pick: int) -> None:
        """Mallory feeds any HS2 she saw (meant for anyone) to her own handshakes."""
        mallory = self.parties[2]
        packet = self.seen[pick % len(self.seen)]
        if packet_kind(packet) == HS2 and len(packet) >= 1 + INDEX_LEN:
            self._dispatch(mallory, packet)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def delivered_frames_were_sealed_in_order_by_the_matching_peer(self) -> None:
        for party in self.parties:
            for session in party.every_session:
                got = party.delivered[session.index]
                other = self._counterpart(party, session)
                if other is None:
                    assert not got, f"{party.name} delivered frames nobody sealed"
                    continue
                holder, twin = other
                assert session.peer.peer_id == holder.local.identity.peer_id
                sent = holder.sealed[twin.index]
                assert got == sent[: len(got)], f"{party.name} delivered out of order"

    def _counterpart(self, party: Party, session: Session) -> tuple[Party, Session] | None:
        for other in self.parties:
            for twin in other.every_session:
                if twin.index == session.remote_index and twin.remote_index == session.index:
                    return other, twin
        return None


def run_session_fuzz(examples: int) -> Counts:
    before = Counts(**COUNTS.__dict__)
    run_state_machine_as_test(
        SessionMachine,
        settings=settings(fuzz_settings(examples), stateful_step_count=STEPS),
    )
    done = Counts(**{k: v - getattr(before, k) for k, v in COUNTS.__dict__.items()})
    print(f"\nsession state machine: {done}")
    return done


def test_session_cores_survive_arbitrary_packet_sequences() -> None:
    """1 000 adversarial schedules of up to 20 steps: sessions still form between honest
    parties, and no forged, replayed, reordered or misattributed frame is ever
    delivered (the invariants above hold after every step)."""
    done = run_session_fuzz(CI_EXAMPLES)
    assert done.examples >= CI_EXAMPLES
    assert done.sessions > 100 and done.frames_delivered > 100 and done.errors > 100


@pytest.mark.slow
def test_session_fuzz_slow() -> None:
    """The same over 100 000 schedules."""
    done = run_session_fuzz(SLOW_EXAMPLES)
    assert done.examples >= SLOW_EXAMPLES
