"""A minimal agent for channel tests: identity, store, wallet, node, manager.

Used in-process by the manager tests and as a real process by channel_proc.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from agents.channels import ChannelConfig, ChannelManager, PaidCallback
from mesh.chain.base import Utxo
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.channel.store import ChannelStore
from mesh.identity import Identity, load_identity, save_identity
from mesh.net.node import Node, NodeConfig, open_node
from mesh.store import DEFAULT_BUSY_TIMEOUT, Store
from mesh.wire import Frame


@dataclass
class Agentlet:
    identity: Identity
    node: Node
    chain: LocalChain
    wallet: Wallet
    manager: ChannelManager
    db: trio.CapacityLimiter

    async def fund(self, ledger_path: Path, satoshis: int) -> None:
        """Mint test coins to a fresh wallet address."""

        def mint() -> None:
            address = self.wallet.new_address()
            script = p2pkh_script(address)
            with LocalLedger.open(ledger_path) as ledger:
                outpoint = ledger.faucet(script, satoshis)
            self.wallet.add_utxos([Utxo(outpoint.txid, outpoint.vout, satoshis, script)])

        await trio.to_thread.run_sync(mint, limiter=self.db)


def identity_at(path: Path) -> Identity:
    """Load the identity at `path`, creating it the first time."""
    if path.exists():
        return load_identity(path)
    identity = Identity.generate()
    save_identity(identity, path)
    return identity


@asynccontextmanager
async def agentlet(
    data_dir: Path,
    ledger_path: Path,
    *,
    listen: str = "tcp://127.0.0.1:0",
    config: ChannelConfig | None = None,
    on_paid: PaidCallback | None = None,
    node_config: NodeConfig | None = None,
    intercept: Callable[[str, Frame], Awaitable[bool]] | None = None,
    watch_sessions: bool = True,
    network: str = "",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> AsyncIterator[Agentlet]:
    """Run one agentlet: its node, its manager, and a frame dispatcher.

    `intercept(peer_id, frame)` sees every frame first and may consume it (returns
    True). With `watch_sessions` (the default, as in the runtime), the manager hears of
    every session that comes up (`peer_connected`: resends and acks again after a
    reconnect; a restarted payer pays nothing until the payee has acked).
    `busy_timeout` is how long the store waits for another writer's lock.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = identity_at(data_dir / "identity.key")
    store = Store(
        data_dir / "agent.db",
        check_same_thread=False,
        synchronous="NORMAL",
        busy_timeout=busy_timeout,
    )
    chain = LocalChain.open(ledger_path)
    db = trio.CapacityLimiter(1)
    node_config = node_config or NodeConfig(dead_after=60)
    channels: ChannelStore | None = None
    try:
        wallet = Wallet(store, identity)
        channels = ChannelStore(store)
        async with open_node(identity, listen, config=node_config, network=network) as node:
            manager = ChannelManager(identity, node, chain, wallet, channels, db, config, on_paid)
            events = node.watch_sessions()
            async with trio.open_nursery() as nursery:
                await nursery.start(manager.run)

                async def dispatch(peer_id: str, frame: Frame, last: bool) -> None:
                    if intercept is None or not await intercept(peer_id, frame):
                        await manager.handle(peer_id, frame, last)

                async def watch() -> None:
                    async for event in events:
                        if event.up:
                            await manager.peer_connected(event.peer.peer_id)

                nursery.start_soon(node.serve, dispatch)
                if watch_sessions:
                    nursery.start_soon(watch)
                yield Agentlet(identity, node, chain, wallet, manager, db)
                nursery.cancel_scope.cancel()
    finally:
        chain.close()
        if channels is not None:
            channels.close()
        store.close()
