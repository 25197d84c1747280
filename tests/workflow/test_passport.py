"""A part passport built from real anchored records and a real escrow on a LocalLedger,
verified offline against the ledger's headers; changed bytes name the failing link."""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from agents.cli import main
from agents.services.orders import statement
from agents.workflows.store import WorkOrderStore
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.proof import single_tx_bump
from mesh.chain.base import TxState
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity
from mesh.store import Store
from mesh.workflow.orders import service_order_prefix
from mesh.workflow.passport import (
    MinedTx,
    Passport,
    PassportFailed,
    parse_passport,
    verify_passport,
)
from mesh.workflow.verdict import STREAM
from tests.anchoring.helpers import create_ledger, running_anchorer
from tests.workflow.test_orders import funded_order


def mined(ledger: LocalLedger, raw: bytes, txid: str) -> MinedTx:
    status = ledger.status(txid)
    assert status.state is TxState.MINED and status.block_hash
    bump = ledger.merkle_proof(txid)
    assert bump is not None
    return MinedTx(raw, status.block_height or 0, status.block_hash, single_tx_bump(bump, txid))


async def a_passport(tmp_path: Path, passed: bool = True) -> tuple[Passport, HeaderChain]:
    """Machine, sensor and inspector anchor their records; the escrow settles by the
    verdict; everything mined."""
    ledger_path = create_ledger(tmp_path / "ledger.db")
    with LocalLedger.open(ledger_path) as ledger:
        order = funded_order(ledger)
        ids = {role: Identity(order.ids[role]) for role in ("machine", "inspector")}
        ids["sensor"] = Identity.generate()
        verdict_frame, body = order.verdict(passed)
        async with AsyncExitStack() as stack:
            runs = {
                role: await stack.enter_async_context(
                    running_anchorer(tmp_path / role, ledger_path, identity=ids[role])
                )
                for role in ("machine", "sensor", "inspector")
            }
            tool_time = statement("provider", service_order_prefix(order.machine.terms.order_id)
                                  + secrets.token_bytes(8), "spindle-time", order.buyer.buyer,
                                  secrets.token_bytes(32), 8, 2, 16)  # fmt: skip
            await runs["machine"].anchorer.log("meters", tool_time)
            other = statement("provider", secrets.token_bytes(16), "spindle-time",
                              order.buyer.buyer, secrets.token_bytes(32), 5, 2, 10)  # fmt: skip
            await runs["machine"].anchorer.log("meters", other)  # another order's
            for n in range(3):
                await runs["sensor"].anchorer.log("readings/vibration", f"r{n}".encode())
            await runs["inspector"].anchorer.log(STREAM, body.encode())
            for run in runs.values():
                await run.anchorer.anchor_now()
            await runs["machine"].chain.mine()
            for run in runs.values():
                await run.anchorer.wait_mined()
            proofs = [
                await runs["machine"].anchorer.proof("meters", 0),
                await runs["machine"].anchorer.proof("meters", 1),
                *[await runs["sensor"].anchorer.proof("readings/vibration", n) for n in range(3)],
                await runs["inspector"].anchorer.proof(STREAM, 0),
            ]
        settle = (
            order.machine.judged(verdict_frame, body)
            if passed
            else order.buyer.judged(verdict_frame, body)
        )
        assert settle is not None
        settlement_txid = ledger.submit(settle)
        ledger.mine()
        funding_txid = order.buyer.offer.funding_txid
        funding_raw = ledger.raw_tx(funding_txid)
        assert funding_raw is not None
        terms = order.machine.terms
        passport = Passport(
            part=order.inspector.part,
            order_id=terms.order_id,
            buyer=order.buyer.buyer,
            machine=order.buyer.machine,
            inspector=order.buyer.offer.inspector,
            amount=terms.amount,
            fee=terms.fee,
            refund_height=terms.refund_height,
            buyer_payout=terms.buyer_payout,
            machine_payout=terms.machine_payout,
            funding=mined(ledger, funding_raw, funding_txid),
            settlement=mined(ledger, settle, settlement_txid),
            records=tuple(proofs),
        )
        return passport, HeaderChain.from_ledger(ledger)


