"""Builders shared by the chain tests: keys, funded coins, signed spends, a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import SEQUENCE_FINAL

T0 = 1_700_000_000


@dataclass
class FakeClock:
    """An injectable clock the test moves by hand."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


def p2pkh(key: PrivateKey) -> bytes:
    script: bytes = P2PKH().lock(key.address()).serialize()
    return script


@dataclass
class Coin:
    """A spendable output the test holds the key for."""

    tx: Transaction
    vout: int
    key: PrivateKey

    @property
    def satoshis(self) -> int:
        return int(self.tx.outputs[self.vout].satoshis)


def mint(ledger: LocalLedger, satoshis: int, key: PrivateKey | None = None) -> Coin:
    """Faucet coins to a (new) key and return them with their parent transaction."""
    owner = key or PrivateKey()
    outpoint = ledger.faucet(p2pkh(owner), satoshis)
    raw = ledger.raw_tx(outpoint.txid)
    assert raw is not None
    return Coin(Transaction.from_hex(raw), outpoint.vout, owner)


def spend(
    coins: Sequence[Coin],
    outputs: Sequence[tuple[bytes, int]],
    *,
    locktime: int = 0,
    sequence: int = SEQUENCE_FINAL,
    version: int = 1,
) -> Transaction:
    """A signed P2PKH spend of `coins` paying `outputs` (script, satoshis)."""
    inputs = [
        TransactionInput(
            source_transaction=c.tx,
            source_output_index=c.vout,
            unlocking_script_template=P2PKH().unlock(c.key),
            sequence=sequence,
        )
        for c in coins
    ]
    tx = Transaction(
        inputs,
        [TransactionOutput(Script(s), v) for s, v in outputs],
        version=version,
        locktime=locktime,
    )
    tx.sign()
    return tx


def pay(coin: Coin, fee: int = 500, key: PrivateKey | None = None) -> tuple[Transaction, Coin]:
    """Spend `coin` whole (less `fee`) to a new key; return the tx and its output coin."""
    owner = key or PrivateKey()
    tx = spend([coin], [(p2pkh(owner), coin.satoshis - fee)])
    return tx, Coin(tx, 0, owner)
