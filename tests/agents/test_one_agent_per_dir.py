"""One agent per data dir: a second `mesh run` on a data dir whose agent runs is refused
in one line, before it touches anything, and the first keeps running; after a kill -9
the lock is gone with the process and the agent starts again."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from mesh.chain.ledger import LocalLedger
from tests.discovery.agents import ROOT, RunningAgent


def test_a_second_agent_on_a_running_agents_data_dir_is_refused(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    first = RunningAgent(tmp_path, ledger, "only", "127.0.0.1", "tcp://127.0.0.1:0", "",
                         site="one-per-dir")  # fmt: skip
    try:
        first.wait(lambda s: s is not None, 20, "the first agent up")
        second = subprocess.run(
            [sys.executable, "-m", "agents.cli", "run", str(first.data / "profile.toml"),
             "--data-dir", str(first.data), "--ledger", str(ledger)],
            capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert f"another agent (pid {first.proc.pid}) is running" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.status() is not None  # its control socket is still its own
        first.proc.send_signal(signal.SIGKILL)  # the kernel lets the lock go
        first.proc.wait()
        first.start()
        first.wait(lambda s: s is not None and s["pid"] == first.proc.pid, 20, "restarted")
    finally:
        first.stop()
