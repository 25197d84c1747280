"""`mesh run --dashboard`: a bad address is a usage error, an exposed one without a
token is refused before the agent starts, and `off` serves nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity, save_identity
from tests.discovery.agents import RunningAgent
from tests.web.agents import ROOT_DIR


def mesh_run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    save_identity(Identity.generate(), tmp_path / "a" / "identity.key")
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", "run", str(ROOT_DIR / "profiles" / "cnc-mill.toml"),
         "--data-dir", str(tmp_path / "a"), "--ledger", str(ledger), *extra],
        capture_output=True, text=True, cwd=ROOT_DIR, timeout=60, check=False,
    )  # fmt: skip


def test_an_exposed_dashboard_without_a_token_is_refused(tmp_path: Path) -> None:
    done = mesh_run(tmp_path, "--dashboard", "0.0.0.0:8470")
    assert done.returncode == 1, done.stderr
    assert "--dashboard: 0.0.0.0 is reachable from other machines" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "a" / "agent.db").exists()  # nothing started


def test_a_bad_dashboard_address_is_a_usage_error(tmp_path: Path) -> None:
    done = mesh_run(tmp_path, "--dashboard", "localhost")
    assert done.returncode == 2
    assert "--dashboard" in done.stderr and "HOST:PORT" in done.stderr


def test_dashboard_off_serves_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    agent = RunningAgent(tmp_path, ledger, "quiet", "127.0.0.1", "tcp://127.0.0.1:0",
                         "[dashboard]\nlisten = 'off'\n", site="web-off")  # fmt: skip
    try:
        agent.wait(lambda s: s is not None, 20, "the agent up")
        status = agent.status() or {}
        assert status["dashboard"] is None
        assert status["loop"]["lag_seconds"] >= 0
    finally:
        agent.stop()


def test_a_taken_dashboard_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = mesh_run(tmp_path, "--dashboard", f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    assert f"dashboard: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
