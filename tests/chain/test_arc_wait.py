"""ArcChain over time, against the local ARC simulator: retries of transient failures,
lock times ARC does not check, and `wait_mined` (stages, orphans, stale blocks,
double spends, timeouts)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from bsv.http_client import SyncHttpClient
from bsv.keys import PrivateKey
from bsv.transaction import Transaction

from mesh.chain.arc import ArcChain, ArcSettings
from mesh.chain.arc_ef import from_extended, to_extended
from mesh.chain.arc_status import PollSchedule
from mesh.chain.base import TxState
from mesh.chain.errors import ChainUnavailable, TxRejected
from mesh.chain.rules import Prevout
from mesh.chain.tx import tx_id
from tests.chain.arc_sim import ArcSim, serve
from tests.chain.helpers import mint, p2pkh, pay, spend

FAST = PollSchedule(first=0.01, cap=0.05, block_wait=0.02, retries=2)


def _arc(sim: ArcSim, *, timeout: float = 5) -> ArcChain:
    settings = ArcSettings(sim.url, network="test", woc_url=f"{sim.url}/woc", timeout=timeout)
    return ArcChain(settings, schedule=FAST)


async def _miner(sim: ArcSim, interval: float = 0.05) -> None:
    while True:
        await trio.sleep(interval)
        await trio.to_thread.run_sync(sim.mine)


async def test_transient_failures_are_retried_then_succeed(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        tx, _ = pay(mint(sim.ledger, 20_000))
        sim.fail_next = [503, 500, "garbage"]  # two 5xx, then a 200 that is not JSON
        with pytest.raises(ChainUnavailable, match="3 tries"):
            await arc.broadcast(tx)  # retries=2: three tries, all transient
        assert [p.status for p in sim.posts] == [503, 500, 200]
        assert sim.ledger.status(tx_id(tx)).state is TxState.UNKNOWN
        sim.fail_next = [502, 409]
        assert await arc.broadcast(tx) == tx_id(tx)
        assert [p.status for p in sim.posts[3:]] == [502, 409, 200]
        assert sim.ledger.status(tx_id(tx)).state is TxState.PENDING


async def test_a_timeout_is_retried(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db", hang=1.5) as sim:
        arc = _arc(sim, timeout=0.5)
        tx, _ = pay(mint(sim.ledger, 20_000))
        sim.fail_next = ["timeout"]
        started = time.monotonic()
        assert await arc.broadcast(tx) == tx_id(tx)
        assert time.monotonic() - started >= 0.5
        assert [p.status for p in sim.posts] == [None, 200]  # the first got no answer


async def test_non_final_is_refused_before_sending(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        key = PrivateKey()
        coins = [mint(sim.ledger, 20_000, key) for _ in range(3)]
        sim.mine()  # height 1
        height_locked = spend([coins[0]], [(p2pkh(key), 19_000)], locktime=3, sequence=0)
        time_locked = spend(
            [coins[1]], [(p2pkh(key), 19_000)], locktime=int(time.time()) + 3_600, sequence=0
        )
        for tx in (height_locked, time_locked):
            with pytest.raises(TxRejected) as caught:
                await arc.broadcast(tx)
            assert caught.value.rule == "non-final" and caught.value.txid == tx_id(tx)
            assert "ARC does not check lock times" in caught.value.detail
        assert sim.posts == []
        # every nSequence final: the lock does not apply
        unlocked = spend([coins[2]], [(p2pkh(key), 19_000)], locktime=10**6)
        assert await arc.broadcast(unlocked) == tx_id(unlocked)

        # ARC itself takes the non-final transaction (200) but it is not mined until final
        ef = to_extended(height_locked.serialize(), [Prevout(20_000, p2pkh(key))])
        answer = SyncHttpClient().post(f"{sim.url}/v1/tx", data={"rawTx": ef.hex()})
        assert (answer.status_code, answer.json()["data"]["txStatus"]) == (
            200,
            "ACCEPTED_BY_NETWORK",
        )
        sim.mine()  # height 2: the next block is 3, not above the lock
        assert sim.ledger.status(tx_id(height_locked)).state is TxState.UNKNOWN
        with pytest.raises(TxRejected):
            await arc.broadcast(height_locked)
        sim.mine()  # height 3: final for block 4, so it enters the mempool
        assert await arc.broadcast(height_locked) == tx_id(height_locked)
        sim.mine()
        assert sim.ledger.status(tx_id(height_locked)).block_height == 4


async def test_statuses_progress_and_wait_mined_returns_once_mined(tmp_path: Path) -> None:
    now = [0.0]
    with serve(tmp_path / "arc.db", stage_delay=10, clock=lambda: now[0]) as sim:
        arc = _arc(sim)
        tx, _ = pay(mint(sim.ledger, 20_000))
        await arc.broadcast(tx)
        seen = []
        for _ in range(4):
            seen.append((await arc.status(tx_id(tx))).detail)
            now[0] += 10
        assert seen == ["RECEIVED", "STORED", "SEEN_ON_NETWORK", "SEEN_ON_NETWORK"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_miner, sim)
            mined = await arc.wait_mined(tx, timeout=5)
            nursery.cancel_scope.cancel()
        ledger = sim.ledger.status(tx_id(tx))
        assert (mined.state, mined.block_height, mined.block_hash) == (
            TxState.MINED,
            ledger.block_height,
            ledger.block_hash,
        )


async def test_wait_mined_submits_what_arc_lost_or_saw_in_a_stale_block(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        tx, _ = pay(mint(sim.ledger, 20_000))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_miner, sim)
            mined = await arc.wait_mined(tx, timeout=5)  # never broadcast: ARC answers 404
            nursery.cancel_scope.cancel()
        assert mined.state is TxState.MINED and len(sim.posts) == 1
        sim.stale.add(tx_id(tx))
        assert (await arc.status(tx_id(tx))).detail == "MINED_IN_STALE_BLOCK"
        assert (await arc.wait_mined(tx, timeout=5)).block_height == mined.block_height
        assert len(sim.posts) == 2 and not sim.stale  # submitted again


async def test_wait_mined_resubmits_an_orphans_parents(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        key = PrivateKey()
        parent, coin = pay(mint(sim.ledger, 20_000), key=key)  # never sent to ARC
        child, _ = pay(coin)
        assert await arc.broadcast(child) == tx_id(child)  # ARC takes it as an orphan
        assert (await arc.status(tx_id(child))).detail == "SEEN_IN_ORPHAN_MEMPOOL"
        sim.mine()
        assert sim.ledger.status(tx_id(child)).state is TxState.UNKNOWN
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_miner, sim)
            mined = await arc.wait_mined(child, timeout=5)
            nursery.cancel_scope.cancel()
        assert mined.state is TxState.MINED
        assert sim.ledger.status(tx_id(parent)).state is TxState.MINED
        sent = [from_extended(p.raw)[0] for p in sim.posts]
        assert sent[0] == child.serialize() and parent.serialize() in sent[1:]  # parent resent


async def test_wait_mined_raises_a_double_spend(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        coin = mint(sim.ledger, 20_000)
        first, _ = pay(coin)
        second, _ = pay(coin, fee=700)
        await arc.broadcast(first)
        with pytest.raises(TxRejected) as caught:
            await arc.wait_mined(second, timeout=5)
        assert caught.value.rule == "double-spend" and tx_id(first) in caught.value.detail


async def test_wait_mined_times_out(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        tx, _ = pay(mint(sim.ledger, 20_000))
        await arc.broadcast(tx)
        sim.fail_next = [503] * 3  # transient trouble while polling is waited out
        with pytest.raises(trio.TooSlowError):
            await arc.wait_mined(tx, timeout=0.3)  # nobody mines
        assert sim.requests[-1].method == "GET"


async def test_an_orphan_whose_parent_nobody_has_waits_until_the_timeout(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim)
        key = PrivateKey()
        parent, coin = pay(mint(sim.ledger, 20_000), key=key)
        child, _ = pay(coin)
        bare = Transaction.from_hex(child.serialize())  # channel style: no parent linked
        bare.inputs[0].satoshis = coin.satoshis
        bare.inputs[0].locking_script = parent.outputs[0].locking_script
        assert await arc.broadcast(bare) == tx_id(child)
        with pytest.raises(trio.TooSlowError):
            await arc.wait_mined(bare, timeout=0.3)
        assert f"/tx/{tx_id(parent)}/hex" in sim.woc_requests  # it looked, found nothing
        assert all(from_extended(p.raw)[0] == child.serialize() for p in sim.posts)
