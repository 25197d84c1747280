"""`Chain.output` on the local ledger: existence, amount, script and spentness of one output."""

from __future__ import annotations

from pathlib import Path

import pytest
from bsv.keys import PrivateKey

from mesh.chain.arc import GENESIS, ArcChain, ArcSettings
from mesh.chain.base import OutputState, OutputStatus
from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.tx import push, tx_id
from tests.chain.helpers import Coin, mint, p2pkh, pay, spend

UNKNOWN, UNSPENT, SPENT = OutputState.UNKNOWN, OutputState.UNSPENT, OutputState.SPENT


def test_unknown_txid_and_out_of_range_vouts(ledger: LocalLedger) -> None:
    missing = "ab" * 32
    assert ledger.output(missing, 0) == OutputStatus(missing, 0, UNKNOWN)
    coin = mint(ledger, 10_000)
    txid = tx_id(coin.tx)
    for vout in (1, 7, -1, 2**32, 2**80):  # the mint has one output; the rest cannot exist
        assert ledger.output(txid, vout) == OutputStatus(txid, vout, UNKNOWN)
    assert ledger.output(txid.upper(), 0).state is UNKNOWN  # txids are lowercase hex


def test_unspent_in_mempool_then_mined(ledger: LocalLedger) -> None:
    key = PrivateKey()
    coin = mint(ledger, 12_345, key)
    txid = tx_id(coin.tx)
    expected = OutputStatus(txid, 0, UNSPENT, 12_345, p2pkh(key))
    assert ledger.status(txid).block_height is None
    assert ledger.output(txid, 0) == expected
    ledger.mine()
    assert ledger.status(txid).block_height == 1
    assert ledger.output(txid, 0) == expected


def test_spent_by_a_mempool_tx_then_mined(ledger: LocalLedger) -> None:
    key = PrivateKey()
    coin = mint(ledger, 10_000, key)
    txid = tx_id(coin.tx)
    tx, change = pay(coin, fee=700)
    ledger.submit(tx.serialize())
    spent = OutputStatus(txid, 0, SPENT, 10_000, p2pkh(key), spent_by=tx_id(tx))
    assert ledger.output(txid, 0) == spent
    assert ledger.output(tx_id(tx), 0) == OutputStatus(
        tx_id(tx), 0, UNSPENT, 9_300, p2pkh(change.key)
    )
    # a losing double spend changes nothing
    with pytest.raises(TxRejected):
        ledger.submit(pay(coin, fee=900)[0].serialize())
    assert ledger.output(txid, 0) == spent
    ledger.mine()
    assert ledger.output(txid, 0) == spent
    assert ledger.output(tx_id(tx), 0).state is UNSPENT


def test_data_outputs_and_coinbases_are_unknown(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    data = b"\x00\x6a" + push(b"anchor")
    tx = spend([coin], [(p2pkh(coin.key), 9_000), (data, 0)])
    ledger.submit(tx.serialize())
    assert ledger.output(tx_id(tx), 0).state is UNSPENT
    assert ledger.output(tx_id(tx), 1) == OutputStatus(tx_id(tx), 1, UNKNOWN)
    coinbase = ledger.export()["blocks"][0]["txids"][0]
    assert ledger.output(coinbase, 0).state is UNKNOWN


def test_each_output_of_a_tx_is_its_own(ledger: LocalLedger) -> None:
    coin = mint(ledger, 50_000)
    a, b = PrivateKey(), PrivateKey()
    tx = spend([coin], [(p2pkh(a), 20_000), (p2pkh(b), 29_000)])
    ledger.submit(tx.serialize())
    child = spend([Coin(tx, 1, b)], [(p2pkh(a), 28_000)])
    ledger.submit(child.serialize())
    assert ledger.output(tx_id(tx), 0) == OutputStatus(tx_id(tx), 0, UNSPENT, 20_000, p2pkh(a))
    assert ledger.output(tx_id(tx), 1) == OutputStatus(
        tx_id(tx), 1, SPENT, 29_000, p2pkh(b), tx_id(child)
    )


async def test_local_chain_output_matches_the_ledger(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "l.db").close()
    chain = LocalChain.open(tmp_path / "l.db")
    key = PrivateKey()
    coin = mint(chain.ledger, 10_000, key)
    txid = tx_id(coin.tx)
    assert await chain.output(txid, 0) == OutputStatus(txid, 0, UNSPENT, 10_000, p2pkh(key))
    assert await chain.output(txid, 1) == OutputStatus(txid, 1, UNKNOWN)
    assert (await chain.output("cd" * 32, 0)).state is UNKNOWN
    tx, _ = pay(coin, key=key)
    await chain.broadcast(tx)
    await chain.mine()
    assert await chain.output(txid, 0) == OutputStatus(
        txid, 0, SPENT, 10_000, p2pkh(key), tx_id(tx)
    )
    chain.close()


async def test_every_chain_names_its_network_by_its_genesis_hash(tmp_path: Path) -> None:
    ids = []
    for name in ("a.db", "b.db"):
        LocalLedger.create(tmp_path / name).close()
        chain = LocalChain.open(tmp_path / name)
        try:
            ids.append(await chain.network_id())
            assert ids[-1] == chain.ledger.block(0).hash  # type: ignore[union-attr]
        finally:
            chain.close()
    assert ids[0] != ids[1]  # two ledgers, two networks
    main = ArcChain(ArcSettings("http://127.0.0.1:1", network="main"))
    test = ArcChain(ArcSettings("http://127.0.0.1:1", network="test"))
    assert await main.network_id() == GENESIS["main"] != await test.network_id()
