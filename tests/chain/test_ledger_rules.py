"""Every LocalLedger rule rejects what it should, names itself, and records nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.chain import rules
from mesh.chain.base import TxState
from mesh.chain.errors import RULES, TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy, Tip
from mesh.chain.tx import parse_exact, push, tx_id, txid_of
from tests.chain.helpers import T0, Coin, FakeClock, mint, p2pkh, pay, spend

OP_2, OP_CHECKMULTISIG = b"\x52", b"\xae"


def rejected(ledger: LocalLedger, raw: bytes, rule: str) -> TxRejected:
    """Submit `raw`, expect `rule`, and check nothing changed."""
    assert rule in RULES
    before = ledger.export()
    with pytest.raises(TxRejected) as caught:
        ledger.submit(raw)
    assert caught.value.rule == rule, caught.value
    assert ledger.export() == before
    return caught.value


def test_accepts_a_valid_spend_and_is_idempotent(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    tx, _ = pay(coin)
    txid = ledger.submit(tx.serialize())
    assert txid == tx_id(tx)
    assert ledger.submit(tx.serialize()) == txid  # a resubmission is not an error
    assert ledger.status(txid).state is TxState.PENDING
    assert ledger.balance().balanced
    assert ledger.balance().fees == 500


def test_rule_parse_trailing_truncated_and_garbage(ledger: LocalLedger) -> None:
    tx, _ = pay(mint(ledger, 10_000))
    raw = tx.serialize()
    assert "trailing" in rejected(ledger, raw + b"\x00", "parse").detail
    rejected(ledger, raw[:-1], "parse")
    rejected(ledger, raw[:-30], "parse")
    rejected(ledger, b"\x01\x00\x00\x00", "parse")
    rejected(ledger, b"", "parse")


def test_rule_empty(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    no_outputs = spend([coin], [])
    rejected(ledger, no_outputs.serialize(), "empty")
    no_inputs = Transaction([], [TransactionOutput(Script(p2pkh(coin.key)), 1)])
    rejected(ledger, no_inputs.serialize(), "empty")


def test_rule_oversize(tmp_path: Path) -> None:
    with LocalLedger.create(tmp_path / "small.db", policy=Policy(max_tx_size=300)) as small:
        coin = mint(small, 10_000)
        big = spend([coin], [(p2pkh(coin.key), 9_000), (b"\x00\x6a" + push(b"x" * 200), 0)])
        assert len(big.serialize()) > 300
        rejected(small, big.serialize(), "oversize")


def test_rule_output_value(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    zero = spend([coin], [(p2pkh(coin.key), 9_000), (p2pkh(coin.key), 0)])
    assert "0 sat" in rejected(ledger, zero.serialize(), "dust").detail  # more: test_node_policy
    huge = spend([coin], [(p2pkh(coin.key), 21_000_000 * 100_000_000 + 1)])
    rejected(ledger, huge.serialize(), "output-value")
    # a 0-sat data output is fine
    data = spend([coin], [(p2pkh(coin.key), 9_000), (b"\x00\x6a" + push(b"anchor"), 0)])
    ledger.submit(data.serialize())


def test_rule_duplicate_input(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    twice = spend([coin, coin], [(p2pkh(coin.key), 19_000)])
    rejected(ledger, twice.serialize(), "duplicate-input")


def test_rule_missing_input(ledger: LocalLedger) -> None:
    key = PrivateKey()
    phantom = Transaction(
        [
            TransactionInput(
                source_txid="ab" * 32, source_output_index=0, unlocking_script=Script(b"\x51")
            )
        ],
        [TransactionOutput(Script(p2pkh(key)), 50_000)],
    )
    tx, _ = pay(Coin(phantom, 0, key))
    rejected(ledger, tx.serialize(), "missing-input")
    real = mint(ledger, 10_000)
    out_of_range = spend([Coin(real.tx, 0, real.key)], [(p2pkh(key), 9_000)])
    out_of_range.inputs[0].source_output_index = 1
    rejected(ledger, out_of_range.serialize(), "missing-input")


def test_rule_spent_input(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    first, _ = pay(coin)
    ledger.submit(first.serialize())
    ledger.mine()
    again, _ = pay(coin, fee=600)
    assert "mined at 1" in rejected(ledger, again.serialize(), "spent-input").detail


def test_rule_double_spend_first_seen_wins(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    first, _ = pay(coin)
    second, _ = pay(coin, fee=900)  # pays more fee: still loses, first seen wins
    ledger.submit(first.serialize())
    error = rejected(ledger, second.serialize(), "double-spend")
    assert tx_id(first) in error.detail


def test_rule_outputs_exceed_inputs(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    tx = spend([coin], [(p2pkh(coin.key), 10_001)])
    rejected(ledger, tx.serialize(), "outputs-exceed-inputs")


def test_rule_fee(ledger: LocalLedger, tmp_path: Path) -> None:
    coin = mint(ledger, 10_000)
    free, _ = pay(coin, fee=0)
    assert "< 1 required" in rejected(ledger, free.serialize(), "fee").detail
    with LocalLedger.create(tmp_path / "dear.db", policy=Policy(fee_rate=1000)) as dear:
        coin = mint(dear, 10_000)
        cheap, _ = pay(coin, fee=100)  # ~192 bytes at 1000 sat/kB needs ~192
        rejected(dear, cheap.serialize(), "fee")
        enough, _ = pay(coin, fee=len(cheap.serialize()) + 2)
        dear.submit(enough.serialize())


def test_rule_non_final_height(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    locked = spend([coin], [(p2pkh(coin.key), 9_500)], locktime=5, sequence=0xFFFFFFFE)
    rejected(ledger, locked.serialize(), "non-final")
    # the same locktime with final sequences is final: nLockTime is ignored
    final = spend([coin], [(p2pkh(coin.key), 9_500)], locktime=5)
    ledger.submit(final.serialize())


def test_rule_non_final_time(ledger: LocalLedger, clock: FakeClock) -> None:
    coin = mint(ledger, 10_000)
    unlock_at = T0 + 3600
    locked = spend([coin], [(p2pkh(coin.key), 9_500)], locktime=unlock_at, sequence=0)
    rejected(ledger, locked.serialize(), "non-final")
    clock.now = unlock_at + 10
    ledger.mine(11)  # the median time past of the last 11 blocks passes the lock
    ledger.submit(locked.serialize())


def test_rule_script(ledger: LocalLedger) -> None:
    coin = mint(ledger, 10_000)
    thief = Coin(coin.tx, coin.vout, PrivateKey())  # signs with the wrong key
    tx, _ = pay(thief)
    rejected(ledger, tx.serialize(), "script")
    # a valid signature over different outputs does not carry over
    honest, _ = pay(coin)
    forged = Transaction.from_hex(honest.serialize())
    forged.outputs[0].satoshis -= 1
    rejected(ledger, forged.serialize(), "script")


def _multisig(a: PrivateKey, b: PrivateKey) -> bytes:
    keys = [k.public_key().serialize(compressed=True) for k in (a, b)]
    return OP_2 + push(keys[0]) + push(keys[1]) + OP_2 + OP_CHECKMULTISIG


def test_refund_is_non_final_until_its_locktime_is_mined(ledger: LocalLedger) -> None:
    payer, payee = PrivateKey(), PrivateKey()
    coin = mint(ledger, 100_000, payer)
    funding = spend([coin], [(_multisig(payer, payee), 99_000)])
    ledger.submit(funding.serialize())
    ledger.mine()
    expiry = ledger.height() + 3

    refund = Transaction(
        [TransactionInput(source_transaction=funding, source_output_index=0, sequence=0xFFFFFFFE)],
        [TransactionOutput(Script(p2pkh(payer)), 98_500)],
        version=1,
        locktime=expiry,
    )
    digest = refund.preimage(0)
    signatures = [k.sign(digest) + b"\x41" for k in (payer, payee)]
    refund.inputs[0].unlocking_script = Script(b"\x00" + push(signatures[0]) + push(signatures[1]))
    raw = refund.serialize()

    rejected(ledger, raw, "non-final")
    ledger.mine(2)
    assert ledger.height() == expiry - 1
    rejected(ledger, raw, "non-final")  # would enter block `expiry`: locktime not below it
    ledger.mine()
    assert ledger.height() == expiry
    assert ledger.submit(raw) == txid_of(raw)
    ledger.mine()
    assert ledger.status(txid_of(raw)).state is TxState.MINED
    assert ledger.balance().balanced


def test_refund_needs_both_signatures(ledger: LocalLedger) -> None:
    payer, payee = PrivateKey(), PrivateKey()
    funding = spend([mint(ledger, 100_000, payer)], [(_multisig(payer, payee), 99_000)])
    ledger.submit(funding.serialize())
    refund = Transaction(
        [TransactionInput(source_transaction=funding, source_output_index=0)],
        [TransactionOutput(Script(p2pkh(payer)), 98_500)],
    )
    sig = payer.sign(refund.preimage(0)) + b"\x41"
    refund.inputs[0].unlocking_script = Script(b"\x00" + push(sig) + push(sig))
    rejected(ledger, refund.serialize(), "script")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_exact_accepts_only_exact_transactions(data: bytes) -> None:
    try:
        tx = parse_exact(data)
    except TxRejected as exc:
        assert exc.rule == "parse"
    else:
        assert tx.serialize() == data


def _sample_raw() -> bytes:
    key = PrivateKey(7)
    parent = Transaction(
        [
            TransactionInput(
                source_txid="cd" * 32, source_output_index=0, unlocking_script=Script(b"\x51")
            )
        ],
        [TransactionOutput(Script(p2pkh(key)), 50_000)],
    )
    raw: bytes = pay(Coin(parent, 0, key))[0].serialize()
    return raw


SAMPLE = _sample_raw()  # built once: signatures vary in length, hypothesis wants determinism


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_parse_exact_on_mutated_transactions(data: st.DataObject) -> None:
    raw = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut]) + data.draw(st.binary(max_size=4))
    try:
        tx = parse_exact(mutated)
    except TxRejected as exc:
        assert exc.rule == "parse"
    else:
        assert tx.serialize() == mutated


def _refunds_locked_until(ledger: LocalLedger, blocks_ahead: int) -> tuple[int, bytes, bytes]:
    """Fund two 2-of-2 outputs, mine, and sign a refund of each locked `blocks_ahead`
    blocks past the tip. Returns the lock height and the two serialised refunds."""
    payer, payee = PrivateKey(), PrivateKey()
    lock = _multisig(payer, payee)
    funding = spend([mint(ledger, 100_000, payer)], [(lock, 49_000), (lock, 49_000)])
    ledger.submit(funding.serialize())
    ledger.mine()
    expiry = ledger.height() + blocks_ahead
    refunds = []
    for vout in (0, 1):
        refund = Transaction(
            [
                TransactionInput(
                    source_transaction=funding, source_output_index=vout, sequence=0xFFFFFFFE
                )
            ],
            [TransactionOutput(Script(p2pkh(payer)), 48_500)],
            version=1,
            locktime=expiry,
        )
        digest = refund.preimage(0)
        sigs = [k.sign(digest) + b"\x41" for k in (payer, payee)]
        refund.inputs[0].unlocking_script = Script(b"\x00" + push(sigs[0]) + push(sigs[1]))
        refunds.append(refund.serialize())
    return expiry, refunds[0], refunds[1]


@pytest.mark.parametrize("finality", ["bitcoin", "teranode"])
def test_finality_rule_decides_when_a_height_lock_opens(tmp_path: Path, finality: str) -> None:
    with LocalLedger.create(tmp_path / "l.db", policy=Policy(finality=finality)) as ledger:
        expiry, first, second = _refunds_locked_until(ledger, 3)
        ledger.mine(expiry - 2 - ledger.height())
        assert ledger.height() == expiry - 2
        rejected(ledger, first, "non-final")
        rejected(ledger, second, "non-final")

        ledger.mine()
        assert ledger.height() == expiry - 1  # the next block is `expiry` itself
        if finality == "teranode":  # block_height + 1 >= nLockTime
            assert ledger.submit(first) == txid_of(first)
        else:  # nLockTime < next_height
            error = rejected(ledger, first, "non-final")
            assert f"height {expiry}; the next block is {expiry} (bitcoin rule)" in error.detail

        ledger.mine()
        assert ledger.height() == expiry
        assert ledger.submit(second) == txid_of(second)
        assert ledger.submit(first) == txid_of(first)  # accepted now, or already
        ledger.mine()
        assert ledger.status(txid_of(first)).block_height == (
            expiry if finality == "teranode" else expiry + 1
        )
        assert ledger.status(txid_of(second)).block_height == expiry + 1
        assert ledger.balance().balanced


def test_policy_finality_is_validated_stored_and_defaults_for_old_ledgers(
    tmp_path: Path,
) -> None:
    assert Policy().finality == "bitcoin"
    with pytest.raises(ValueError, match="finality"):
        Policy(finality="bsv")
    path = tmp_path / "t.db"
    LocalLedger.create(path, policy=Policy(fee_rate=5, finality="teranode")).close()
    with LocalLedger.open(path) as reopened:
        assert reopened.policy == Policy(fee_rate=5, finality="teranode")
    # a ledger written before the field existed stores only the first three
    old = tmp_path / "old.db"
    LocalLedger.create(old).close()
    with sqlite3.connect(old) as db:
        db.execute(
            "UPDATE ledger_meta SET value = ? WHERE key = 'policy'",
            (json.dumps({"fee_rate": 2, "min_fee": 1, "max_tx_size": 10_000_000}),),
        )
    db.close()
    with LocalLedger.open(old) as reopened:
        assert reopened.policy == Policy(fee_rate=2)
        assert reopened.policy.finality == "bitcoin"


def test_is_final_rules_side_by_side() -> None:
    key = PrivateKey(3)
    parent = Transaction(
        [TransactionInput(source_txid="cd" * 32, source_output_index=0)],
        [TransactionOutput(Script(p2pkh(key)), 10_000)],
    )
    bitcoin, teranode = Policy(), Policy(finality="teranode")

    def locked(locktime: int) -> Transaction:
        return spend([Coin(parent, 0, key)], [(p2pkh(key), 9_000)], locktime=locktime, sequence=0)

    tip = Tip(next_height=100, median_time_past=T0)
    for locktime, by_bitcoin, by_teranode in (
        (99, True, True),
        (100, False, True),
        (101, False, False),
        (T0 - 1, True, True),  # time locks: below the median time past under both rules
        (T0, False, False),
    ):
        tx = locked(locktime)
        assert rules.is_final(tx, tip) is by_bitcoin  # no policy: Bitcoin's IsFinalTx
        assert rules.is_final(tx, tip, bitcoin) is by_bitcoin
        assert rules.is_final(tx, tip, teranode) is by_teranode
