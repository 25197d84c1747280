"""LocalLedger against real node policy: dust, bare OP_RETURN, script size, non-final.

Each test pins a place where the ledger once differed from SV Node / Teranode (issue
#32) -- see /work/shared/API-FACTS.md "Real BSV network policy" and `mesh.chain.rules`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.chain.base import OutputState, TxState
from mesh.chain.errors import RULES, TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.tx import SEQUENCE_FINAL, is_data_script, push, tx_id, txid_of
from tests.chain.helpers import Coin, mint, p2pkh, spend

OP_0, OP_1, OP_2, OP_DROP, OP_RETURN = b"\x00", b"\x51", b"\x52", b"\x75", b"\x6a"
OP_CHECKMULTISIG = b"\xae"
LIMIT = Policy().max_script_size  # SV Node's default maxscriptsizepolicy: 500 000 bytes


def rejected(ledger: LocalLedger, raw: bytes, rule: str) -> TxRejected:
    """Submit `raw`, expect `rule`, and check nothing changed."""
    assert rule in RULES
    before = (ledger.export(), ledger.held())
    with pytest.raises(TxRejected) as caught:
        ledger.submit(raw)
    assert caught.value.rule == rule, caught.value
    assert (ledger.export(), ledger.held()) == before
    return caught.value


def spend_script_output(
    parent: Transaction, vout: int, unlocking: bytes, outputs: list[tuple[bytes, int]]
) -> Transaction:
    """A spend of a non-P2PKH output with a fixed unlocking script (no signature)."""
    return Transaction(
        [
            TransactionInput(
                source_transaction=parent,
                source_output_index=vout,
                unlocking_script=Script(unlocking),
                sequence=SEQUENCE_FINAL,
            )
        ],
        [TransactionOutput(Script(s), v) for s, v in outputs],
        version=1,
    )


# ---------------------------------------------------------------- dust and OP_RETURN


def test_is_data_script_means_op_false_op_return_only() -> None:
    assert is_data_script(OP_0 + OP_RETURN + push(b"anchor"))
    assert is_data_script(OP_0 + OP_RETURN)
    assert not is_data_script(OP_RETURN + push(b"anchor"))  # post-Genesis: spendable
    assert not is_data_script(OP_RETURN)
    assert not is_data_script(OP_0)
    assert not is_data_script(b"")


def test_a_zero_sat_output_is_dust_unless_op_false_op_return(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    keep = (p2pkh(coin.key), 9_000)
    bare = spend([coin], [keep, (OP_RETURN + push(b"anchor"), 0)])
    assert "0 sat" in rejected(ledger, bare.serialize(), "dust").detail
    rejected(ledger, spend([coin], [keep, (OP_RETURN, 0)]).serialize(), "dust")
    rejected(ledger, spend([coin], [keep, (p2pkh(coin.key), 0)]).serialize(), "dust")

    # OP_FALSE OP_RETURN is data: 0 sat is fine, value on it is burned, neither is a UTXO
    data = spend(
        [coin],
        [
            (p2pkh(coin.key), 8_300),
            (OP_0 + OP_RETURN + push(b"anchor"), 0),
            (OP_0 + OP_RETURN + push(b"x"), 700),
        ],
    )
    txid = ledger.submit(data.serialize())
    assert ledger.output(txid, 1).state is OutputState.UNKNOWN
    assert ledger.output(txid, 2).state is OutputState.UNKNOWN
    balance = ledger.balance()
    assert (balance.burned, balance.fees, balance.unspent) == (700, 1_000, 8_300)
    assert balance.balanced


def test_a_bare_op_return_output_with_value_is_an_ordinary_utxo(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    bare = OP_RETURN + push(b"spend me with OP_1")
    parent = spend([coin], [(p2pkh(coin.key), 6_000), (bare, 3_500)])
    parent_id = ledger.submit(parent.serialize())
    out = ledger.output(parent_id, 1)
    assert (out.state, out.satoshis, out.script) == (OutputState.UNSPENT, 3_500, bare)
    assert [u.vout for u in ledger.utxos(bare)] == [1]
    assert ledger.balance().burned == 0
    assert ledger.balance().balanced
    ledger.mine()

    # OP_0 leaves a false top: the interpreter refuses it, nothing changes
    rejected(ledger, spend_script_output(parent, 1, OP_0, [(OP_1, 3_000)]).serialize(), "script")
    # post-Genesis OP_RETURN ends execution with what is on the stack: OP_1 spends it
    child = spend_script_output(parent, 1, OP_1, [(p2pkh(coin.key), 3_000)])
    child_id = ledger.submit(child.serialize())
    assert child_id == tx_id(child)
    assert ledger.output(parent_id, 1).state is OutputState.SPENT
    assert ledger.output(parent_id, 1).spent_by == child_id
    ledger.mine()
    assert ledger.status(child_id).state is TxState.MINED
    balance = ledger.balance()
    assert (balance.fees, balance.burned, balance.unspent) == (500 + 500, 0, 9_000)
    assert balance.balanced


# ---------------------------------------------------------------- script size


def _funded(ledger: LocalLedger, script: bytes, satoshis: int = 5_000) -> Transaction:
    """Pay `satoshis` to `script` from a new coin; the fee covers any size at 1 sat/kB."""
    coin = mint(ledger, satoshis + 2_000)
    tx = spend([coin], [(script, satoshis)])
    ledger.submit(tx.serialize())
    return tx


def _locking_of_size(size: int) -> bytes:
    """``<data> OP_DROP OP_1`` of exactly `size` bytes (spendable by an empty script)."""
    prefix = 5  # OP_PUSHDATA4 + 4-byte length: data this long needs it
    script = push(b"\x07" * (size - prefix - 2)) + OP_DROP + OP_1
    assert len(script) == size
    return script


def test_a_spent_locking_script_over_the_policy_size_is_refused(ledger: LocalLedger) -> None:
    at_limit = _funded(ledger, _locking_of_size(LIMIT))
    over = _funded(ledger, _locking_of_size(LIMIT + 1))  # creating it is allowed, like SV Node
    ledger.mine()

    spend_over = spend_script_output(over, 0, b"", [(OP_1, 4_000)])
    error = rejected(ledger, spend_over.serialize(), "script-size")
    assert f"spent locking script {LIMIT + 1} B > {LIMIT}" in error.detail

    spend_at = spend_script_output(at_limit, 0, b"", [(OP_1, 4_000)])
    ledger.submit(spend_at.serialize())
    ledger.mine()
    assert ledger.status(tx_id(spend_at)).state is TxState.MINED
    assert ledger.balance().balanced


def test_an_unlocking_script_over_the_policy_size_is_refused(ledger: LocalLedger) -> None:
    lock = OP_DROP + OP_1  # takes any one push
    parent = _funded(ledger, lock)
    prefix = 5  # OP_PUSHDATA4 + 4-byte length

    over = spend_script_output(parent, 0, push(b"\x01" * (LIMIT + 1 - prefix)), [(OP_1, 4_000)])
    assert len(over.inputs[0].unlocking_script.serialize()) == LIMIT + 1
    error = rejected(ledger, over.serialize(), "script-size")
    assert f"unlocking script {LIMIT + 1} B > {LIMIT}" in error.detail

    at = spend_script_output(parent, 0, push(b"\x01" * (LIMIT - prefix)), [(OP_1, 4_000)])
    assert len(at.inputs[0].unlocking_script.serialize()) == LIMIT
    ledger.submit(at.serialize())
    ledger.mine()
    assert ledger.status(tx_id(at)).state is TxState.MINED


def test_the_script_size_limit_follows_the_policy(tmp_path: Path) -> None:
    # 200 B: the P2PKH unlocking scripts (~107 B) that fund the test still fit
    with LocalLedger.create(tmp_path / "s.db", policy=Policy(max_script_size=200)) as small:
        parent = _funded(small, OP_DROP + OP_1)
        fits = spend_script_output(parent, 0, push(b"\x01" * 198), [(OP_1, 4_000)])
        assert len(fits.inputs[0].unlocking_script.serialize()) == 200
        too_big = spend_script_output(parent, 0, push(b"\x01" * 199), [(OP_1, 4_000)])
        rejected(small, too_big.serialize(), "script-size")
        small.submit(fits.serialize())


# ---------------------------------------------------------------- finality: hold or reject


def _multisig(a: PrivateKey, b: PrivateKey) -> bytes:
    keys = [k.public_key().serialize(compressed=True) for k in (a, b)]
    return OP_2 + push(keys[0]) + push(keys[1]) + OP_2 + OP_CHECKMULTISIG


def _two_signed(
    funding: Transaction, to: bytes, keys: tuple[PrivateKey, PrivateKey], locktime: int
) -> bytes:
    """A 2-of-2 spend of `funding`'s output 0 paying 98 500 sat to `to`."""
    sequence = 0xFFFFFFFE if locktime else SEQUENCE_FINAL
    tx = Transaction(
        [TransactionInput(source_transaction=funding, source_output_index=0, sequence=sequence)],
        [TransactionOutput(Script(to), 98_500)],
        version=1,
        locktime=locktime,
    )
    digest = tx.preimage(0)
    sigs = [k.sign(digest) + b"\x41" for k in keys]
    tx.inputs[0].unlocking_script = Script(OP_0 + push(sigs[0]) + push(sigs[1]))
    raw: bytes = tx.serialize()
    return raw


