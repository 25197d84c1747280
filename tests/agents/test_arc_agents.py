"""Two real `mesh run --chain arc:test` agents, up to the network edge: the BSV network
is the local ARC simulator (`tests.chain.arc_sim`, a real LocalLedger behind ARC's and
WhatsOnChain's HTTP endpoints on 127.0.0.1).

The buyer's wallet finds its coins through WhatsOnChain, the funding, the anchors and
the close go to ARC in Extended Format, the fee rate comes from ARC's ``/v1/policy``
(50 sat/kB here, where ARC rounds up in floating point), and the close is mined. This is
everything `docs/TESTNET.md` does but the real network.

Before: no `--chain`; and on any chain whose policy asked more than 1 sat/kB the wallet
funded at 1 sat/kB (refused: not one channel opened) and every close and refund was
signed at a fixed 10 sat. Now the fees follow the policy (`mesh.channel.fees`).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mesh.chain.arc_ef import is_extended
from mesh.chain.base import TxState
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.channel.fees import CLOSE_TX_MAX_SIZE, REFUND_TX_MAX_SIZE
from mesh.channel.state import Role
from mesh.channel.store import ChannelStore
from mesh.identity import Identity, save_identity
from mesh.store import Store
from tests.chain.arc_sim import ArcSim, serve
from tests.discovery.agents import FEED, WANT_40, RunningAgent


def _fund(sim: ArcSim, data: Path, identity: Identity, satoshis: int) -> None:
    """Pay `satoshis` to the testnet address `mesh address --network test` gives, as a
    testnet faucet would."""
    key = data.parent / f"{data.name}.key"
    save_identity(identity, key)
    said = subprocess.run(
        [sys.executable, "-m", "agents.cli", "address", "--data-dir", str(data),
         "--key", str(key), "--network", "test"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    address = said.stdout.strip()
    assert address[0] in "mn", address  # testnet's form
    with sim.lock:
        sim.ledger.faucet(p2pkh_script(address), satoshis)
        sim.mine()


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
        (tmp_path / "funded").mkdir()
        _fund(sim, tmp_path / "funded", buyer_id, 100_000)
        seller = RunningAgent(tmp_path, unused, "seller", "127.0.0.1", "tcp://127.0.0.1:0", FEED)
        buyer = RunningAgent(
            tmp_path, unused, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", WANT_40,
            identity=buyer_id, data_dir=tmp_path / "funded",
        )  # fmt: skip
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
            terms = record.terms  # fees from ARC's policy, with headroom
            assert terms.close_fee >= 2 * sim.ledger.policy.required_fee(CLOSE_TX_MAX_SIZE)
            assert terms.refund_fee >= 2 * sim.ledger.policy.required_fee(REFUND_TX_MAX_SIZE)
            raw = sim.ledger.raw_tx(record.close_txid)
            assert raw is not None
            paid = sum(int(o.satoshis) for o in parse_exact(raw).outputs)
            assert terms.capacity - paid == terms.close_fee  # the fee the terms fixed
        # Coins are looked up by testnet addresses (the wallet writes mainnet ones).
        lookups = [r for r in sim.woc_requests if r.startswith("/address/")]
        assert lookups and all(r[len("/address/")] in "mn" for r in lookups), lookups[:3]
        posts = sim.posts
        assert len(posts) >= 2 * len(channels)  # fundings and closes, anchors too
        assert all(p.extended and is_extended(p.raw) for p in posts), posts[:1]
