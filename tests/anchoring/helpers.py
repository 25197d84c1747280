"""Builders for the anchoring tests: a ledger file, a funded agent store, a running Anchorer."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.proof import Proof, parse_proof
from mesh.anchoring.service import AnchorConfig, Anchorer
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.health import StorageHealth
from mesh.identity import Identity
from mesh.store import Store

PRODUCER = Identity.from_secret(bytes(range(1, 33)))
BUYER = Identity.from_secret(bytes(range(2, 34)))
T0 = 1_700_000_000.0
T = TypeVar("T")


@dataclass
class FakeClock:
    """A wall clock the test moves by hand."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


def create_ledger(path: Path) -> Path:
    """A fresh ledger file at `path`."""
    LocalLedger.create(path).close()
    return path


def fund(ledger_path: Path, wallet: Wallet, amounts: tuple[int, ...]) -> None:
    """Faucet `amounts` to a new wallet address and tell the wallet."""
    address = wallet.new_address()
    with LocalLedger.open(ledger_path) as ledger:
        for amount in amounts:
            ledger.faucet(p2pkh_script(address), amount)
        wallet.add_utxos(ledger.utxos(p2pkh_script(address)))


def open_store(data_dir: Path) -> Store:
    """The agent store of `data_dir`, as the runtime opens it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return Store(data_dir / "agent.db", check_same_thread=False, synchronous="NORMAL")


@dataclass
class Running:
    """A running Anchorer with what it runs on."""

    anchorer: Anchorer
    chain: LocalChain
    store: Store
    wallet: Wallet
    nursery: trio.Nursery
    limiter: trio.CapacityLimiter
    ledger_path: Path

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run store/wallet work in a thread behind the anchorer's limiter."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.limiter)

    async def fund(self, *amounts: int) -> None:
        """Faucet coins to the running wallet."""
        await self.db(fund, self.ledger_path, self.wallet, amounts)

    def headers(self) -> HeaderChain:
        """The ledger's header chain as a verifier would trust it."""
        return HeaderChain.from_ledger(self.chain.ledger)


@asynccontextmanager
async def running_anchorer(
    data_dir: Path,
    ledger_path: Path,
    *,
    identity: Identity = PRODUCER,
    config: AnchorConfig | None = None,
    clock: FakeClock | None = None,
    coins: tuple[int, ...] = (200_000,),
    health: StorageHealth | None = None,
) -> AsyncIterator[Running]:
    """Open the store, wallet and chain, fund the wallet, run an Anchorer; clean up after."""
    store = open_store(data_dir)
    wallet = Wallet(store, identity)
    if coins:
        fund(ledger_path, wallet, coins)
    chain = LocalChain.open(ledger_path)
    limiter = trio.CapacityLimiter(1)
    anchorer = Anchorer(
        identity,
        store,
        wallet,
        chain,
        config=config,
        clock=clock or FakeClock(),
        db_limiter=limiter,
        health=health,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(anchorer.run)
            yield Running(anchorer, chain, store, wallet, nursery, limiter, ledger_path)
            nursery.cancel_scope.cancel()
    finally:
        chain.close()
        store.close()


def edited(proof: Proof, change: Any) -> Proof:
    """A copy of `proof` whose JSON document was changed in place by `change(document)`."""
    document = copy.deepcopy(proof.to_document())
    change(document)
    return parse_proof(document)


def flip(hex_text: str, index: int, mask: int) -> str:
    """`hex_text` with byte `index` xor-ed by `mask`."""
    raw = bytearray(bytes.fromhex(hex_text))
    raw[index] ^= mask
    return raw.hex()


ROOT = Path(__file__).resolve().parents[2]


def mesh(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mesh ARGS` as a process from the repository root; never a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result