def _channel(
    ledger: LocalLedger, blocks_ahead: int
) -> tuple[Transaction, PrivateKey, PrivateKey, int]:
    payer, payee = PrivateKey(), PrivateKey()
    funding = spend([mint(ledger, 100_000, payer)], [(_multisig(payer, payee), 99_000)])
    ledger.submit(funding.serialize())
    ledger.mine()
    return funding, payer, payee, ledger.height() + blocks_ahead


@pytest.mark.parametrize("finality", ["bitcoin", "teranode"])
def test_a_held_refund_enters_at_the_first_block_it_is_final_for(
    tmp_path: Path, finality: str
) -> None:
    policy = Policy(finality=finality, nonfinal="hold")
    with LocalLedger.create(tmp_path / "h.db", policy=policy) as ledger:
        funding, payer, payee, expiry = _channel(ledger, 3)
        refund = _two_signed(funding, p2pkh(payer), (payer, payee), expiry)
        refund_id = txid_of(refund)
        before = ledger.balance()

        assert ledger.submit(refund) == refund_id  # held, not rejected
        assert ledger.submit(refund) == refund_id  # and idempotent
        assert ledger.held() == [refund_id]
        assert ledger.status(refund_id).state is TxState.UNKNOWN
        assert ledger.output(tx_id(funding), 0).state is OutputState.UNSPENT
        assert ledger.output(refund_id, 0).state is OutputState.UNKNOWN
        assert ledger.balance() == before

        ledger.mine(expiry - 2 - ledger.height())
        assert ledger.held() == [refund_id]
        ledger.mine()  # tip expiry - 1: the next block is `expiry`
        if finality == "teranode":  # nLockTime <= next height: in the mempool now
            assert (ledger.held(), ledger.status(refund_id).state) == ([], TxState.PENDING)
        else:  # nLockTime < next height: one more block
            assert ledger.held() == [refund_id]
        ledger.mine()
        if finality == "bitcoin":
            assert (ledger.held(), ledger.status(refund_id).state) == ([], TxState.PENDING)
        ledger.mine()
        assert ledger.status(refund_id).block_height == (
            expiry if finality == "teranode" else expiry + 1
        )
        assert ledger.output(tx_id(funding), 0).spent_by == refund_id
        assert ledger.balance().balanced


