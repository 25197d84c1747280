"""A cheating seller on the LAN: a real buyer leaves it for an honest one (issue 34).

Three real `mesh run` processes on loopback: a cheap seller whose provider cheats
(`cheating_seller`: unsigned readings, one reading replayed, or silence), an honest seller
of the same feed at twice the price, and a buyer that wants 60 readings at up to that
price and knows both as static peers. The buyer orders from the cheaper one first,
catches the cheat, pays it nothing beyond its prepay window, sets it aside and buys the
rest from the honest seller. Before the fix the buyer paid the cheat for every frame
(or waited on the silent one for good).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mesh.identity import Identity
from tests.discovery.agents import FEED, RunningAgent, sessions
from tests.reliability.procs import free_port, new_ledger

PREPAY = 2  # readings (tests.discovery.agents.WANT)
WANT = """
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.05
max_price = 2
units = 60
budget = 1000
prepay = 2
"""


def cheat(agent: RunningAgent, how: str) -> None:
    """Run `agent` again as a cheating seller (same data dir, profile and mailbox)."""
    agent.proc.kill()
    agent.proc.wait()
    agent.start(("tests.reliability.cheating_seller", how, "--"))


def channel_total(status: dict[str, Any], peer: str) -> int:
    return sum(c["total"] for c in status["channels"] if c["peer"] == peer)


@pytest.mark.parametrize("how", ["unsigned", "replay", "silent"])
def test_a_buyer_leaves_a_cheating_seller_for_an_honest_one(tmp_path: Path, how: str) -> None:
    ledger = new_ledger(tmp_path / "ledger.db")
    ports = free_port(), free_port()
    mailboxes = [f"tcp://127.0.0.1:{port}" for port in ports]
    cheap = RunningAgent(tmp_path, ledger, "cheap", "127.0.0.1", mailboxes[0], FEED)
    cheat(cheap, how)
    honest_id = Identity.generate()
    statics = [f"{cheap.peer_id}@{mailboxes[0]}", f"{honest_id.peer_id}@{mailboxes[1]}"]
    buyer = RunningAgent(tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", WANT,
                         funds=5_000_000, static_peers=statics)  # fmt: skip
    agents = [buyer, cheap]
    try:
        # Only the cheat is up: the buyer orders from it, catches it, sets it aside ...
        buyer.wait(lambda s: cheap.peer_id in sessions(s), 30, "a session with the cheat")
        caught = rf"seller {cheap.peer_id[:16]} set aside"
        buyer.wait(lambda s: bool(buyer.log_lines(caught)), 30, "the cheat set aside")
        # ... and buys everything from the honest seller (twice the price) once it is up.
        dearer = FEED.replace("price = 1", "price = 2")
        honest = RunningAgent(tmp_path, ledger, "honest", "127.0.0.1", mailboxes[1], dearer,
                              identity=honest_id)  # fmt: skip
        agents.append(honest)
        buyer.wait(lambda s: s["wants"][0]["state"] == "done", 60, "the want done")
        status = buyer.status()
        assert status is not None
    finally:
        for agent in agents:
            agent.stop()
    want = status["wants"][0]
    paid_cheat = channel_total(status, cheap.peer_id)
    paid_honest = channel_total(status, honest_id.peer_id)
    print(f"\ncheating seller ({how}): paid it {paid_cheat} sat, the honest one {paid_honest}"
          f" sat for {want['delivered']} readings")  # fmt: skip
    assert want["delivered"] == 60
    # The cheat got at most the prepay window (1 sat a reading) -- plus, for the replay,
    # the one genuine reading it did deliver.
    assert paid_cheat <= PREPAY * 1 + (1 if how == "replay" else 0), paid_cheat
    assert paid_honest == 2 * (60 - (1 if how == "replay" else 0))
