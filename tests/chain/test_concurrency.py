"""Several OS processes broadcast into one ledger file while it mines: first seen wins,
nothing is lost, and the UTXO set balances (checked independently of the ledger's
own bookkeeping, from its export)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
from bsv.transaction import Transaction

from mesh.chain.ledger import LocalLedger
from mesh.chain.merkle import display, internal, merkle_root
from mesh.chain.tx import is_data_script, parse_exact, tx_id, txid_of
from tests.chain.helpers import Coin, mint, pay
from tests.chain.ledger_worker import broadcast


def _plan(
    ledger: LocalLedger, workers: int, per_worker: int, conflicts: int
) -> tuple[list[list[Transaction]], list[list[str]]]:
    """Per worker, `per_worker` transactions of which `conflicts` spend shared coins.

    Half of each worker's own transactions spend the output of an earlier one of its
    own (unconfirmed chains). Returns the plans and, per shared coin, the txids of its
    competing spends.
    """
    shared = [mint(ledger, 50_000) for _ in range(conflicts)]
    own_count = per_worker - conflicts
    plans: list[list[Transaction]] = []
    rivals: list[list[str]] = [[] for _ in range(conflicts)]
    for worker in range(workers):
        own: list[Transaction] = []
        heads: list[Coin] = []
        independent = (own_count + 1) // 2
        for _ in range(independent):
            tx, coin = pay(mint(ledger, 20_000), fee=300)
            own.append(tx)
            heads.append(coin)
        own.extend(pay(head, fee=250)[0] for head in heads[: own_count - independent])
        spends = [pay(coin, fee=200 + worker)[0] for coin in shared]
        for j, tx in enumerate(spends):
            rivals[j].append(tx_id(tx))
        plan = list(own)
        step = per_worker // max(1, conflicts)
        for j, tx in enumerate(spends):  # spread the contested spends through the run
            plan.insert(min(j * step, len(plan)), tx)
        plans.append(plan)
    ledger.mine()
    return plans, rivals


def _run(tmp_path: Path, workers: int, per_worker: int, conflicts: int) -> None:
    db = tmp_path / "shared.db"
    with LocalLedger.create(db) as ledger:
        plans, rivals = _plan(ledger, workers, per_worker, conflicts)
        minted_before = ledger.balance().minted
    assert all(len(p) == per_worker for p in plans)

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    processes = []
    for index, plan in enumerate(plans):
        raws = tmp_path / f"w{index}.hex"
        raws.write_text("\n".join(tx.serialize().hex() for tx in plan))
        process = context.Process(
            target=broadcast,
            args=(str(db), str(raws), str(tmp_path / f"w{index}.json"), barrier),
        )
        process.start()
        processes.append(process)

    blocks_during = 0
    with LocalLedger.open(db) as miner:
        barrier.wait(timeout=60)
        deadline = time.monotonic() + 120
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            miner.mine()  # a third process-level writer, racing the broadcasters
            blocks_during += 1
            time.sleep(0.005)
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
        miner.mine()
        export = miner.export()
        balance = miner.balance()
    assert blocks_during > 1

    results: dict[str, str] = {}
    windows = []
    for index in range(workers):
        document = json.loads((tmp_path / f"w{index}.json").read_text())
        results.update(document["results"])
        windows.append((document["started"], document["finished"]))
    assert len(results) == workers * per_worker
    # the broadcasters really ran at the same time
    assert max(start for start, _ in windows) < min(end for _, end in windows)

    # first seen wins: exactly one spend of each shared coin, the others refused
    contested = {txid for group in rivals for txid in group}
    for group in rivals:
        outcomes = sorted(results[txid] for txid in group)
        assert outcomes.count("accepted") == 1, outcomes
        assert set(outcomes) - {"accepted"} <= {"double-spend", "spent-input"}, outcomes
    uncontested = {t: r for t, r in results.items() if t not in contested}
    assert set(uncontested.values()) == {"accepted"}

    # nothing lost: every accepted transaction is in a block, nothing rejected is
    accepted = {t for t, r in results.items() if r == "accepted"}
    in_ledger = {t["txid"]: t for t in export["transactions"]}
    assert accepted <= set(in_ledger)
    assert not ({t for t, r in results.items() if r != "accepted"} & set(in_ledger))
    assert all(t["block_height"] is not None for t in export["transactions"])
    for block in export["blocks"]:
        assert display(merkle_root([internal(t) for t in block["txids"]])) == block["merkle_root"]

    # the UTXO set balances, recomputed from the raw transactions alone
    unspent: dict[tuple[str, int], int] = {}
    minted = fees = 0
    ordered = [t for b in export["blocks"] for t in b["txids"]]
    assert sorted(ordered) == sorted(in_ledger)
    for txid in ordered:
        raw = bytes.fromhex(in_ledger[txid]["hex"])
        assert txid_of(raw) == txid
        tx = parse_exact(raw)
        value_out = sum(int(o.satoshis) for o in tx.outputs)
        if str(tx.inputs[0].source_txid) == "00" * 32:
            minted += value_out
        else:
            spent = [
                unspent.pop((str(i.source_txid), int(i.source_output_index))) for i in tx.inputs
            ]
            fees += sum(spent) - value_out
        for vout, out in enumerate(tx.outputs):
            if not is_data_script(bytes(out.locking_script.serialize())):
                unspent[(txid, vout)] = int(out.satoshis)
    assert minted == minted_before == balance.minted
    assert sum(unspent.values()) == minted - fees
    assert (balance.unspent, balance.fees) == (sum(unspent.values()), fees)
    assert balance.balanced


def test_two_processes_200_each_with_50_conflicting_pairs(tmp_path: Path) -> None:
    _run(tmp_path, workers=2, per_worker=200, conflicts=50)


@pytest.mark.slow
def test_four_processes_2500_each_with_500_four_way_conflicts(tmp_path: Path) -> None:
    _run(tmp_path, workers=4, per_worker=2500, conflicts=500)


def test_plan_shape(ledger: LocalLedger) -> None:
    plans, rivals = _plan(ledger, workers=2, per_worker=20, conflicts=5)
    assert [len(p) for p in plans] == [20, 20]
    assert all(len(group) == 2 and group[0] != group[1] for group in rivals)
    assert len({tx_id(tx) for plan in plans for tx in plan}) == 40