def test_a_final_close_evicts_the_held_refund(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "h.db", policy=Policy(nonfinal="hold")) as ledger:
        funding, payer, payee, expiry = _channel(ledger, 3)
        refund = _two_signed(funding, p2pkh(payer), (payer, payee), expiry)
        ledger.submit(refund)
        # a second non-final spend of the same output: first seen wins
        other = _two_signed(funding, p2pkh(payee), (payer, payee), expiry + 1)
        assert "held non-final" in rejected(ledger, other, "double-spend").detail

        close = _two_signed(funding, p2pkh(payee), (payer, payee), 0)
        close_id = ledger.submit(close)
        assert ledger.held() == []
        ledger.mine(5)
        assert ledger.status(close_id).state is TxState.MINED
        assert ledger.status(txid_of(refund)).state is TxState.UNKNOWN
        rejected(ledger, refund, "spent-input")
        assert ledger.balance().balanced


def test_hold_keeps_only_what_would_be_valid_once_final(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "h.db", policy=Policy(nonfinal="hold")) as ledger:
        funding, payer, payee, expiry = _channel(ledger, 3)
        forged = _two_signed(funding, p2pkh(payer), (payer, PrivateKey()), expiry)
        rejected(ledger, forged, "script")
        refund = _two_signed(funding, p2pkh(payer), (payer, payee), expiry)
        ledger.submit(refund)
        # no chains of non-final transactions: the held refund's output does not exist
        child = spend([Coin(Transaction.from_hex(refund), 0, payer)], [(p2pkh(payer), 98_000)])
        rejected(ledger, child.serialize(), "missing-input")


def test_reject_stays_the_default(ledger: LocalLedger) -> None:
    assert Policy().nonfinal == "reject"
    funding, payer, payee, expiry = _channel(ledger, 3)
    rejected(ledger, _two_signed(funding, p2pkh(payer), (payer, payee), expiry), "non-final")
    with pytest.raises(ValueError, match="nonfinal"):
        Policy(nonfinal="keep")


def test_hold_is_stored_and_an_old_ledger_file_gains_the_held_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    LocalLedger.create(path, policy=Policy(nonfinal="hold", finality="teranode")).close()
    with sqlite3.connect(path) as db:  # as the schema was before `held`
        db.execute("DROP TABLE held_spends")
        db.execute("DROP TABLE held")
        db.execute("UPDATE schema_versions SET version = 1 WHERE component = 'ledger'")
    db.close()
    with LocalLedger.open(path) as ledger:
        assert ledger.policy == Policy(nonfinal="hold", finality="teranode")
        funding, payer, payee, expiry = _channel(ledger, 3)
        refund = _two_signed(funding, p2pkh(payer), (payer, payee), expiry)
        ledger.submit(refund)
        assert ledger.held() == [txid_of(refund)]
