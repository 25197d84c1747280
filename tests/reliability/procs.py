"""Starting and reading the reliability helper processes from a Trio test.

Processes run through `tests.discovery.helpers.agents_running` (the same harness as
the discovery tests, namespaces included): every one still running when the block
ends is killed by its PID. This module adds the command line of our helper process,
waiting for its JSON events, and a polite stop that collects its last report.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from mesh.chain.ledger import LocalLedger
from tests.discovery.helpers import AgentProcess, Event
from tests.reliability.agent import peak_rss_kib

ROOT = Path(__file__).resolve().parents[2]


def command(role: str, *args: object) -> list[str]:
    """The command line of one helper process (runnable inside a namespace too)."""
    return [
        "env",
        f"PYTHONPATH={ROOT}",
        sys.executable,
        "-m",
        "tests.reliability.proc",
        role,
        *(str(a) for a in args),
    ]


def free_port() -> int:
    """A TCP port free on loopback right now (for a listener that must keep its port
    across a restart)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_ledger(path: Path) -> Path:
    """Create an empty LocalLedger file at `path`."""
    LocalLedger.create(path).close()
    return path


async def event(agent: AgentProcess, name: str, timeout: float = 60) -> Event:
    """The first event called `name` from `agent`, waiting for it."""
    return await agent.wait_event(lambda e: e.get("event") == name, timeout)


def events(agent: AgentProcess, name: str) -> list[Event]:
    """Every event called `name` so far."""
    return [e for e in agent.events if e.get("event") == name]


async def stop(agent: AgentProcess, report: str, timeout: float = 20) -> Event:
    """SIGTERM `agent`, wait for its `report` event and its exit; return the report."""
    agent.signal(signal.SIGTERM)
    result = await event(agent, report, timeout)
    with trio.fail_after(timeout):
        await agent.process.wait()
    return result


async def wait_exit(agent: AgentProcess, timeout: float = 60) -> int:
    """Wait for `agent` to exit by itself; returns its exit status."""
    with trio.fail_after(timeout):
        return await agent.process.wait()


def kill(agent: AgentProcess) -> None:
    """kill -9, by PID."""
    agent.signal(signal.SIGKILL)


def alive(agent: AgentProcess) -> bool:
    """Whether the process is still running."""
    return agent.process.poll() is None


def rss(agent: AgentProcess) -> int:
    """The process's peak resident memory so far (VmHWM, KiB)."""
    return peak_rss_kib(agent.pid)


def fd_count(pid: int) -> int:
    """How many file descriptors the process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


Report = dict[str, Any]
