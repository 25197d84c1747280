"""The agent's upkeep tasks: the wallet kept in sync with the chain, and retention
(what is settled leaves the stores). Each runs in the agent's nursery; a failure to
write is a storage fault like any other (`mesh.health`). (docs/ARCHITECTURE.md §2, §7)"""

from __future__ import annotations

import logging
import time

import trio

from agents.profile import RetentionSpec
from mesh.anchoring.cold import ColdArchiveError
from mesh.anchoring.retention import Retention
from mesh.chain.base import AgentChain
from mesh.chain.errors import ChainError
from mesh.chain.wallet import Wallet
from mesh.health import STORAGE_ERRORS, StorageHealth
from mesh.store import Store

log = logging.getLogger("agents.runtime")
WALLET_SYNC_SECONDS = 5.0


async def sync_wallet(wallet: Wallet, chain: AgentChain, limiter: trio.CapacityLimiter) -> None:
    """Add coins the wallet does not know yet, asking the chain only about its watch
    set (`Wallet.watch_addresses`): a pass costs the same after a year of anchors."""
    wallet.policy = await chain.policy()  # funds at the network's rate of the moment
    addresses = await trio.to_thread.run_sync(wallet.watch_addresses, limiter=limiter)
    if not addresses:  # no receive key yet: one to be funded at
        addresses = [await trio.to_thread.run_sync(wallet.new_address, limiter=limiter)]
    for address in addresses:
        coins = await chain.utxos(address)
        if coins:
            await trio.to_thread.run_sync(wallet.add_utxos, coins, limiter=limiter)


async def keep_wallet_synced(
    wallet: Wallet, chain: AgentChain, limiter: trio.CapacityLimiter, health: StorageHealth
) -> None:
    """Sync the wallet every `WALLET_SYNC_SECONDS` (its history is pruned by
    `keep_retention`)."""
    while True:
        await trio.sleep(WALLET_SYNC_SECONDS)
        try:
            await sync_wallet(wallet, chain, limiter)
        except STORAGE_ERRORS as exc:  # the coins are added at a later pass
            health.fault("wallet", exc)
        except ChainError as exc:  # the network is away (or refuses our key): next pass
            log.warning("wallet sync: %s", exc)
        else:
            health.ok("wallet")


async def keep_retention(
    spec: RetentionSpec,
    store: Store,
    wallet: Wallet,
    limiter: trio.CapacityLimiter,
    health: StorageHealth,
) -> None:
    """Every ``[retention] interval``: anchored records past their days (or above
    ``online_mb``) go to the archive, spent wallet rows past ``wallet_days`` go.
    The first pass waits one interval, while the anchorer and the channels finish
    what a stop left."""
    retention = Retention(store, spec.records)
    while True:
        await trio.sleep(spec.interval)
        try:
            moved = 0
            while True:  # a pass moves at most PASS_BATCHES batches: catch up
                done = await trio.to_thread.run_sync(
                    retention.run_once, time.time(), limiter=limiter
                )
                moved += done.records
                if not done.moved:
                    break
            before = time.time() - spec.wallet_days * 86_400
            pruned = await trio.to_thread.run_sync(wallet.prune, before, limiter=limiter)
        except STORAGE_ERRORS as exc:
            health.fault("retention", exc)
            continue
        except ColdArchiveError as exc:  # a batch that does not hold together: stays
            log.warning("retention: %s", exc)
            continue
        health.ok("retention")
        if moved or pruned:
            log.info(
                "retention: %d record(s) to %s, %d wallet row(s) pruned; store %.1f MB",
                moved,
                "the archive" if spec.records.archive else "nowhere (archive = false)",
                pruned,
                done.store_bytes / 1e6,
            )


__all__ = ["keep_retention", "keep_wallet_synced", "sync_wallet"]
