"""`mesh ledger …` as a user runs it: real processes, JSON shapes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bsv.keys import PrivateKey
from bsv.transaction import Transaction

from mesh.chain.ledger import LocalLedger
from mesh.chain.merkle import display, internal, merkle_root
from mesh.chain.tx import tx_id
from tests.chain.helpers import Coin, pay


def mesh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", "ledger", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "M2MESH_HOME": "/nonexistent-m2mesh-home"},
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def clean_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1, result
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ledger_workflow_and_export_json(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    assert "genesis" in ok(mesh("init", "--db", db))
    key = PrivateKey()
    outpoint = ok(mesh("fund", "--db", db, key.address(), "25000")).strip()
    txid, vout = outpoint.split(":")
    assert len(txid) == 64 and vout == "0"
    assert ok(mesh("mine", "--db", db, "2")).count(" tx") == 2

    with LocalLedger.open(Path(db)) as ledger:
        raw = ledger.raw_tx(txid)
    assert raw is not None
    spend, _ = pay(Coin(Transaction.from_hex(raw), 0, key))
    assert ok(mesh("tx", "--db", db, "--send", spend.serialize().hex())).strip() == tx_id(spend)
    assert ok(mesh("tx", "--db", db, "--send", "-", stdin=spend.serialize().hex())).strip() == (
        tx_id(spend)
    )

    shown = json.loads(ok(mesh("tx", "--db", db, txid)))
    assert shown["state"] == "mined" and shown["block_height"] == 1 and shown["merkle_path"]
    assert json.loads(ok(mesh("tx", "--db", db, tx_id(spend))))["state"] == "pending"

    summary = json.loads(ok(mesh("show", "--db", db, "--json")))
    assert summary["height"] == 2 and summary["mempool"] == 1
    assert summary["balance"]["minted"] == 25_000 and summary["balance"]["fees"] == 500
    assert "balanced: True" in ok(mesh("show", "--db", db))
    assert ok(mesh("show", "--db", db, "--address", key.address())).endswith("0 outputs, 0 sat\n")

    document = json.loads(ok(mesh("export", "--db", db, "--json")))
    assert set(document) == {"height", "blocks", "transactions"}
    assert document["height"] == 2
    assert [b["height"] for b in document["blocks"]] == [0, 1, 2]
    for block in document["blocks"]:
        assert set(block) == {"height", "hash", "merkle_root", "txids"}
        assert display(merkle_root([internal(t) for t in block["txids"]])) == block["merkle_root"]
    assert txid in document["blocks"][1]["txids"]
    transactions = {t["txid"]: t for t in document["transactions"]}
    assert all(set(t) == {"txid", "hex", "block_height"} for t in transactions.values())
    assert transactions[txid]["block_height"] == 1
    assert transactions[tx_id(spend)]["block_height"] is None
    assert transactions[tx_id(spend)]["hex"] == spend.serialize().hex()
    assert len(transactions) == 5  # 3 coinbases, the mint, the spend
    assert "mempool: 1 transactions" in ok(mesh("export", "--db", db))


def test_ledger_errors_are_one_clear_line(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    clean_error(mesh("show", "--db", db), "no ledger here")
    ok(mesh("init", "--db", db))
    clean_error(mesh("init", "--db", db), "already a ledger")
    clean_error(mesh("fund", "--db", db, "not-an-address", "5"), "not a P2PKH address")
    clean_error(mesh("fund", "--db", db, PrivateKey().address(), "0"), "faucet amount")
    clean_error(mesh("tx", "--db", db, "--send", "zz"), "hex")
    clean_error(mesh("tx", "--db", db, "--send", "0100"), "rule=parse")
    clean_error(mesh("tx", "--db", db, "ab" * 32), "no transaction")
    clean_error(mesh("mine", "--db", db, "0"), "at least one")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    clean_error(mesh("show", "--db", str(junk)), "junk.db")


def test_ledger_help_lists_actions() -> None:
    out = ok(mesh("--help"))
    for action in ("init", "fund", "mine", "show", "tx", "export"):
        assert action in out


def test_mine_on_an_interval_until_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    ok(mesh("init", "--db", str(db)))
    miner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.cli",
            "ledger",
            "mine",
            "--db",
            str(db),
            "--interval",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with LocalLedger.open(db) as ledger:
            while ledger.height() < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ledger.height() >= 3
    finally:
        miner.send_signal(signal.SIGINT)
        _, err = miner.communicate(timeout=30)
    assert miner.returncode == 130
    assert "Traceback" not in err


def test_init_can_judge_finality_as_teranode_does(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    assert "teranode finality" in ok(mesh("init", "--db", str(db), "--finality", "teranode"))
    with LocalLedger.open(db) as ledger:
        assert ledger.policy.finality == "teranode"


def test_init_can_hold_non_final_transactions_as_sv_node_does(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    said = ok(mesh("init", "--db", str(db), "--nonfinal", "hold", "--fee-rate", "50"))
    assert "non-final transactions held until final" in said
    with LocalLedger.open(db) as ledger:
        assert (ledger.policy.nonfinal, ledger.policy.fee_rate) == ("hold", 50)
    shown = ok(mesh("show", "--db", str(db)))
    assert "policy    50 sat/kB, bitcoin finality, non-final held until final (0 held now)" in shown
    bad = mesh("init", "--db", str(tmp_path / "x.db"), "--nonfinal", "keep")
    assert bad.returncode == 2 and "invalid choice: 'keep'" in bad.stderr
    assert "Traceback" not in bad.stderr
