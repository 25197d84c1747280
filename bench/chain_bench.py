"""Chain scenario: LocalLedger accepts/s and Merkle proofs/s beside bare `Spend.validate`.

    python -m bench chain [--quick]

Measured in one run, on one core:

- baseline: bsv-sdk's bare interpreter, ``Spend(params).validate()`` on a signed
  one-input P2PKH spend (what every ledger acceptance must do at least once);
- ledger accept: `LocalLedger.submit` of independent one-input P2PKH spends into a
  fresh ledger file — parse, every rule, script validation, one SQLite write
  transaction (WAL, synchronous=NORMAL) each;
- proof generation: `LocalLedger.merkle_proof` for every transaction of one block
  (SQLite lookup + BUMP from the block's cached tree levels);
- proof verification, offline: `MerklePath.verify` against a `HeaderTracker`;
- proof verification, live: `MerklePath.verify` against the ledger through
  `LocalChain`'s tracker (a worker-thread hop and an SQLite read per proof).

Every rate is also printed as a ratio to the baseline, because absolute numbers say
more about the machine than about the code.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.script.spend import Spend
from bsv.script.type import P2PKH
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from bench.report import Row
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.spv import HeaderTracker
from mesh.chain.tx import tx_id

SCENARIO = "chain"


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(count: int, body: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(count):
        body()
    return _rate(count, time.perf_counter() - start)


def _signed_spends(ledger: LocalLedger, count: int) -> list[Transaction]:
    key = PrivateKey()
    script = P2PKH().lock(key.address())
    spends = []
    for _ in range(count):
        outpoint = ledger.faucet(script.serialize(), 10_000)
        raw = ledger.raw_tx(outpoint.txid)
        parent = Transaction.from_hex(raw)
        tx = Transaction(
            [
                TransactionInput(
                    source_transaction=parent,
                    source_output_index=0,
                    unlocking_script_template=P2PKH().unlock(key),
                )
            ],
            [TransactionOutput(script, 9_800)],
        )
        tx.sign()
        spends.append(tx)
    return spends


def spend_validate_rate(tx: Transaction, count: int) -> float:
    """Bare `Spend.validate` calls per second on one signed P2PKH input."""
    inp = tx.inputs[0]
    parent = inp.source_transaction.outputs[inp.source_output_index]
    params: dict[str, Any] = {
        "sourceTXID": inp.source_txid,
        "sourceOutputIndex": inp.source_output_index,
        "sourceSatoshis": parent.satoshis,
        "lockingScript": Script(parent.locking_script.serialize()),
        "transactionVersion": tx.version,
        "otherInputs": [],
        "inputIndex": 0,
        "unlockingScript": inp.unlocking_script,
        "outputs": tx.outputs,
        "inputSequence": inp.sequence,
        "lockTime": tx.locktime,
    }
    if not Spend(params).validate():
        raise RuntimeError("the baseline spend does not validate")
    return _timed(count, lambda: Spend(params).validate())


def measure(txs: int, validations: int) -> list[dict[str, Any]]:
    """Measure everything once; return one dict per measurement."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.db"
        ledger = LocalLedger.create(path)
        spends = _signed_spends(ledger, txs)
        ledger.mine()
        baseline = spend_validate_rate(spends[0], validations)

        raws = [tx.serialize() for tx in spends]
        start = time.perf_counter()
        for raw in raws:
            ledger.submit(raw)
        accept = _rate(len(raws), time.perf_counter() - start)

        (block,) = ledger.mine()
        txids = [tx_id(tx) for tx in spends]
        ledger.merkle_proof(txids[0])  # builds and caches the block's tree once
        start = time.perf_counter()
        proofs = [ledger.merkle_proof(txid) for txid in txids]
        generate = _rate(len(txids), time.perf_counter() - start)
        ledger.close()
        if any(p is None for p in proofs):
            raise RuntimeError("a mined transaction has no proof")

        offline, live = trio.run(
            _verify_rates, path, txids, proofs, block.height, block.merkle_root
        )

    rows = [
        ("spend_validate", "bsv-sdk Spend.validate (baseline)", baseline),
        ("ledger_accept", "LocalLedger.submit, scripts included", accept),
        ("proof_generate", "LocalLedger.merkle_proof", generate),
        ("proof_verify_offline", "MerklePath.verify + HeaderTracker", offline),
        ("proof_verify_live", "MerklePath.verify + LocalChain tracker", live),
    ]
    return [
        {"name": name, "what": what, "per_s": rate, "ratio_to_spend_validate": rate / baseline}
        for name, what, rate in rows
    ]


async def _verify_rates(
    path: Path, txids: list[str], proofs: list[Any], height: int, root: str
) -> tuple[float, float]:
    offline = HeaderTracker({height: root})
    start = time.perf_counter()
    for txid, proof in zip(txids, proofs, strict=True):
        if not await proof.verify(txid, offline):
            raise RuntimeError("a proof failed offline verification")
    offline_rate = _rate(len(txids), time.perf_counter() - start)
    chain = LocalChain.open(path)
    try:
        tracker = chain.tracker()
        start = time.perf_counter()
        for txid, proof in zip(txids, proofs, strict=True):
            if not await proof.verify(txid, tracker):
                raise RuntimeError("a proof failed live verification")
        live_rate = _rate(len(txids), time.perf_counter() - start)
    finally:
        chain.close()
    return offline_rate, live_rate


def run(quick: bool) -> list[Row]:
    """The chain rates beside bare `Spend.validate`; returns the result rows."""
    txs, validations = (200, 500) if quick else (3_000, 10_000)
    rows = measure(txs, validations)
    baseline = rows[0]["per_s"]
    return [
        Row(
            SCENARIO,
            row["what"],
            row["per_s"],
            "/s",
            None if row["name"] == "spend_validate" else baseline,
            "" if row["name"] == "spend_validate" else "Spend.validate",
            params={"transactions": txs},
        )
        for row in rows
    ]


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main([SCENARIO, *sys.argv[1:]]))
