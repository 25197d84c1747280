"""A full disk pauses an agent's business, never the agent (issue 24, docs/ARCHITECTURE.md §10).

A seller runs as a real `mesh run` process with its data dir on a 2 MiB tmpfs; a buyer
runs beside it on the ordinary disk. The test fills the tmpfs while the buyer orders
readings (each one a signed-log write on the seller): the seller stays up, says why in
`mesh status`, refuses new orders and holds the running one; once the filler is gone
it resumes by itself, the held order finishes and a new one completes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.control import request
from tests.discovery.agents import FEED, RunningAgent, sessions
from tests.reliability.procs import free_port, new_ledger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted whatever happens (skips when it cannot be mounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until the file system is full; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 512):
            chunk = bytes(size)
            while True:
                try:
                    n = os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n
                if n < size:
                    break
    finally:
        os.close(fd)
    return written


def buy(agent: RunningAgent, seller: str, units: int, timeout: float) -> dict[str, Any]:
    """Ask the buyer agent to buy `units` readings from `seller` within `timeout` s (it
    waits that long for a unit too: a seller paused by a full disk is not silent here)."""
    command = {"cmd": "buy", "service": "vibration", "kind": "data-feed", "tick": 0.05,
               "units": units, "peer": seller, "max_price": 2, "timeout": timeout,
               "deadline": timeout}  # fmt: skip
    return request(agent.data / "control.sock", command, timeout=timeout + 15)


def storage(agent: RunningAgent) -> dict[str, Any]:
    status = agent.status()
    assert status is not None
    return dict(status["storage"])


def test_a_full_disk_pauses_the_seller_and_it_resumes_by_itself(
    tmp_path: Path, small_disk: Path
) -> None:
    ledger = new_ledger(tmp_path / "ledger.db")
    port = free_port()
    seller = RunningAgent(tmp_path, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                          FEED, data_dir=small_disk / "seller")  # fmt: skip
    buyer = RunningAgent(tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", "",
                         funds=5_000_000,
                         static_peers=[f"{seller.peer_id}@tcp://127.0.0.1:{port}"])  # fmt: skip
    held: list[dict[str, Any]] = []
    # More readings than the last block of the record segment can take (appends that
    # need no new block still succeed on a full file system: ~4 KB, a few readings).
    holder = threading.Thread(target=lambda: held.append(buy(buyer, seller.peer_id, 200, 60)))
    try:
        buyer.wait(lambda s: seller.peer_id in sessions(s), 30, "a session with the seller")
        first = buy(buyer, seller.peer_id, 3, 20)  # opens the channel while the disk is fine
        assert (first["state"], first["delivered"]) == ("done", 3), first

        filler = small_disk / "filler"
        fill(filler)
        holder.start()  # its readings soon cannot be logged: the seller holds the order
        seller.wait(lambda s: not s.get("storage", {}).get("healthy", True), 15, "a storage fault")
        fault = storage(seller)
        # SQLite's words, or the kernel's when a record segment's append is refused.
        assert any(
            full in fault["reason"] for full in ("disk is full", "No space left on device")
        ), fault
        human = subprocess.run(
            [sys.executable, "-m", "agents.cli", "status", "--data-dir", str(seller.data)],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )  # fmt: skip
        assert "storage: FAULT since" in human.stdout, human.stdout + human.stderr
        refused = buy(buyer, seller.peer_id, 3, 2)
        assert refused["delivered"] == 0, refused
        assert refused["reason"].startswith("refused: storage fault: "), refused
        assert holder.is_alive() and seller.proc.poll() is None  # held, and alive

        filler.unlink()
        seller.wait(lambda s: s["storage"]["healthy"], 15, "storage to work again")
        holder.join(timeout=20)
        assert held and (held[0]["state"], held[0]["delivered"]) == ("done", 200), held
        again = buy(buyer, seller.peer_id, 3, 20)
        assert (again["state"], again["delivered"]) == ("done", 3), again
        assert storage(seller)["faults"] >= 1
    finally:
        seller.stop()
        buyer.stop()
        holder.join(timeout=5)
    assert seller.proc.returncode == 0, seller.log_path.read_text()[-3000:]
    # However many writes failed: one line for the fault, one for its end.
    assert len(seller.log_lines(r"storage fault")) == 1, seller.log_lines(r"storage")
    assert len(seller.log_lines(r"storage works again")) == 1
