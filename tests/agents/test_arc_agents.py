"""Two real `mesh run --chain arc:test` agents, up to the network edge: the BSV network
is the local ARC simulator (`tests.chain.arc_sim`, a real LocalLedger behind ARC's and
WhatsOnChain's HTTP endpoints on 127.0.0.1).

The buyer's wallet finds its coins through WhatsOnChain, the funding, the anchors and
the close go to ARC in Extended Format, the fee rate comes from ARC's ``/v1/policy``
(50 sat/kB here, where ARC rounds up in floating point), and the close is mined. This is
everything `docs/TESTNET.md` does but the real network.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mesh.chain.arc_ef import is_extended
from mesh.chain.base import TxState
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.channel.state import Role
from mesh.channel.store import ChannelStore
from mesh.identity import Identity
from mesh.store import Store
from tests.chain.arc_sim import serve
from tests.discovery.agents import FEED, RunningAgent

WANT = """
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.05
max_price = 2
units = 40
budget = 1000
prepay = 2
"""


def _fund(sim: object, data: Path, identity: Identity, satoshis: int) -> None:
    """Pay `satoshis` to a new address of the agent at `data`, as a faucet would."""
    with Store(data / "agent.db") as store:
        address = Wallet(store, identity).new_address()
    with sim.lock:  # type: ignore[attr-defined]
        sim.ledger.faucet(p2pkh_script(address), satoshis)  # type: ignore[attr-defined]
        sim.mine()  # type: ignore[attr-defined]


def test_two_agents_buy_and_close_through_arc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(tmp_path / "network.db", fee_rate=50) as sim:
        monkeypatch.setenv("M2MESH_CHAIN", "arc:test")
        monkeypatch.setenv("M2MESH_ARC_URL", sim.url)
        monkeypatch.setenv("M2MESH_WOC_URL", sim.url + "/woc")
        done = threading.Event()

        def miner() -> None:
            while not done.wait(1.0):
                sim.mine()

        thread = threading.Thread(target=miner, daemon=True)
        thread.start()
        unused = tmp_path / "no-ledger.db"  # --chain arc:test reads no ledger file
        buyer_id = Identity.generate()
        (tmp_path / "buyer").mkdir()
        _fund(sim, tmp_path / "buyer", buyer_id, 100_000)
        seller = RunningAgent(tmp_path, unused, "seller", "127.0.0.1", "tcp://127.0.0.1:0", FEED)
        buyer = RunningAgent(
            tmp_path, unused, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", WANT, identity=buyer_id
        )
        try:
            buyer.wait(lambda s: s["wants"][0]["state"] == "done", 90, "the want done")
        finally:
            buyer.stop()
            seller.stop()  # the payee closes its channels as it stops
            done.set()
            thread.join()
        assert not unused.exists()
        with Store(seller.data / "agent.db") as store:
            channels = [
                item.record
                for item in ChannelStore(store).load(include_final=True)
                if item.record.role is Role.PAYEE
            ]
        assert channels and sum(r.total for r in channels) == 40  # 40 readings at 1 sat
        sim.mine()
        for record in channels:
            assert record.close_txid, record
            assert sim.ledger.status(record.close_txid).state is TxState.MINED
            assert record.terms.close_fee >= 2 * sim.ledger.policy.required_fee(268)
        # Coins are looked up by testnet addresses (the wallet writes mainnet ones).
        lookups = [r for r in sim.woc_requests if r.startswith("/address/")]
        assert lookups and all(r[len("/address/")] in "mn" for r in lookups), lookups[:3]
        posts = sim.posts
        assert len(posts) >= 2 * len(channels)  # fundings and closes, anchors too
        assert all(p.extended and is_extended(p.raw) for p in posts), posts[:1]
