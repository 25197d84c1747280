"""The session core: two peers joined in memory (no I/O), and every way to break it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import noise
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import Identity
from mesh.session import (
    HS1,
    REKEY_INTERVAL,
    CounterGap,
    DecryptFailed,
    Handshake,
    IdentityMismatch,
    LocalIdentity,
    NotAllowed,
    Phase,
    ReplayDetected,
    Session,
    SessionError,
    VersionMismatch,
    binding_digest,
)
from mesh.session_frames import Heartbeat, Hello, Message, ProfileSummary
from mesh.wire import MAX_FRAME_SIZE, PROTOCOL_VERSION, decode, encode

ALICE_BOX = "tcp://127.0.0.1:7001"
BOB_BOX = "tcp://127.0.0.1:7002"


def local(mailbox: str, name: str = "m") -> LocalIdentity:
    return LocalIdentity.create(Identity.generate(), mailbox, ProfileSummary(name, ("svc",)))


def pair(
    alice: LocalIdentity | None = None,
    bob: LocalIdentity | None = None,
    **responder_kw: object,
) -> tuple[Session, Session]:
    """Run a full handshake in memory; returns (initiator session, responder session)."""
    alice = alice or local(ALICE_BOX, "alice")
    bob = bob or local(BOB_BOX, "bob")
    initiator = Handshake(alice, initiator=True)
    responder, hs2, reply_to = Handshake.respond(bob, initiator.start(), **responder_kw)  # type: ignore[arg-type]
    assert reply_to == ALICE_BOX
    hs3, a = initiator.on_hs2(hs2)
    b = responder.on_hs3(hs3)
    return a, b


def test_handshake_proves_both_identities() -> None:
    alice, bob = local(ALICE_BOX, "alice"), local(BOB_BOX, "bob")
    a, b = pair(alice, bob)
    assert a.peer.peer_id == bob.identity.peer_id
    assert b.peer.peer_id == alice.identity.peer_id
    assert a.peer.mailbox == BOB_BOX and b.peer.mailbox == ALICE_BOX
    assert a.peer.profile == ProfileSummary("bob", ("svc",))
    assert a.index == b.remote_index and b.index == a.remote_index


def test_frames_flow_both_ways_in_order() -> None:
    a, b = pair()
    frames = [Message("t", bytes([i % 256]) * i) for i in range(50)]
    assert b.open(a.seal(frames[:20])) == frames[:20]
    assert b.open(a.seal(frames[20:])) == frames[20:]
    assert a.open(b.seal([Heartbeat(1, True)])) == [Heartbeat(1, True)]


def test_someone_elses_identity_key_is_rejected() -> None:
    """A valid Noise handshake carrying a stolen identity proof fails the binding."""
    victim = local(BOB_BOX, "victim")
    mallory_static = noise.KeyPair.generate()
    # Mallory copies the victim's identity key and signature but must use her own
    # Noise static key (she cannot complete Noise with the victim's).
    forged = LocalIdentity(
        identity=victim.identity,
        static=mallory_static,
        mailbox=BOB_BOX,
        profile=victim.profile,
        signature=victim.signature,
    )
    initiator = Handshake(local(ALICE_BOX), initiator=True)
    _, hs2, _ = Handshake.respond(forged, initiator.start())
    with pytest.raises(IdentityMismatch, match="does not bind"):
        initiator.on_hs2(hs2)
    assert initiator.phase is Phase.FAILED


def test_signature_by_another_key_is_rejected() -> None:
    alice = local(ALICE_BOX)
    other = Identity.generate()
    forged = LocalIdentity(
        identity=alice.identity,
        static=alice.static,
        mailbox=ALICE_BOX,
        profile=alice.profile,
        signature=other.sign_digest(binding_digest(alice.static.public)),
    )
    initiator = Handshake(forged, initiator=True)
    responder, hs2, _ = Handshake.respond(local(BOB_BOX), initiator.start())
    hs3, _ = initiator.on_hs2(hs2)
    with pytest.raises(IdentityMismatch):
        responder.on_hs3(hs3)


def test_expected_peer_is_enforced() -> None:
    """Dialing a discovered peer pins its id: a different (valid) identity is refused."""
    initiator = Handshake(local(ALICE_BOX), initiator=True, expect_peer="02" + "11" * 32)
    _, hs2, _ = Handshake.respond(local(BOB_BOX), initiator.start())
    with pytest.raises(IdentityMismatch, match="expected"):
        initiator.on_hs2(hs2)


def test_allow_list_refuses_unknown_peer_before_any_frame() -> None:
    alice = local(ALICE_BOX)
    with pytest.raises(NotAllowed):
        pair(alice, allow={"02" + "22" * 32})
    a, b = pair(alice, allow={alice.identity.peer_id})
    assert b.peer.peer_id == alice.identity.peer_id
    a, b = pair(alice, allow={"*"})
    assert b.open(a.seal([Heartbeat(0, False)]))


def test_mailbox_must_match_between_hs1_and_hs3() -> None:
    alice = local(ALICE_BOX)
    initiator = Handshake(alice, initiator=True)
    hs1 = initiator.start()
    liar = LocalIdentity(
        alice.identity, alice.static, "tcp://10.9.9.9:1", alice.profile, alice.signature
    )
    responder, hs2, _ = Handshake.respond(local(BOB_BOX), hs1)
    initiator.local = liar
    hs3, _ = initiator.on_hs2(hs2)
    with pytest.raises(IdentityMismatch, match="mailbox"):
        responder.on_hs3(hs3)


def test_wrong_version_is_rejected() -> None:
    bob = local(BOB_BOX)
    initiator = Handshake(local(ALICE_BOX), initiator=True)
    _, hs2, _ = Handshake.respond(bob, initiator.start())
    # Rebuild msg 2 with a Hello that claims the next version.
    responder = Handshake(bob, initiator=False)
    responder.remote_index = hs2[1:9]
    hello = decode(bob.hello())
    assert isinstance(hello, Hello)
    bad = replace(hello, version=PROTOCOL_VERSION + 1)
    fresh = Handshake(local(ALICE_BOX), initiator=True)
    hs1 = fresh.start()
    responder._noise.read_message(hs1[9:])
    hs2_bad = bytes([2]) + hs1[1:9] + responder.index + responder._noise.write_message(encode(bad))
    with pytest.raises(VersionMismatch):
        fresh.on_hs2(hs2_bad)


@pytest.mark.parametrize("which", ["hs1", "hs2", "hs3"])
def test_any_bit_flip_in_the_handshake_fails_it(which: str) -> None:
    alice, bob = local(ALICE_BOX), local(BOB_BOX)
    for position in range(12, 120, 7):
        initiator = Handshake(alice, initiator=True)
        hs1 = initiator.start()
        if which == "hs1":
            flipped = bytearray(hs1)
            flipped[position % len(hs1)] ^= 0x10
            hs1 = bytes(flipped)
        with pytest.raises(RemoteProtocolError):
            responder, hs2, _ = Handshake.respond(bob, hs1)
            if which == "hs2":
                flipped = bytearray(hs2)
                flipped[position] ^= 0x10
                hs2 = bytes(flipped)
            hs3, _ = initiator.on_hs2(hs2)
            if which == "hs3":
                flipped = bytearray(hs3)
                flipped[position] ^= 0x10
                hs3 = bytes(flipped)
            responder.on_hs3(hs3)


def test_every_bit_flip_in_a_transport_packet_kills_the_session() -> None:
    for position in range(0, 60):
        a, b = pair()
        packet = bytearray(a.seal([Message("x", b"secret payload")]))
        packet[position % len(packet)] ^= 0x01
        with pytest.raises(RemoteProtocolError):
            b.open(bytes(packet))
        assert b.dead is not None
        with pytest.raises(LocalProtocolError, match="dead"):
            b.open(a.seal([Heartbeat(0, False)]))


def test_replay_and_gap_are_typed() -> None:
    a, b = pair()
    first = a.seal([Heartbeat(1, False)])
    b.open(first)
    with pytest.raises(ReplayDetected):
        b.open(first)
    a, b = pair()
    a.seal([Heartbeat(1, False)])  # lost on the way
    with pytest.raises(CounterGap):
        b.open(a.seal([Heartbeat(2, False)]))


def test_rekey_every_interval_keeps_both_sides_in_sync() -> None:
    a, b = pair()
    first_key = a._send._k
    for i in range(2 * REKEY_INTERVAL + 5):  # one Noise message per packet
        assert b.open(a.seal([Heartbeat(i, False)])) == [Heartbeat(i, False)]
    assert a._send.n == b._recv.n == 2 * REKEY_INTERVAL + 5
    # The cipher key really changed: a side that never rekeyed could not read on.
    assert a._send._k != first_key


def _packet_size(messages: int, frames: list[Message]) -> int:
    """The DATA layout: type, index, first counter; per Noise message a length and a
    tag; per frame a length."""
    header, per_message, per_frame = 1 + 8 + 8, 2 + noise.TAGLEN, 2
    return header + messages * per_message + sum(per_frame + len(encode(f)) for f in frames)


def test_a_packet_of_many_frames_is_one_noise_message() -> None:
    a, b = pair()
    frames = [Message("t", bytes([i]) * i) for i in range(50)]
    packet = a.seal(frames)
    assert a._send.n == 1
    assert len(packet) == _packet_size(1, frames)
    assert b.open(packet) == frames
    assert b.frames_received == a.frames_sent == 50


def test_frames_past_64_kib_share_as_few_messages_as_fit() -> None:
    a, b = pair()
    frames = [Message("big", bytes(30_000)) for _ in range(5)]  # two fit in a message
    packet = a.seal(frames)
    assert a._send.n == 3
    assert len(packet) == _packet_size(3, frames)
    assert b.open(packet) == frames
    overhead = len(encode(Message("max", bytes(1000)))) - 1000
    largest = encode(Message("max", bytes(MAX_FRAME_SIZE - overhead)))
    assert len(largest) == MAX_FRAME_SIZE
    assert b.open(a.seal_encoded([largest, largest])) == [decode(largest)] * 2
    assert a._send.n == 5
    with pytest.raises(LocalProtocolError, match="MAX_FRAME_SIZE"):
        a.seal_encoded([largest + b"\x00"])
    with pytest.raises(LocalProtocolError, match="at least one frame"):
        a.seal([])


_HEARTBEAT = len(encode(Heartbeat(1, False))).to_bytes(2, "little") + encode(Heartbeat(1, False))


def _forged(sender: Session, plaintext: bytes) -> bytes:
    """A DATA packet whose one message, validly encrypted, holds `plaintext`."""
    ciphertext = sender._send.encrypt(plaintext)
    counter = (sender._send.n - 1).to_bytes(8, "little")
    return sender._header + counter + len(ciphertext).to_bytes(2, "little") + ciphertext


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (b"", "without frames"),
        (b"\x05", "truncated frame length"),
        (b"\x05\x00abc", "truncated frame"),
        (_HEARTBEAT + b"\x09", "truncated frame length"),  # a good frame, then a stub
        (b"\x02\x00\xc1\xc1", "not valid MessagePack"),
    ],
)
def test_a_malformed_message_inside_a_packet_kills_the_session(
    plaintext: bytes, reason: str
) -> None:
    a, b = pair()
    with pytest.raises(RemoteProtocolError, match=reason):
        b.open(_forged(a, plaintext))
    assert b.dead is not None


def test_handshake_frames_after_handshake_are_refused() -> None:
    a, b = pair()
    alice_hello = decode(LocalIdentity.create(Identity.generate(), ALICE_BOX).hello())
    with pytest.raises(SessionError, match="after the handshake"):
        b.open(a.seal([alice_hello]))


def test_garbage_hs1_is_a_typed_error() -> None:
    bob = local(BOB_BOX)
    for garbage in (b"", bytes([HS1]), bytes([HS1]) + b"\x00" * 8, bytes([HS1]) + b"\x07" * 40):
        with pytest.raises(RemoteProtocolError):
            Handshake.respond(bob, garbage)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_round_trip_property(bodies: list[bytes]) -> None:
    a, b = pair()
    frames = [Message("p", body) for body in bodies]
    assert b.open(a.seal(frames)) == frames
    assert a.open(b.seal(frames)) == frames


def test_flipped_ciphertext_is_a_decrypt_failure() -> None:
    a, b = pair()
    packet = bytearray(a.seal([Message("x", b"secret payload")]))
    packet[-5] ^= 0x80
    with pytest.raises(DecryptFailed):
        b.open(bytes(packet))
