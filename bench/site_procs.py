"""The processes of one site-scale run (`bench.site`): a network namespace, the crowd,
and real agents with their data dirs, profiles, funds and status.

Everything here starts processes and reads /proc; nothing here decides what a
figure means. Processes are stopped only by their own PID; the namespace is
deleted by its name after they are gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from agents.control import ControlError, request
from bench.procs import ROOT, module_cmd
from bench.site_agent import COUNTERS_ENV
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.identity import Identity, save_identity
from mesh.store import Store

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SELLER_BODY = """
[[services]]
id = "vibration"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.1
credit = 2
handler = "builtin:vibration"
"""
"""The seller: the shipped vibration-sensor profile's feed, the cheapest on the site."""

BUYER_BODY = """
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.1
max_price = 2
units = 3
budget = 200
prepay = 1
"""
"""The buyer: the shipped robot cell's vibration want, cut to 3 units so that the agent
is idle (sessions and discovery only) once they are bought."""


def netns_possible() -> bool:
    """Whether this process may create network namespaces (root, with `ip`)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


class Netns:
    """A fresh network namespace whose loopback is up: the run's private LAN, so its
    mDNS never reaches (or hears) anyone else's on this host."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
        )

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside (it execs in place, so the
        child's PID is the program's)."""
        return ["ip", "netns", "exec", self.name]

    def delete(self) -> None:
        """Remove the namespace (after its processes are gone)."""
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


class Crowd:
    """A running `bench.site_crowd` process and the JSON events it printed."""

    def __init__(self, command: Sequence[str], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT
        )
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_event(self, kind: str, timeout: float) -> dict[str, Any]:
        """The first event of `kind`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if event["event"] == kind:
                        return event
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the crowd exited {self.proc.returncode} (see its log)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the crowd sent no {kind!r} within {timeout} s")
                self._changed.wait(min(left, 0.5))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it has not left in `timeout` seconds."""
        _stop(self.proc, timeout)
        self._reader.join(timeout=5)
        self._log.close()


class Agent:
    """A real `mesh run` agent, run by `bench.site_agent` (mDNS counters, no per-source
    caps): its data dir, profile, identity, process and control socket."""

    def __init__(
        self,
        root: Path,
        name: str,
        body: str,
        *,
        site: str,
        ledger: Path,
        ttl: int | None,
        funds: int = 0,
    ) -> None:
        self.name = name
        self.data = root / name
        self.data.mkdir(parents=True)
        identity = Identity.generate()
        save_identity(identity, self.data / "identity.key")
        self.peer_id = identity.peer_id
        self.ledger = ledger
        self.counters = self.data / "mdns.json"
        self.profile = self.data / "profile.toml"
        ttl_line = f"ttl = {ttl}\n" if ttl is not None else ""
        self.profile.write_text(
            f'[agent]\nname = "{name}"\nsite = "{site}"\nmailbox = "tcp://127.0.0.1:0"\n\n'
            f'[discovery]\ninterfaces = ["127.0.0.1"]\n{ttl_line}{body}'
        )
        if funds:
            with Store(self.data / "agent.db") as store:
                address = Wallet(store, identity).new_address()
            with LocalLedger.open(ledger) as chain:
                chain.faucet(p2pkh_script(address), funds)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.spawned = 0.0

    def start(self, prefix: Sequence[str] = ()) -> None:
        """Start ``mesh run`` (inside `prefix`, e.g. a namespace); `spawned` is when."""
        self._log = open(self.data / "agent.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, COUNTERS_ENV: str(self.counters)}
        command = module_cmd(
            "bench.site_agent", "run", str(self.profile), "--data-dir", str(self.data),
            "--ledger", str(self.ledger),
        )  # fmt: skip
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [*prefix, *command], stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )

    @property
    def pid(self) -> int:
        """The agent's process id."""
        assert self.proc is not None
        return self.proc.pid

    def status(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The agent's status (`mesh status --json`), or None while it does not answer;
        raises if the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = (self.data / "agent.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{tail}")
        try:
            return request(self.data / "control.sock", {"cmd": "status"}, timeout=timeout)
        except (ControlError, OSError, json.JSONDecodeError):
            return None

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, every: float = 0.2
    ) -> dict[str, Any] | None:
        """Poll status until `predicate` holds; the status then, or None at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(every)
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU time the agent has used so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_kb(self) -> int:
        """Resident memory now (VmRSS, kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.pid}")

    def mdns(self, timeout: float = 5.0) -> dict[str, int]:
        """The agent's mDNS counters now (it dumps them on SIGUSR1; see bench.site_agent)."""
        before = _seq(self.counters)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _seq(self.counters) > before:
                counts: dict[str, int] = json.loads(self.counters.read_text())
                return counts
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} did not dump its mDNS counters")

    def stop_signal(self) -> None:
        """Ask the agent to shut down (SIGTERM), without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not left in `timeout` seconds."""
        if self.proc is not None:
            _stop(self.proc, timeout)
        if self._log is not None:
            self._log.close()


def _seq(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["seq"])
    except (OSError, ValueError, KeyError):
        return 0


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def network_of(ledger: Path) -> str:
    """The network id (genesis block hash) agents on `ledger` announce."""
    with LocalLedger.open(ledger) as chain:
        return chain.genesis_hash()
