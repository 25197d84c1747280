"""Tests for mesh.noise: the cacophony vectors, interop with `noiseprotocol`, tampering."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from mesh.noise import (
    MAX_MESSAGE_LEN,
    PROTOCOL_NAME,
    CipherState,
    DecryptError,
    HandshakeState,
    HandshakeStateError,
    KeyPair,
    NoiseError,
    NonceExhausted,
)

VECTORS = Path(__file__).parent / "vectors" / "noise-25519-chachapoly-blake2b.json"


def _xx_vector() -> dict[str, Any]:
    data = json.loads(VECTORS.read_text())
    assert data["source"]  # provenance travels with the copy
    found = [v for v in data["vectors"] if v["protocol_name"] == PROTOCOL_NAME.decode()]
    assert len(found) == 1
    vector: dict[str, Any] = found[0]
    return vector


def _key(vector: dict[str, Any], name: str) -> KeyPair:
    return KeyPair.from_private(bytes.fromhex(vector[name]))


def _vector_pair() -> tuple[HandshakeState, HandshakeState]:
    """Initiator and responder with the vector's fixed keys: fully deterministic."""
    v = _xx_vector()
    init = HandshakeState(
        True, _key(v, "init_static"), bytes.fromhex(v["init_prologue"]), _key(v, "init_ephemeral")
    )
    resp = HandshakeState(
        False, _key(v, "resp_static"), bytes.fromhex(v["resp_prologue"]), _key(v, "resp_ephemeral")
    )
    return init, resp


def _handshake(
    init: HandshakeState,
    resp: HandshakeState,
    payloads: tuple[bytes, bytes, bytes] = (b"", b"", b""),
    tamper: Callable[[int, bytes], bytes] = lambda i, m: m,
) -> tuple[CipherState, CipherState, CipherState, CipherState]:
    """Run XX; return (init_send, init_recv, resp_send, resp_recv)."""
    for i, payload in enumerate(payloads):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        sent = writer.write_message(payload)
        received = tamper(i, sent)
        got = reader.read_message(received)
        # Message 0 is unauthenticated: damage there surfaces only at message 1.
        assert got == payload or received != sent
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    i_send, i_recv = init.split()
    r_recv, r_send = resp.split()
    return i_send, i_recv, r_send, r_recv


def _fresh_pair() -> tuple[CipherState, CipherState, CipherState, CipherState]:
    return _handshake(
        HandshakeState(True, KeyPair.generate()), HandshakeState(False, KeyPair.generate())
    )


# --- test vectors -----------------------------------------------------------------


def test_xx_vector_reproduced_byte_for_byte() -> None:
    v = _xx_vector()
    init, resp = _vector_pair()
    messages = v["messages"]
    ciphers: dict[bool, CipherState] = {}
    receivers: dict[bool, CipherState] = {}
    for i, m in enumerate(messages):
        payload, expected = bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])
        by_initiator = i % 2 == 0
        if not init.complete:
            writer, reader = (init, resp) if by_initiator else (resp, init)
            assert writer.write_message(payload) == expected
            assert reader.read_message(expected) == payload
            if init.complete:
                assert init.handshake_hash.hex() == v["handshake_hash"]
                assert resp.handshake_hash.hex() == v["handshake_hash"]
                assert init.remote_static == _key(v, "resp_static").public
                assert resp.remote_static == _key(v, "init_static").public
                i_to_r, r_to_i = init.split()
                r_i_to_r, r_r_to_i = resp.split()
                ciphers = {True: i_to_r, False: r_to_i}
                receivers = {True: r_i_to_r, False: r_r_to_i}
        else:
            assert ciphers[by_initiator].encrypt_with_ad(b"", payload) == expected
            assert receivers[by_initiator].decrypt_with_ad(b"", expected) == payload
    assert len(messages) > 3  # the vector does carry transport messages


# --- interop with the `noiseprotocol` package ---------------------------------------


