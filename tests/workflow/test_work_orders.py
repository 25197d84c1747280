"""Escrowed work orders between three real `mesh run` agents on one LocalLedger: a
part that passes pays the machine, one that fails comes back to the buyer, one whose
inspector is gone comes back at the refund height -- every satoshi reconciled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agents.cli import main
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity
from tests.workflow.three import FEE, PAYMENT, PRICE, escrow_flows, parts, three_agents


def test_a_passed_part_pays_the_machine_and_a_failed_one_returns_to_the_buyer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = parts(1, 1)
    with three_agents(tmp_path, [good, bad], certifier=Identity.generate()) as site:
        site.buyer.wait(
            lambda s: len([o for o in (s.get("work_orders") or {}).get("orders", [])
                           if o["role"] == "buyer" and o["proven"]]) == 2,
            90, "both parts settled and proven",
        )  # fmt: skip
        orders = {o["part"]: o for o in site.orders()}
        assert orders[good]["state"] == "released" and orders[good]["verdict"] == "PASS"
        assert orders[bad]["state"] == "returned" and orders[bad]["verdict"] == "FAIL"
        # The tool time went over a channel (its own reconciliation): every unit paid.
        assert all(o["units"] == 5 and 0 < o["paid"] <= 5 * PRICE for o in orders.values())
        flows = {f["part"]: f for f in escrow_flows(site.ledger, list(orders.values()))}
        for part, order in orders.items():
            flow = flows[part]
            assert flow["held"] == PAYMENT and flow["paid"] == PAYMENT - FEE
            payout = order["machine_payout"] if part == good else order["buyer_payout"]
            assert flow["to"].hex() == payout and flow["locktime"] == 0
        # The machine and the inspector saw the same story.
        site.machine.wait(
            lambda s: {o["state"] for o in s["work_orders"]["orders"]} == {"released", "settled"},
            20, "the machine's orders settled",
        )  # fmt: skip
        judged = {o["part"]: o["state"] for o in site.orders("inspector")}
        assert judged == {good: "passed", bad: "failed"}
        with LocalLedger.open(site.ledger) as ledger:
            assert ledger.balance().balanced
        # The good part's passport, from the buyer's data dir once the verdict and the
        # meter statement have their receipts, verifies offline.
        out = tmp_path / f"{good}.json"
        deadline = time.monotonic() + 60
        while main(["passport", good, "--data-dir", str(site.buyer.data), "--out", str(out)]):
            assert time.monotonic() < deadline, capsys.readouterr().err
            time.sleep(1.0)
        assert main(["verify", str(out), "--ledger", str(site.ledger)]) == 0
        told = capsys.readouterr().out
        assert f"VALID passport of part {good}" in told and "PASS (deviation_um" in told
        assert f"settled by the release: {PAYMENT - FEE} sat to the machine" in told
        assert "1 meter statement(s) of the machine" in told
        # Both proved their certificates before the buyer ordered: both in the passport.
        assert "  machine " in told and "  inspector " in told
        assert told.count("certified by") == 2


def test_without_the_inspector_the_escrow_comes_back_at_the_refund_height(
    tmp_path: Path,
) -> None:
    (part,) = parts(1, 0)
    with three_agents(tmp_path, [part], units=30, refund_blocks=8, block_seconds=0.5) as site:
        site.buyer.wait(
            lambda s: any(o["state"] == "funded" for o in s["work_orders"]["orders"]),
            60, "the escrow funded",
        )  # fmt: skip
        site.inspector.proc.kill()  # gone for good, before it inspected anything
        site.inspector.proc.wait()
        site.buyer.wait(
            lambda s: any(o["proven"] for o in s["work_orders"]["orders"]), 60, "a refund"
        )
        (order,) = [o for o in site.orders() if o["state"] != "abandoned"]
        assert order["state"] == "refunded" and order["verdict"] is None
        (flow,) = escrow_flows(site.ledger, [order])
        assert flow["paid"] == PAYMENT - FEE and flow["to"].hex() == order["buyer_payout"]
        assert flow["locktime"] > 0
        time.sleep(0.1)


def test_an_inspector_that_cannot_prove_its_accreditation_gets_no_order(tmp_path: Path) -> None:
    certifier = Identity.generate().peer_id  # an accreditation body the inspector never met
    rule = (
        f'[requirements.accredited]\ntype = "m2mesh.accreditation"\n'
        f'certifiers = ["{certifier}"]\nreveal = ["scope"]\n'
    )
    (part,) = parts(1, 0)
    with three_agents(tmp_path, [part], buyer_extra=rule) as site:
        site.buyer.wait(
            lambda s: "unproven" in str((s.get("work_orders") or {}).get("waiting")),
            30, "the inspector refused as unproven",
        )  # fmt: skip
        time.sleep(1.0)
        assert site.orders() == []  # no escrow offered, nothing locked
        status = site.buyer.status()
        assert status is not None and status["wallet"]["reserved"] == 0
