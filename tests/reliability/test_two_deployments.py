"""Two deployments on one LAN never mix (issue 25): real `mesh run`s, real mDNS.

Deployment 1 (site "line-1", its own ledger) and deployment 2 (site "line-2", another
ledger) each run a seller of the same feed and a buyer that wants it, all four on
127.0.0.1 and announcing on the same mDNS interface. Before the fix the buyers met,
connected to and funded channels with the other deployment's seller (funding its
ledger could not see). Now each buyer meets only its own seller: no session, no
channel and no satoshi locked across the two, and both count the other's
announcements as foreign. A third seller on deployment 1's site but deployment 2's
ledger (same site, another network) is ignored too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.discovery.agents import FEED, WANT, RunningAgent, sessions
from tests.reliability.procs import new_ledger


def foreign_seen(status: dict[str, Any]) -> int:
    return int(status["discovery"]["ignored_foreign"])


def test_two_sites_on_one_lan_never_meet(tmp_path: Path) -> None:
    ledgers = [new_ledger(tmp_path / f"ledger{i}.db") for i in (1, 2)]
    agents: list[RunningAgent] = []

    def start(name: str, site: str, ledger: Path, body: str, funds: int = 0) -> RunningAgent:
        agent = RunningAgent(tmp_path, ledger, name, "127.0.0.1", "tcp://127.0.0.1:0", body,
                             funds=funds, site=site)  # fmt: skip
        agents.append(agent)
        return agent

    try:
        seller1 = start("seller1", "line-1", ledgers[0], FEED)
        buyer1 = start("buyer1", "line-1", ledgers[0], WANT, funds=5_000_000)
        seller2 = start("seller2", "line-2", ledgers[1], FEED)
        buyer2 = start("buyer2", "line-2", ledgers[1], WANT, funds=5_000_000)
        stranger = start("stranger", "line-1", ledgers[1], FEED)  # same site, other network
        for buyer, seller in ((buyer1, seller1), (buyer2, seller2)):
            buyer.wait(lambda s, p=seller.peer_id: p in sessions(s), 30, "its own seller")
            buyer.wait(lambda s: s["wants"][0]["delivered"] >= 20, 30, "readings bought")
        for agent in agents:  # every announcement of the others has been heard by now
            agent.wait(lambda s: foreign_seen(s) >= 1, 15, "a foreign announcement")
        statuses = {agent.data.name: agent.status() for agent in agents}
    finally:
        for agent in agents:
            agent.stop()
    mine = {"buyer1": seller1.peer_id, "buyer2": seller2.peer_id}
    foreign = {
        "buyer1": {seller2.peer_id, buyer2.peer_id, stranger.peer_id},
        "buyer2": {seller1.peer_id, buyer1.peer_id, stranger.peer_id},
    }
    for name in ("buyer1", "buyer2"):
        status = statuses[name]
        assert status is not None
        peers = {p["peer_id"] for p in status["peers"]}
        assert not (peers | sessions(status)) & foreign[name], (name, status["peers"])
        assert {c["peer"] for c in status["channels"]} == {mine[name]}, status["channels"]
        assert status["wallet"]["reserved"] == 0
        print(f"\n{name}: ignored {foreign_seen(status)} foreign announcement(s)")
    network = {name: s["network"] for name, s in statuses.items() if s is not None}
    assert network["buyer1"] == network["seller1"] != network["buyer2"] == network["seller2"]
    assert network["stranger"] == network["buyer2"]
