"""Discovery wired to sessions: real `mesh run` agents find each other and connect."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from zeroconf import ServiceInfo, Zeroconf

from mesh.chain.ledger import LocalLedger
from mesh.discovery.records import SERVICE_TYPE, announce, instance_name
from mesh.identity import Identity
from mesh.net.node import open_node
from tests.discovery.agents import FEED, WANT, RunningAgent, peers, sessions


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    LocalLedger.create(path).close()
    return path


def test_two_agents_on_loopback_discover_and_hold_a_session_within_2_s(
    tmp_path: Path, ledger: Path
) -> None:
    # Sessions on demand: b wants what a sells, so b dials a as soon as it sees it.
    a = RunningAgent(tmp_path, ledger, "a", "127.0.0.1", "tcp://127.0.0.1:0", FEED)
    b = RunningAgent(tmp_path, ledger, "b", "127.0.0.1", "tcp://127.0.0.1:0", WANT)
    try:
        up = max(a.wait(bool, 30, "control socket"), b.wait(bool, 30, "control socket"))
        met_a = a.wait(lambda s: b.peer_id in sessions(s), 10, "session with b")
        met_b = b.wait(lambda s: a.peer_id in sessions(s), 10, "session with a")
        took = max(met_a, met_b) - up
        from_spawn = max(met_a, met_b) - b.spawned
        print(f"\nMEASURE session on loopback: {took:.2f} s after both answer status, "
              f"{from_spawn:.2f} s after the second process was spawned")  # fmt: skip
        assert took < 2.0
        # The handshake confirmed the announced id in the dialling side's table.
        a.wait(lambda s: any(p["confirmed"] for p in s["peers"]) or b.peer_id in peers(s), 5,
               "peer entry")  # fmt: skip
    finally:
        a.stop()
        b.stop()


def forged_info(forger: Identity, victim: Identity, mailbox: str) -> ServiceInfo:
    """A TXT record claiming `victim`'s id, signed (necessarily) by `forger`."""
    record = announce(forger, mailbox=mailbox, name="victim", services="vibration=1/reading")
    properties = dict(item.split(b"=", 1) for item in record.txt_strings())
    properties[b"id"] = victim.peer_id.encode()
    return ServiceInfo(
        SERVICE_TYPE,
        instance_name(victim.public_key),
        port=int(mailbox.rsplit(":", 1)[1]),
        properties=properties,
        addresses=[bytes([127, 0, 0, 1])],
        server="forger.local.",
    )


def test_a_forged_announcement_never_becomes_a_session(tmp_path: Path, ledger: Path) -> None:
    """A forger announces a victim's peer id at its own (real, reachable) mailbox. The
    signature cannot be made, so discovery drops the record; no session ever forms."""
    honest = RunningAgent(tmp_path, ledger, "honest", "127.0.0.1", "tcp://127.0.0.1:0", "")
    victim = Identity.generate()
    try:
        honest.wait(bool, 30, "control socket")

        async def forge() -> None:
            async with open_node(Identity.generate()) as node:
                info = forged_info(Identity.generate(), victim, node.address)
                zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=["127.0.0.1"]))
                try:
                    await trio.to_thread.run_sync(zc.register_service, info)
                    await trio.sleep(3)  # the honest agent browses and resolves meanwhile
                    assert node.sessions() == []  # nobody dialled the forger's mailbox
                finally:
                    await trio.to_thread.run_sync(zc.close)

        trio.run(forge)
        status = honest.status()
        assert status is not None
        assert victim.peer_id not in peers(status)
        assert victim.peer_id not in sessions(status)
    finally:
        honest.stop()
