"""LocalLedger behaviour beyond the rules: faucet, blocks, export, status, the Trio face."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from bsv.keys import PrivateKey

from mesh.chain.base import TxState
from mesh.chain.errors import LedgerError, TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.merkle import display, internal, merkle_root
from mesh.chain.tx import tx_id
from tests.chain.helpers import T0, FakeClock, mint, p2pkh, pay


def test_create_open_and_refusals(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "l.db"
    with pytest.raises(LedgerError, match="no ledger"):
        LocalLedger.open(path)
    LocalLedger.create(path, clock=clock).close()
    with pytest.raises(LedgerError, match="already a ledger"):
        LocalLedger.create(path)
    with LocalLedger.open(path) as ledger:
        assert ledger.height() == 0
        genesis = ledger.block(0)
        assert genesis is not None and genesis.tx_count == 1 and genesis.time == T0
    other = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(LedgerError, match="not an m2mesh ledger"):
        LocalLedger.open(other)


def test_faucet_utxos_and_mining(ledger: LocalLedger, clock: FakeClock) -> None:
    key = PrivateKey()
    first = mint(ledger, 10_000, key)
    second = mint(ledger, 5_000, key)
    utxos = ledger.utxos(p2pkh(key))
    assert [(u.satoshis, u.block_height) for u in utxos] == [(10_000, None), (5_000, None)]
    tx, _ = pay(first)
    ledger.submit(tx.serialize())
    assert [u.satoshis for u in ledger.utxos(p2pkh(key))] == [5_000]
    clock.now = T0 + 600
    (block,) = ledger.mine()
    assert block.height == 1 and block.tx_count == 4 and block.time == T0 + 600
    assert ledger.status(tx_id(tx)).state is TxState.MINED
    assert ledger.status(tx_id(tx)).block_hash == block.hash
    assert ledger.status("00" * 32).state is TxState.UNKNOWN
    assert ledger.utxos(p2pkh(key))[0].block_height == 1
    blocks = ledger.mine(3)
    assert [b.tx_count for b in blocks] == [1, 1, 1]  # coinbase only
    assert ledger.merkle_proof(tx_id(second.tx)) is not None
    assert ledger.merkle_proof(tx_id(tx)) is not None
    assert ledger.merkle_proof("ab" * 32) is None
    with pytest.raises(LedgerError):
        ledger.faucet(p2pkh(key), 0)
    with pytest.raises(LedgerError):
        ledger.mine(0)


def test_block_times_never_go_backwards(ledger: LocalLedger, clock: FakeClock) -> None:
    clock.now = T0 - 10_000  # a clock behind the chain: blocks still pass the MTP rule
    ledger.mine(15)
    times = [h.time for h in ledger.headers()]
    for height in range(1, len(times)):
        previous = sorted(times[max(0, height - 11) : height])
        assert times[height] > previous[(len(previous) - 1) // 2]


def test_export_shape_and_roots(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    tx, out = pay(coin)
    ledger.submit(tx.serialize())
    ledger.mine()
    pending, _ = pay(out)
    ledger.submit(pending.serialize())
    document = ledger.export()
    assert set(document) == {"height", "blocks", "transactions"}
    assert document["height"] == 1
    for block in document["blocks"]:
        assert set(block) == {"height", "hash", "merkle_root", "txids"}
        assert display(merkle_root([internal(t) for t in block["txids"]])) == block["merkle_root"]
    by_id = {t["txid"]: t for t in document["transactions"]}
    assert all(set(t) == {"txid", "hex", "block_height"} for t in by_id.values())
    assert by_id[tx_id(tx)]["block_height"] == 1
    assert by_id[tx_id(pending)]["block_height"] is None
    assert by_id[tx_id(pending)]["hex"] == pending.serialize().hex()
    # coinbases (2) + mint + two spends: every transaction in the ledger
    assert len(by_id) == 5
    assert ledger.summary().mempool == 1 and ledger.balance().balanced


def test_another_connection_sees_everything(tmp_path: Path, ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    with LocalLedger.open(ledger.path) as second:
        tx, _ = pay(coin)
        second.submit(tx.serialize())
        second.mine()
    assert ledger.status(tx_id(tx)).state is TxState.MINED
    proof = ledger.merkle_proof(tx_id(tx))
    assert proof is not None and proof.block_height == 1


async def test_local_chain_is_a_chain(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "l.db").close()
    chain = LocalChain.open(tmp_path / "l.db")
    key = PrivateKey()
    coin = mint(chain.ledger, 10_000, key)
    tx, _ = pay(coin, key=key)
    assert await chain.broadcast(tx) == tx_id(tx)
    assert (await chain.status(tx_id(tx))).state is TxState.PENDING
    assert [u.satoshis for u in await chain.utxos(key.address())] == [9_500]
    with pytest.raises(TxRejected) as caught:
        await chain.broadcast_raw(tx.serialize() + b"\x00")
    assert caught.value.rule == "parse"
    (block,) = await chain.mine()
    assert await chain.height() == 1
    assert await chain.is_valid_root(block.merkle_root, 1)
    assert not await chain.is_valid_root(block.merkle_root, 0)
    proof = await chain.merkle_proof(tx_id(tx))
    assert proof is not None and await proof.verify(tx_id(tx), chain.tracker())
    chain.close()


async def test_run_miner_mines_on_its_interval(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    LocalLedger.create(tmp_path / "l.db").close()
    chain = LocalChain.open(tmp_path / "l.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(chain.run_miner, 10.0)
        mock_clock.jump(9.9)
        await trio.testing.wait_all_tasks_blocked()
        assert await chain.height() == 0
        for expected in (1, 2, 3):
            mock_clock.jump(10)
            for _ in range(1000):  # the miner's thread finishes in real time
                if await chain.height() == expected:
                    break
                await trio.testing.wait_all_tasks_blocked()
            assert await chain.height() == expected
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError):
        await chain.run_miner(0)
    chain.close()
