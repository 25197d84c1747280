"""Real `mesh run` agents for the discovery+session tests, optionally in a netns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from agents.control import ControlError, request
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.identity import Identity, save_identity
from mesh.store import Store

ROOT = Path(__file__).resolve().parents[2]
FEED = """
[[services]]
id = "vibration"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.05
credit = 2
handler = "builtin:vibration"
"""
WANT = """
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.05
max_price = 2
units = 1000000
budget = 1000000
prepay = 2
"""

WANT_40 = WANT.replace("units = 1000000\nbudget = 1000000", "units = 40\nbudget = 1000")
"""40 readings and done (the buyer of a test that settles and checks the ledger)."""


class RunningAgent:
    """One `mesh run` process and its data dir (``root/name``, or `data_dir`: then its
    log is ``root/name.log``, off that file system)."""

    def __init__(self, root: Path, ledger: Path, name: str, interface: str, mailbox: str,
                 body: str, netns: str | None = None, funds: int = 0, *,
                 identity: Identity | None = None,
                 static_peers: Sequence[str] = (),
                 data_dir: Path | None = None, site: str = "default",
                 capacity: int = 2_000_000,
                 program: Sequence[str] = ("agents.cli",)) -> None:  # fmt: skip
        self.data = data_dir or root / name
        self.log_path = root / f"{name}.log" if data_dir else self.data / "agent.log"
        identity = identity or Identity.generate()
        save_identity(identity, self.data / "identity.key")
        self.peer_id = identity.peer_id
        statics = ", ".join(f'"{peer}"' for peer in static_peers)
        profile = self.data / "profile.toml"
        profile.write_text(
            f'[agent]\nname = "{name}"\nsite = "{site}"\nmailbox = "{mailbox}"\nheartbeat = 0.5\n'
            f'dead_after = 2.0\n\n[discovery]\ninterfaces = ["{interface}"]\nttl = 3\n'
            f"static_peers = [{statics}]\n\n[channels]\ncapacity = {capacity}\n{body}"
        )
        if funds:
            with Store(self.data / "agent.db") as store:
                address = Wallet(store, identity).new_address()
            with LocalLedger.open(ledger) as chain:
                chain.faucet(p2pkh_script(address), funds)
        self.ledger, self.netns = ledger, netns
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.start(program)

    def start(self, program: Sequence[str] = ("agents.cli",)) -> None:
        """Start `mesh run` on this agent's profile and data dir (again, after a kill
        -9); `program` is the module to run and its leading arguments (a patched agent
        in `tests.reliability.cheating_seller`)."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", *program, "--log-level", "info", "run",
             str(self.data / "profile.toml"), "--data-dir", str(self.data),
             "--ledger", str(self.ledger)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        """The agent's status, or None while it is not answering."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text()[-3000:]
            raise AssertionError(f"{self.data.name} exited {self.proc.returncode}:\n{tail}")
        try:
            return request(self.data / "control.sock", {"cmd": "status"}, timeout=5)
        except (ControlError, OSError, json.JSONDecodeError):
            return None

    def wait(self, predicate: Any, timeout: float, what: str) -> float:
        """Poll status until `predicate(status)`; returns when it held (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and predicate(status):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"{self.data.name}: {what} not within {timeout} s: {self.status()}")

    def log_lines(self, pattern: str) -> list[str]:
        """Lines of the agent's log matching the regular expression `pattern`."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if re.search(pattern, line)]

    async def wait_status(self, predicate: Any, timeout: float, what: str) -> float:
        """`wait` off the Trio thread; returns when the predicate held (monotonic)."""
        return await trio.to_thread.run_sync(self.wait, predicate, timeout, what)

    def stop(self) -> None:
        """SIGTERM, then kill if needed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=12)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def sessions(status: dict[str, Any]) -> set[str]:
    return set(status["sessions"])


def peers(status: dict[str, Any]) -> set[str]:
    return {p["peer_id"] for p in status["peers"]}


def delivered(status: dict[str, Any]) -> int:
    return sum(w["delivered"] for w in status["wants"])
