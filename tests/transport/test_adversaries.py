"""Real nng sockets on loopback against a man in the middle and impostors."""

from __future__ import annotations

import pytest
import trio

from mesh import session as session_mod
from mesh.identity import Identity
from mesh.net.node import ConnectError, NodeConfig, open_node
from mesh.session import DATA, LocalIdentity, binding_digest
from mesh.session_frames import Message
from tests.transport.mitm import Relay, Tamper, port_of

MARKER = b"TOP-SECRET-SPINDLE-RECIPE"
FAST = NodeConfig(handshake_timeout=1.0, connect_attempts=1)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.01)


def data_packets_only(action: Callable[[bytes], list[bytes]], nth: int) -> Tamper:
    """Apply `action` to the nth DATA packet that passes the relay; relay the rest."""
    count = {"data": -1}

    def tamper(_: int, body: bytes) -> list[bytes]:
        if body[:1] != bytes([DATA]):
            return [body]
        count["data"] += 1
        return action(body) if count["data"] == nth else [body]

    return tamper


from collections.abc import Callable  # noqa: E402


@pytest.mark.parametrize("offset", [0, 1, 5, 9, 12, 17, 18, 20, 30, -1])
async def test_mitm_flipping_one_bit_ends_the_session(offset: int) -> None:
    def flip(body: bytes) -> list[bytes]:
        mutated = bytearray(body)
        mutated[offset] ^= 0x04
        return [bytes(mutated)]

    await _tamper_scenario(data_packets_only(flip, nth=2))


async def test_mitm_replaying_a_packet_ends_the_session() -> None:
    await _tamper_scenario(data_packets_only(lambda body: [body, body], nth=2))


async def _tamper_scenario(tamper: Tamper) -> None:
    sent = [Message(str(i), MARKER + bytes([i])) for i in range(60)]
    async with trio.open_nursery() as nursery:
        async with open_node(Identity.generate(), config=FAST) as bob:
            to_bob = Relay(port_of(bob.address), tamper)
            await nursery.start(to_bob.run)
            async with open_node(Identity.generate(), config=FAST) as alice:
                session = await alice.connect(to_bob.address, expect_peer=bob.peer_id)
                got: list[Message] = []
                for frame in sent:
                    await session.send(frame)
                    await trio.sleep(0.002)  # one packet per frame, so the nth is mid-stream

                async def collect() -> None:
                    while True:
                        _, frame = await bob.receive()
                        assert isinstance(frame, Message)
                        got.append(frame)

                with trio.move_on_after(1.0):
                    await collect()
                # Bob delivered an untouched prefix, then killed the session.
                assert 0 < len(got) < len(sent)
                assert got == sent[: len(got)]
                assert bob.statistics().sessions_failed + bob.statistics().packets_dropped >= 1
                assert bob.session(alice.peer_id) is None
                # The relay saw every byte and never the plaintext.
                assert to_bob.seen and not any(MARKER in body for body in to_bob.seen)
        nursery.cancel_scope.cancel()


async def test_impostor_with_someone_elses_identity_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim = Identity.generate()
    async with open_node(Identity.generate(), config=FAST) as honest:
        real_create = LocalIdentity.create

        def forged(
            identity: Identity, mailbox: str, profile: object = None, **_: object
        ) -> LocalIdentity:
            mine = real_create(Identity.generate(), mailbox)
            # The impostor copies the victim's public key; it cannot sign for it.
            fake_sig = Identity.generate().sign_digest(binding_digest(mine.static.public))
            return LocalIdentity(victim, mine.static, mailbox, mine.profile, fake_sig)

        monkeypatch.setattr(session_mod.LocalIdentity, "create", staticmethod(forged))
        async with open_node(victim, config=FAST) as impostor:
            monkeypatch.undo()
            # As initiator: the honest node refuses msg 3 and says why.
            with pytest.raises(ConnectError, match=r"refused by peer.*does not bind"):
                await impostor.connect(honest.address)
            # As responder: the honest initiator checks msg 2 itself.
            with pytest.raises(ConnectError, match="does not bind"):
                await honest.connect(impostor.address, expect_peer=victim.peer_id)
            assert honest.session(victim.peer_id) is None
            assert honest.statistics().handshakes_failed == 2


async def test_allow_list_is_enforced_on_both_sides() -> None:
    friend, stranger = Identity.generate(), Identity.generate()
    async with (
        open_node(Identity.generate(), allow={friend.peer_id}, config=FAST) as guarded,
        open_node(friend, config=FAST) as f,
        open_node(stranger, config=FAST) as s,
    ):
        ok = await f.connect(guarded.address)
        await ok.send(Message("hi", b"friend"))
        assert await guarded.receive() == (friend.peer_id, Message("hi", b"friend"))
        # The stranger is told no, and the guarded node never has a session with it.
        with pytest.raises(ConnectError, match=r"refused by peer.*allow-list"):
            await s.connect(guarded.address)
        assert guarded.statistics().handshakes_failed == 1
        assert guarded.session(stranger.peer_id) is None
        # And a node with an allow-list refuses to dial someone not on it.
        with pytest.raises(ConnectError, match="allow-list"):
            await guarded.connect(s.address)


@pytest.mark.parametrize(
    ("theirs", "named"),
    [
        (("line-2", "ab" * 32), "site 'line-2'"),
        (("line-1", "cd" * 32), "site 'line-1', network cdcd"),
    ],
)
async def test_a_peer_of_another_site_or_network_gets_no_session(
    theirs: tuple[str, str], named: str
) -> None:
    """Two deployments on one LAN never mix: the handshake is refused both ways, with a
    reason naming both sites and networks."""
    site, network = theirs
    async with (
        open_node(Identity.generate(), config=FAST, site="line-1", network="ab" * 32) as ours,
        open_node(Identity.generate(), config=FAST, site=site, network=network) as other,
    ):
        # The initiator checks the responder's Hello (msg 2) itself.
        with pytest.raises(ConnectError, match=rf"another deployment: peer on {named}.*we are"):
            await ours.connect(other.address)
        with pytest.raises(ConnectError, match=r"another deployment: peer on site 'line-1'"):
            await other.connect(ours.address)
        assert ours.sessions() == [] and other.sessions() == []
        # Each side refused the handshake it started (the other's half-open one expires).
        assert ours.statistics().handshakes_failed == other.statistics().handshakes_failed == 1
