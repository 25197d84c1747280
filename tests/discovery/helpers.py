"""Real discovery processes for the integration tests, and a LAN of network namespaces.

`AgentProcess` runs ``python -m mesh.discovery`` (optionally inside a network
namespace) and collects the JSON events it prints, stamped with the test's Trio
clock when they arrive. `NetnsLan` builds hosts joined by a bridge with
169.254/16 addresses and tears everything down by name, even after a failure;
`netns_lan` is the one way tests get one (their ``lan`` fixtures wrap it).
Processes are only ever stopped by their own PID.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

import pytest
import trio

Event = dict[str, Any]


class AgentProcess:
    """One discovery process and the events it printed so far."""

    def __init__(self, label: str, process: trio.Process) -> None:
        self.label = label
        self.process = process
        self.events: list[Event] = []
        self.spawned_at = trio.current_time()
        self.eof = False
        self._changed = trio.Event()

    @property
    def pid(self) -> int:
        """The process id (of python itself: `ip netns exec` execs in place)."""
        return self.process.pid

    @property
    def ready(self) -> Event:
        """The ``ready`` event (raises if it has not arrived)."""
        return next(e for e in self.events if e["event"] == "ready")

    @property
    def peer_id(self) -> str:
        """Our peer id, from the ``ready`` event."""
        return str(self.ready["peer_id"])

    def peers(self) -> set[str]:
        """The peer ids currently in this agent's table, replayed from its events."""
        current: set[str] = set()
        for event in self.events:
            if event["event"] == "added":
                current.add(event["peer_id"])
            elif event["event"] == "removed":
                current.discard(event["peer_id"])
        return current

    async def read_events(self) -> None:
        """Read stdout until EOF, appending parsed events (run in a nursery)."""
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                event["at"] = trio.current_time()
                self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()
        self.eof = True
        self._changed.set()

    async def wait_for(self, predicate: Callable[[AgentProcess], bool], timeout: float) -> float:
        """Wait until `predicate(self)` holds; returns the Trio time it first did."""
        with trio.fail_after(timeout):
            while not predicate(self):
                if self.eof:
                    raise AssertionError(f"{self.label} closed its output: {self.events[-3:]}")
                await self._changed.wait()
        return trio.current_time()

    async def wait_event(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        """The first event matching `predicate`, waiting for it."""
        found: list[Event] = []

        def check(agent: AgentProcess) -> bool:
            found[:] = [e for e in agent.events if predicate(e)][:1]
            return bool(found)

        await self.wait_for(check, timeout)
        return found[0]

    async def wait_peers(self, peer_ids: set[str], timeout: float) -> float:
        """Wait until the table holds exactly `peer_ids`; returns the Trio time."""
        return await self.wait_for(lambda a: a.peers() == peer_ids, timeout)

    def signal(self, signum: int) -> None:
        """Send a signal to this process (by its PID)."""
        if self.process.returncode is None:
            os.kill(self.pid, signum)


def discovery_command(
    interface: str, port: int, *, name: str, ttl: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of one discovery process on `interface`."""
    return [
        sys.executable,
        "-m",
        "mesh.discovery",
        "--interface",
        interface,
        "--mailbox",
        f"tcp://{interface}:{port}",
        "--name",
        name,
        "--ttl",
        str(ttl),
        *extra,
    ]


class StartAgent(Protocol):
    """Starts one agent process: ``await start(label, command, netns=None)``."""

    async def __call__(
        self, label: str, command: list[str], netns: str | None = None
    ) -> AgentProcess: ...


@asynccontextmanager
async def agents_running() -> AsyncIterator[StartAgent]:
    """Yield a `StartAgent`; every process still running on exit is killed by PID."""
    started: list[AgentProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(label: str, command: list[str], netns: str | None = None) -> AgentProcess:
            if netns is not None:
                command = ["ip", "netns", "exec", netns, *command]
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
            agent = AgentProcess(label, process)
            started.append(agent)
            nursery.start_soon(agent.read_events)
            return agent

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                for agent in started:
                    if agent.process.returncode is None:
                        agent.signal(signal.SIGKILL)
                for agent in started:
                    await agent.process.wait()


def browsing_at(agent: AgentProcess) -> float:
    """Wall time at which the agent's zeroconf was up and browsing."""
    return float(agent.ready["browsing_at"])


def added(agent: AgentProcess, peer_id: str) -> Event:
    """The first ``added`` event of `peer_id` in `agent`."""
    return next(e for e in agent.events if e["event"] == "added" and e["peer_id"] == peer_id)


async def meshed(agents: list[AgentProcess], timeout: float) -> None:
    """Wait until every agent is ready and lists (at least) all the others."""
    for agent in agents:
        await agent.wait_event(lambda e: e["event"] == "ready", timeout)
    for agent in agents:
        others = {o.peer_id for o in agents if o is not agent}

        def knows_all(a: AgentProcess, others: set[str] = others) -> bool:
            return a.peers() >= others

        await agent.wait_for(knows_all, timeout)


async def stop(agent: AgentProcess, timeout: float = 10) -> Event:
    """SIGTERM the agent and wait for its ``closed`` event and exit status 0."""
    agent.signal(signal.SIGTERM)
    closed = await agent.wait_event(lambda e: e["event"] == "closed", timeout)
    with trio.fail_after(timeout):
        assert await agent.process.wait() == 0
    return closed


# --------------------------------------------------------------------------- namespaces


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run the tests as root to include them)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


class NetnsLan:
    """`hosts` network namespaces, each with eth0 on one bridge, in 169.254.77.0/24.

    Host i (1-based) is namespace ``{prefix}-h{i}`` with address 169.254.77.i/16;
    the bridge lives in ``{prefix}-sw`` with ports ``p{i}``. Names carry the test
    process id so parallel runs do not collide.
    """

    def __init__(self, hosts: int, prefix: str | None = None) -> None:
        self.prefix = prefix or f"m2m{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.hosts = [f"{self.prefix}-h{i}" for i in range(1, hosts + 1)]

    def address(self, host: int) -> str:
        """The IPv4 address of host `host` (1-based)."""
        return f"169.254.77.{host}"

    def create(self) -> None:
        """Create the switch and the hosts; raises CalledProcessError with ip's message."""
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts, start=1):
            _ip("netns", "add", host)
            _ip("-n", host, "link", "set", "lo", "up")
            _ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                "netns", self.switch)  # fmt: skip
            _ip("-n", host, "addr", "add", f"{self.address(i)}/16", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{i}", "up")

    def set_link(self, host: int, up: bool) -> None:
        """Cut (or restore) host `host`'s cable at the switch port."""
        _ip("-n", self.switch, "link", "set", f"p{host}", "up" if up else "down")

    def block_multicast(self) -> None:
        """Make the switch forward no multicast, like many managed and cloud networks.

        No port floods multicast frames any more, so mDNS (224.0.0.251, ff02::fb)
        never reaches another host, while unicast and broadcast (ARP) still do.
        Multicast looped back inside one host is untouched.
        """
        for port in range(1, len(self.hosts) + 1):
            _ip("-n", self.switch, "link", "set", f"p{port}", "type", "bridge_slave",
                "mcast_flood", "off")  # fmt: skip

    def destroy(self) -> list[str]:
        """Delete every namespace of this LAN that exists; returns ip's complaints."""
        errors = []
        for name in [*self.hosts, self.switch]:
            result = _ip("netns", "del", name, check=False)
            if result.returncode and "No such file" not in result.stderr:
                errors.append(f"{name}: {result.stderr.strip()}")
        return errors

    def existing(self) -> list[str]:
        """Names of this LAN's namespaces that still exist."""
        listed = _ip("netns", "list").stdout.split()
        return [name for name in [*self.hosts, self.switch] if name in listed]


@contextmanager
def netns_lan(hosts: int, prefix: str | None = None) -> Iterator[NetnsLan]:
    """A `NetnsLan` of `hosts` hosts for the block, torn down whatever happens.

    Skips the calling test (with ip's message) when the namespaces cannot be
    built here, and fails it if any are left behind afterwards.
    """
    lan = NetnsLan(hosts, prefix)
    lan.destroy()  # leftovers of a killed earlier run with the same pid
    try:
        lan.create()
    except subprocess.CalledProcessError as exc:
        lan.destroy()
        pytest.skip(f"cannot build network namespaces here: {exc.stderr.strip()}")
    try:
        yield lan
    finally:
        errors = lan.destroy()
        assert not lan.existing(), f"namespaces left behind: {lan.existing()} {errors}"


def seconds(value: float) -> str:
    """Format a duration for the measurement lines the tests print."""
    return "inf" if math.isinf(value) else f"{value:.3f} s"