def _their(initiator: bool, static: KeyPair, prologue: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static.private)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("we_initiate", [True, False])
def test_interop_with_noiseprotocol(we_initiate: bool) -> None:
    prologue = b"m2mesh interop"
    ours_s, theirs_s = KeyPair.generate(), KeyPair.generate()
    ours = HandshakeState(we_initiate, ours_s, prologue)
    theirs = _their(not we_initiate, theirs_s, prologue)
    # noiseprotocol drops its handshake state when done; keep a handle to read `rs`.
    their_hs = theirs.noise_protocol.handshake_state
    for i in range(3):
        payload = f"handshake payload {i}".encode()
        if (i % 2 == 0) == we_initiate:
            assert bytes(theirs.read_message(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == theirs_s.public
    assert their_hs.rs.public_bytes == ours_s.public

    i_to_r, r_to_i = ours.split()
    send, recv = (i_to_r, r_to_i) if we_initiate else (r_to_i, i_to_r)
    for n in range(5):
        msg = b"ours %d " % n * n
        assert theirs.decrypt(send.encrypt(msg)) == msg
        reply = b"theirs %d" % n
        assert recv.decrypt(theirs.encrypt(reply)) == reply
    # REKEY must match theirs too.
    send.rekey()
    theirs.rekey_inbound_cipher()
    recv.rekey()
    theirs.rekey_outbound_cipher()
    assert theirs.decrypt(send.encrypt(b"after rekey")) == b"after rekey"
    assert recv.decrypt(theirs.encrypt(b"and back")) == b"and back"


# --- tampering and misuse -----------------------------------------------------------


def _flip(index: int, bit: int) -> Callable[[int, bytes], bytes]:
    def tamper(i: int, message: bytes) -> bytes:
        if i != index:
            return message
        b = bytearray(message)
        b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b)

    return tamper


def _vector_messages(payloads: tuple[bytes, bytes, bytes]) -> list[bytes]:
    init, resp = _vector_pair()
    seen: list[bytes] = []
    for i, payload in enumerate(payloads):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        seen.append(writer.write_message(payload))
        reader.read_message(seen[-1])
    return seen


@pytest.mark.parametrize("index", [0, 1, 2])
def test_any_flipped_bit_in_handshake_fails(index: int) -> None:
    payloads = (b"first", b"second", b"third")
    for bit in range(len(_vector_messages(payloads)[index]) * 8):
        with pytest.raises(DecryptError):
            _handshake(*_vector_pair(), payloads=payloads, tamper=_flip(index, bit))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_truncated_handshake_message_is_a_noise_error(index: int) -> None:
    payloads = (b"payload",) * 3
    for cut in range(len(_vector_messages(payloads)[index])):

        def truncate(i: int, m: bytes, cut: int = cut) -> bytes:
            return m[:cut] if i == index else m

        with pytest.raises(NoiseError):
            _handshake(*_vector_pair(), payloads=payloads, tamper=truncate)


def test_failed_handshake_stays_failed() -> None:
    init, resp = _vector_pair()
    resp.read_message(init.write_message(b""))
    msg = bytearray(resp.write_message(b""))
    msg[-1] ^= 1
    with pytest.raises(DecryptError):
        init.read_message(bytes(msg))
    with pytest.raises(HandshakeStateError):
        init.write_message(b"")
    with pytest.raises(HandshakeStateError):
        init.read_message(bytes(msg))


def test_calls_out_of_turn() -> None:
    init, resp = _vector_pair()
    with pytest.raises(HandshakeStateError):
        init.read_message(b"\x00" * 32)
    with pytest.raises(HandshakeStateError):
        resp.write_message(b"")
    with pytest.raises(HandshakeStateError):
        init.split()
    with pytest.raises(HandshakeStateError):
        _ = init.handshake_hash
    m0 = init.write_message(b"")
    with pytest.raises(HandshakeStateError):
        init.write_message(b"")
    resp.read_message(m0)
    with pytest.raises(HandshakeStateError):
        resp.read_message(m0)
    init.read_message(resp.write_message(b""))
    resp.read_message(init.write_message(b""))
    for hs in (init, resp):
        assert hs.complete
        with pytest.raises(HandshakeStateError):
            hs.write_message(b"")
        with pytest.raises(HandshakeStateError):
            hs.read_message(m0)
        hs.split()
        with pytest.raises(HandshakeStateError):
            hs.split()  # a second cipher pair would reuse nonces


def test_remote_static_appears_when_read() -> None:
    init, resp = _vector_pair()
    assert init.remote_static is None and resp.remote_static is None
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    assert init.remote_static is not None and resp.remote_static is None
    resp.read_message(init.write_message(b""))
    assert resp.remote_static is not None


def test_low_order_ephemeral_is_rejected() -> None:
    init, resp = _vector_pair()
    m0 = init.write_message(b"")
    resp.read_message(bytes(32) + m0[32:])  # all-zero point: DH output would be zero
    with pytest.raises(NoiseError):
        resp.write_message(b"")
    with pytest.raises(HandshakeStateError):
        resp.write_message(b"")


def test_message_size_limits() -> None:
    init, resp = _vector_pair()
    with pytest.raises(NoiseError):
        resp.read_message(bytes(MAX_MESSAGE_LEN + 1))
    init, _ = _vector_pair()
    with pytest.raises(NoiseError):
        init.write_message(bytes(MAX_MESSAGE_LEN - 31))
    send, _, _, recv = _fresh_pair()
    with pytest.raises(NoiseError):
        send.encrypt(bytes(MAX_MESSAGE_LEN - 15))
    assert recv.decrypt(send.encrypt(bytes(MAX_MESSAGE_LEN - 16))) == bytes(MAX_MESSAGE_LEN - 16)


def test_transport_bit_flips_fail_and_do_not_advance_nonce() -> None:
    send, _, _, recv = _fresh_pair()
    ct = send.encrypt(b"pay 100 sat", b"ad")
    for bit in range(len(ct) * 8):
        b = bytearray(ct)
        b[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptError):
            recv.decrypt(bytes(b), b"ad")
        assert recv.n == 0
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"other ad", ct)
    for cut in range(len(ct)):
        with pytest.raises(NoiseError):
            recv.decrypt(ct[:cut], b"ad")
    assert recv.n == 0
    assert recv.decrypt_with_ad(b"ad", ct) == b"pay 100 sat"
    assert recv.n == 1


