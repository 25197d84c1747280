"""Merkle trees, BUMP proofs, header chains, and SPV that rejects fabricated ancestry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bsv.keys import PrivateKey
from bsv.merkle_path import MerklePath
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.chain.errors import SpvFailed
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.merkle import (
    BlockHeader,
    check_header_chain,
    display,
    internal,
    merkle_levels,
    merkle_path,
    merkle_root,
)
from mesh.chain.spv import HeaderTracker, parse_beef_exact, verify_spv
from mesh.chain.tx import tx_id
from tests.chain.helpers import T0, Coin, mint, p2pkh, pay, spend

# Bitcoin block 100 000: four transactions and their Merkle root.
BLOCK_100000 = [
    "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
    "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
    "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
    "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
]
ROOT_100000 = "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"


def test_merkle_root_matches_bitcoin_block_100000() -> None:
    leaves = [internal(t) for t in BLOCK_100000]
    assert display(merkle_root(leaves)) == ROOT_100000
    levels = merkle_levels(leaves)
    for index, txid in enumerate(BLOCK_100000):
        assert merkle_path(levels, index, 100_000).compute_root(txid) == ROOT_100000


@pytest.mark.parametrize("size", [2, 3, 5, 7, 8, 13, 33])
def test_every_bump_proves_its_leaf_and_round_trips(size: int) -> None:
    leaves = [os.urandom(32) for _ in range(size)]
    levels = merkle_levels(leaves)
    root = display(levels[-1][0])
    for index, leaf in enumerate(leaves):
        proof = MerklePath.from_hex(merkle_path(levels, index, 9).to_hex())
        assert proof.block_height == 9
        assert proof.compute_root(display(leaf)) == root


def test_one_leaf_tree_has_no_bump() -> None:
    with pytest.raises(ValueError, match="one-transaction"):
        merkle_path(merkle_levels([os.urandom(32)]), 0, 1)


def test_ledger_header_chain_links_and_meets_target(ledger: LocalLedger) -> None:
    mint(ledger, 1_000)
    ledger.mine(5)
    headers = ledger.headers()
    assert len(headers) == 6
    check_header_chain(headers)
    assert BlockHeader.parse(headers[3].serialize()) == headers[3]
    broken = [*headers[:3], BlockHeader(headers[3].version, bytes(32), *_rest(headers[3]))]
    with pytest.raises(ValueError, match=r"link|target"):
        check_header_chain(broken)


def _rest(h: BlockHeader) -> tuple[bytes, int, int, int]:
    return h.merkle_root, h.time, h.bits, h.nonce


async def _mined_pair(path: Path) -> tuple[LocalChain, Transaction, Coin]:
    """A ledger with a block holding a few transactions; returns one of them."""
    chain = LocalChain.open(path)
    ledger = chain.ledger
    coins = [mint(ledger, 20_000) for _ in range(4)]
    ledger.mine()
    paid = [pay(c) for c in coins]
    for tx, _ in paid:
        ledger.submit(tx.serialize())
    ledger.mine()
    return chain, paid[2][0], paid[2][1]


async def test_ledger_proofs_verify_through_merklepath_and_our_tracker(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "a.db").close()
    chain, tx, _ = await _mined_pair(tmp_path / "a.db")
    txid = tx_id(tx)
    proof = await chain.merkle_proof(txid)
    assert proof is not None and proof.block_height == 2
    tracker = chain.tracker()
    assert await proof.verify(txid, tracker)

    flipped = MerklePath.from_hex(proof.to_hex())
    sibling = next(leaf for leaf in flipped.path[1] if "hash_str" in leaf)
    sibling["hash_str"] = ("0" if sibling["hash_str"][0] != "0" else "1") + sibling["hash_str"][1:]
    assert not await flipped.verify(txid, tracker)

    other_block = MerklePath.from_hex(proof.to_hex())
    other_block.block_height = 1
    assert not await other_block.verify(txid, tracker)

    LocalLedger.create(tmp_path / "b.db").close()
    other_chain, other_tx, _ = await _mined_pair(tmp_path / "b.db")
    other_proof = await other_chain.merkle_proof(tx_id(other_tx))
    assert other_proof is not None
    assert await other_proof.verify(tx_id(other_tx), other_chain.tracker())
    assert not await other_proof.verify(tx_id(other_tx), tracker)  # another ledger's block
    chain.close()
    other_chain.close()


async def test_spv_accepts_proven_parents_and_unproven_children(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "a.db").close()
    chain, tx, coin = await _mined_pair(tmp_path / "a.db")
    tx.merkle_path = await chain.merkle_proof(tx_id(tx))
    _, grandchild_coin = pay(coin)
    grandchild, _ = pay(grandchild_coin)
    await verify_spv(grandchild, chain.tracker(), now=T0)

    beef = grandchild.to_beef()
    parsed = parse_beef_exact(beef)
    assert tx_id(parsed) == tx_id(grandchild)
    await verify_spv(parsed, chain.tracker(), now=T0)
    with pytest.raises(SpvFailed) as caught:
        parse_beef_exact(beef + b"\x00")
    assert caught.value.rule == "parse"
    chain.close()


async def test_spv_rejects_a_fabricated_unproven_parent(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "a.db").close()
    chain = LocalChain.open(tmp_path / "a.db")
    key = PrivateKey()
    fabricated = Transaction(
        [
            TransactionInput(
                source_txid="ee" * 32, source_output_index=0, unlocking_script=Script(b"\x51")
            )
        ],
        [TransactionOutput(Script(p2pkh(key)), 1_000_000)],
    )
    child, _ = pay(Coin(fabricated, 0, key))
    with pytest.raises(SpvFailed) as caught:
        await verify_spv(child, chain.tracker(), now=T0)
    assert caught.value.rule == "unproven-input"
    assert caught.value.txid == tx_id(fabricated)

    # a fabricated proof for it fails too: its root is no block's root
    fake_levels = merkle_levels([internal(tx_id(fabricated)), os.urandom(32)])
    fabricated.merkle_path = merkle_path(fake_levels, 0, 0)
    with pytest.raises(SpvFailed) as caught:
        await verify_spv(child, chain.tracker(), now=T0)
    assert caught.value.rule == "proof"

    # and so does a mint nobody proved
    minted = mint(chain.ledger, 5_000)
    unproven_mint_child, _ = pay(minted)
    with pytest.raises(SpvFailed) as caught:
        await verify_spv(unproven_mint_child, chain.tracker(), now=T0)
    assert caught.value.rule == "unproven-input"
    chain.close()


async def test_spv_checks_amounts_fee_finality_scripts_and_links(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "a.db").close()
    chain, tx, coin = await _mined_pair(tmp_path / "a.db")
    tx.merkle_path = await chain.merkle_proof(tx_id(tx))
    tracker = chain.tracker()
    height = await chain.height()
    cases = {
        "fee": spend([coin], [(p2pkh(coin.key), coin.satoshis)]),
        "outputs-exceed-inputs": spend([coin], [(p2pkh(coin.key), coin.satoshis + 1)]),
        "non-final": spend(
            [coin], [(p2pkh(coin.key), coin.satoshis - 500)], locktime=height + 5, sequence=0
        ),
        "script": pay(Coin(coin.tx, coin.vout, PrivateKey()))[0],
    }
    for rule, bad in cases.items():
        with pytest.raises(SpvFailed) as caught:
            await verify_spv(bad, tracker, now=T0)
        assert caught.value.rule == rule, caught.value

    mismatched, _ = pay(coin)
    mismatched.inputs[0].source_transaction = pay(coin)[0]  # links the wrong parent
    with pytest.raises(SpvFailed) as caught:
        await verify_spv(mismatched, tracker, now=T0)
    assert caught.value.rule == "parent-mismatch"

    _, a_coin = pay(coin)
    _, b_coin = pay(coin, fee=700)
    both = spend([a_coin, b_coin], [(p2pkh(coin.key), a_coin.satoshis + b_coin.satoshis - 500)])
    with pytest.raises(SpvFailed) as caught:
        await verify_spv(both, tracker, now=T0)
    assert caught.value.rule == "double-spend"
    chain.close()


async def test_spv_walks_long_unproven_chains_without_recursion(tmp_path: Path) -> None:
    LocalLedger.create(tmp_path / "a.db").close()
    chain, tx, coin = await _mined_pair(tmp_path / "a.db")
    tx.merkle_path = await chain.merkle_proof(tx_id(tx))
    tip = coin
    for _ in range(1500):
        step, tip = pay(tip, fee=1)
    await verify_spv(step, chain.tracker(), now=T0)
    with pytest.raises(SpvFailed) as caught:
        await verify_spv(step, chain.tracker(), now=T0, max_ancestors=100)
    assert caught.value.rule == "depth"
    chain.close()


async def test_header_tracker_offline() -> None:
    tracker = HeaderTracker({5: "AB" * 32})
    assert await tracker.is_valid_root_for_height("ab" * 32, 5)
    assert not await tracker.is_valid_root_for_height("ab" * 32, 4)
    assert await tracker.current_height() == 5