async def test_a_passport_tells_the_story_of_a_good_part_offline(tmp_path: Path) -> None:
    passport, headers = await a_passport(tmp_path)
    # Through JSON and back, as a file would carry it.
    again = parse_passport(json.loads(json.dumps(passport.to_document())))
    story = verify_passport(again, headers)
    text = "\n".join(story)
    assert "part P-123" in story[0]
    assert "escrow 5000 sat funded by the buyer" in text
    assert "1 meter statement(s) of the machine for this order, anchored: 8 unit(s)" in text
    assert "3 process reading(s)" in text
    assert "PASS (deviation_um 12)" in text
    assert "settled by the release: 4980 sat to the machine" in text


async def test_a_failed_part_shows_its_money_returned(tmp_path: Path) -> None:
    passport, headers = await a_passport(tmp_path, passed=False)
    text = "\n".join(verify_passport(passport, headers))
    assert "FAIL (deviation_um 41)" in text and "settled by the return" in text


def _edits(document: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    """(name, change) for a changed byte in every binary member and every number."""
    edits: list[tuple[str, Callable[[dict[str, Any]], None]]] = []

    def flip(path: tuple[Any, ...], at: int) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            node: Any = doc
            for key in path[:-1]:
                node = node[key]
            raw = bytearray(bytes.fromhex(node[path[-1]]))
            raw[at] ^= 0x01
            node[path[-1]] = raw.hex()

        return change

    def bump(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            node: Any = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] += 1

        return change

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))
        elif isinstance(node, int) and not isinstance(node, bool) and path[-1] != "m2mesh_proof":
            edits.append(("/".join(map(str, path)), bump(path)))
        elif isinstance(node, str) and len(node) >= 2 and path[-1] not in ("hash", "txid", "block"):
            try:
                size = len(bytes.fromhex(node))
            except ValueError:
                return
            for at in range(0, size, max(1, size // 12)):  # a dozen bytes of each
                edits.append((f"{'/'.join(map(str, path))}[{at}]", flip(path, at)))

    walk(document, ())
    return edits


async def test_a_changed_byte_anywhere_names_the_failing_link(tmp_path: Path) -> None:
    passport, headers = await a_passport(tmp_path)
    document = passport.to_document()
    edits = _edits(document)
    assert len(edits) > 150
    for name, change in edits:
        doc = copy.deepcopy(document)
        change(doc)
        with pytest.raises(PassportFailed) as failed:
            verify_passport(parse_passport(doc), headers)
        assert failed.value.link and failed.value.reason, name
    # (The readable duplicates -- record.fields, the hashes -- are checked too: the
    # record's own checks compare them with the signed body.)


async def test_mesh_verify_checks_a_passport_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passport, _ = await a_passport(tmp_path)
    path = tmp_path / "part.json"
    path.write_text(json.dumps(passport.to_document()))
    ledger = str(tmp_path / "ledger.db")
    assert main(["verify", str(path), "--ledger", ledger]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID passport of part P-123") and "PASS" in out
    document = passport.to_document()
    document["settlement"]["tx"] = document["funding"]["tx"]  # the wrong money out
    path.write_text(json.dumps(document))
    assert main(["verify", str(path), "--ledger", ledger]) == 1
    assert capsys.readouterr().out.startswith("INVALID settlement:")


def test_mesh_passport_says_in_one_line_why_it_cannot_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["passport", "P-1", "--data-dir", str(tmp_path)]) == 1
    assert "no agent store here" in capsys.readouterr().err
    Store(tmp_path / "agent.db").close()  # an agent that placed no work orders
    assert main(["passport", "P-1", "--data-dir", str(tmp_path)]) == 1
    assert "has placed no work orders" in capsys.readouterr().err
    with Store(tmp_path / "agent.db") as store:
        WorkOrderStore(store)
    assert main(["passport", "P-1", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no work order of part 'P-1'" in err and len(err.strip().splitlines()) == 1