def test_replayed_transport_message_fails() -> None:
    send, _, _, recv = _fresh_pair()
    first = send.encrypt(b"one")
    assert recv.decrypt(first) == b"one"
    with pytest.raises(DecryptError):
        recv.decrypt(first)
    assert recv.decrypt(send.encrypt(b"two")) == b"two"


def test_rekey_keeps_sides_in_sync_and_changes_ciphertexts() -> None:
    a_send, a_recv, b_send, b_recv = _handshake(*_vector_pair())
    twin, _, _, _ = _handshake(*_vector_pair())  # same keys as a_send
    first = a_send.encrypt(b"x")
    assert first == twin.encrypt(b"x")
    assert b_recv.decrypt(first) == b"x"
    for cs in (a_send, b_recv, b_send, a_recv):
        cs.rekey()
    assert a_send.n == b_recv.n == 1  # REKEY leaves the counter alone
    second = a_send.encrypt(b"x")
    assert second != twin.encrypt(b"x")
    assert b_recv.decrypt(second) == b"x"
    assert a_recv.decrypt(b_send.encrypt(b"y")) == b"y"
    a_send.rekey()  # one side alone: the stream breaks
    with pytest.raises(DecryptError):
        b_recv.decrypt(a_send.encrypt(b"z"))


def test_nonce_exhaustion() -> None:
    send, _, _, recv = _fresh_pair()
    send.set_nonce(2**64 - 2)
    recv.set_nonce(2**64 - 2)
    assert recv.decrypt(send.encrypt(b"last")) == b"last"
    with pytest.raises(NonceExhausted):
        send.encrypt(b"one too many")
    with pytest.raises(NonceExhausted):
        recv.decrypt(bytes(16))
    with pytest.raises(ValueError):
        send.set_nonce(2**64)


def test_keyless_cipher() -> None:
    cs = CipherState()
    assert not cs.has_key()
    assert cs.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cs.decrypt_with_ad(b"ad", b"clear") == b"clear"
    for op in (cs.encrypt, cs.decrypt, lambda _: cs.rekey()):
        with pytest.raises(NoiseError):
            op(b"x")


def test_keypair() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    assert a != b and len(a.public) == 32
    assert KeyPair.from_private(a.private) == a
    assert a.private.hex() not in repr(a)
    with pytest.raises(ValueError):
        KeyPair.from_private(b"short")


# --- property -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    handshake=st.tuples(*[st.binary(max_size=300)] * 3),
    transport=st.lists(st.tuples(st.booleans(), st.binary(max_size=2000)), max_size=20),
    prologue=st.binary(max_size=64),
)
def test_round_trip_property(
    handshake: tuple[bytes, bytes, bytes],
    transport: list[tuple[bool, bytes]],
    prologue: bytes,
) -> None:
    init = HandshakeState(True, KeyPair.generate(), prologue)
    resp = HandshakeState(False, KeyPair.generate(), prologue)
    i_send, i_recv, r_send, r_recv = _handshake(init, resp, payloads=handshake)
    for from_initiator, payload in transport:
        send, recv = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        ct = send.encrypt(payload)
        assert len(ct) == len(payload) + 16
        assert recv.decrypt(ct) == payload
