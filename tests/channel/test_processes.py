"""Channel endpoints as separate processes over real sockets and one ledger file."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mesh.chain.ledger import LocalLedger
from mesh.channel import State
from mesh.channel.store import ChannelStore
from mesh.store import Store
from tests.channel.helpers import check_spends_funding

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.channel.channel_proc", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def line(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        text = self.popen.stdout.readline()
        if not text:
            self.popen.kill()
            raise AssertionError(f"process ended: {self.popen.communicate()[1][-3000:]}")
        result: dict[str, Any] = json.loads(text)
        return result

    def last(self, timeout: float = 120) -> dict[str, Any]:
        out, err = self.popen.communicate(timeout=timeout)
        assert self.popen.returncode == 0, err[-3000:]
        return dict(json.loads(out.strip().splitlines()[-1]))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.popen.communicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    LocalLedger.create(path).close()
    return path


def stored(data: Path) -> Any:
    store = Store(data / "agent.db")
    try:
        [item] = ChannelStore(store).load(include_final=True)
    finally:
        store.close()
    return item.record


def test_full_lifecycle_10000_payments_in_two_processes(tmp_path: Path, ledger_path: Path) -> None:
    seller = Proc("seller", str(tmp_path / "s"), str(ledger_path), "tcp://127.0.0.1:0")
    try:
        hello = seller.line()
        buyer = Proc(
            "buyer",
            str(tmp_path / "b"),
            str(ledger_path),
            hello["address"],
            hello["peer_id"],
            "--payments",
            "10000",
            "--amount",
            "3",
        )
        result = buyer.last(timeout=300)
    finally:
        seller.stop()
    assert result["state"] == "closed" and result["total"] == 30_000
    with LocalLedger.open(ledger_path) as ledger:
        ledger.mine()
        record = stored(tmp_path / "s")
        terms = record.terms
        assert record.state is State.CLOSED and record.total == 30_000
        payee = sum(u.satoshis for u in ledger.utxos(terms.payee_payout))
        payer = sum(u.satoshis for u in ledger.utxos(terms.payer_payout))
        assert payee == 30_000
        assert payer == terms.capacity - terms.close_fee - 30_000
        assert ledger.status(result["close_txid"]).state.value == "mined"
        raw = ledger.raw_tx(result["close_txid"])
        assert raw is not None
        check_spends_funding(raw, terms)
        assert ledger.balance().balanced


def crash_trial(tmp_path: Path, ledger_path: Path, victim: str, rng: random.Random) -> None:
    port = free_port()
    listen = f"tcp://127.0.0.1:{port}"
    s_dir, b_dir = tmp_path / "s", tmp_path / "b"
    seller = Proc("seller", str(s_dir), str(ledger_path), listen)
    buyer: Proc | None = None
    try:
        hello = seller.line()
        buyer = Proc(
            "buyer",
            str(b_dir),
            str(ledger_path),
            listen,
            hello["peer_id"],
            "--payments",
            "3000",
            "--amount",
            "2",
            "--no-close",
        )
        buyer.line()  # opened
        time.sleep(rng.uniform(0.05, 0.8))
        (buyer if victim == "payer" else seller).popen.kill()  # kill -9
        time.sleep(0.1)
    finally:
        for proc in (buyer, seller):
            if proc is not None:
                proc.popen.kill()
                proc.popen.communicate()
    payer_before = stored(b_dir)
    payee_before = stored(s_dir)
    # Restart both from their data dirs and settle.
    seller = Proc("seller", str(s_dir), str(ledger_path), listen)
    try:
        seller.line()
        resumed = Proc("resume", str(b_dir), str(ledger_path), listen, hello["peer_id"])
        final = resumed.last(timeout=120)
    finally:
        seller.stop()
    assert final["state"] == "closed"
    # The payee gets at least what it acknowledged; the payer pays at most what it signed.
    assert final["total"] >= payee_before.acked_total
    assert final["total"] >= payer_before.acked_total
    assert final["total"] <= payer_before.total
    with LocalLedger.open(ledger_path) as ledger:
        ledger.mine()
        assert ledger.balance().balanced
        terms = payer_before.terms
        assert sum(u.satoshis for u in ledger.utxos(terms.payee_payout)) == final["total"]


@pytest.mark.parametrize("trial", range(5))
def test_kill_9_during_a_stream_then_restart_and_close(
    tmp_path: Path, ledger_path: Path, trial: int
) -> None:
    rng = random.Random(trial)
    crash_trial(tmp_path, ledger_path, "payer" if trial % 2 else "payee", rng)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(50))
def test_kill_9_soak(tmp_path: Path, ledger_path: Path, trial: int) -> None:
    rng = random.Random(1000 + trial)
    crash_trial(tmp_path, ledger_path, rng.choice(["payer", "payee"]), rng)
