"""The wallet's sync survives a network that is away, and follows its fee policy.

On ARC (`--chain arc:test`) the wallet finds its coins through WhatsOnChain: before, a
sync that could not reach it raised out of the agent's nursery and stopped the agent.
Now a pass that fails is logged and the next one finds the coins; each pass also takes
the network's fee policy of the moment for the wallet's next funding."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agents import upkeep
from mesh.chain.base import Utxo
from mesh.chain.errors import ChainUnavailable
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.rules import Policy
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.health import StorageHealth
from mesh.identity import Identity
from mesh.store import Store


class Flaky(LocalChain):
    """The real local chain, away for its first `away` coin lookups, with a policy."""

    def __init__(self, ledger: LocalLedger, away: int) -> None:
        super().__init__(ledger)
        self.away = away
        self.now = Policy()

    async def utxos(self, address: str) -> list[Utxo]:
        if self.away:
            self.away -= 1
            raise ChainUnavailable("WhatsOnChain: timed out")
        return await super().utxos(address)

    async def policy(self) -> Policy:
        return self.now


async def test_a_sync_that_cannot_reach_the_chain_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "WALLET_SYNC_SECONDS", 0.05)
    ledger = LocalLedger.create(tmp_path / "ledger.db", check_same_thread=False)
    chain = Flaky(ledger, away=2)
    store = Store(tmp_path / "agent.db", check_same_thread=False)
    wallet = Wallet(store, Identity.generate())
    ledger.faucet(p2pkh_script(wallet.new_address()), 5_000)
    chain.now = Policy(fee_rate=50)
    health = StorageHealth()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            upkeep.keep_wallet_synced, wallet, chain, trio.CapacityLimiter(1), health
        )
        with trio.fail_after(10):  # two passes fail, the third finds the coins
            while wallet.balance().available == 0:
                await trio.sleep(0.02)
        assert wallet.balance().available == 5_000 and chain.away == 0
        assert wallet.policy.fee_rate == 50
        assert health.healthy
        nursery.cancel_scope.cancel()
    store.close()
    ledger.close()
