"""The agent the reliability helper processes run, and what they report.

`reliable_agent` is `tests.channel.harness.agentlet` with the two things the runtime
(`agents.runtime.Agent`) adds that these tests need: configurable node timers (a cut
cable must be noticed in seconds, not minutes) and session events wired to the
channel manager the way `Agent._watch_sessions` wires them (`peer_connected` on every
new session, so a payer resends its latest payment and a payee re-acknowledges).
`keep_session` is the redial loop a buyer runs. Processes report one JSON object per
stdout line through `emit`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from agents.channels import ChannelConfig, PaidCallback
from mesh.net.node import ConnectError, Node, NodeConfig
from mesh.wire import Frame
from tests.channel.harness import Agentlet, agentlet


def emit(event: str, **fields: object) -> None:
    """Write one JSON line ``{"event": event, ...}`` in a single write(2).

    print() may hand the text and its newline to the pipe in separate writes; a
    kill -9 (or another writer on the same pipe) between them left two events on
    one line. One write of less than PIPE_BUF bytes is atomic on a pipe.
    """
    line = (json.dumps({"event": event, **fields}) + "\n").encode()
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line)


def peak_rss_kib(pid: int | None = None) -> int:
    """The process's peak resident set size (VmHWM) in KiB, from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise LookupError("no VmHWM in /proc/PID/status")


def node_config(heartbeat: float, dead_after: float) -> NodeConfig:
    """Fast timers for fault tests: heartbeats, silence, handshake and redial backoff."""
    return NodeConfig(
        heartbeat_interval=heartbeat,
        dead_after=dead_after,
        handshake_timeout=min(2.0, dead_after),
        connect_attempts=1,
        reconnect_min_ms=50,
        reconnect_max_ms=500,
    )


@asynccontextmanager
async def reliable_agent(
    data_dir: Path,
    ledger_path: Path,
    *,
    listen: str = "tcp://127.0.0.1:0",
    config: NodeConfig | None = None,
    channels: ChannelConfig | None = None,
    on_paid: PaidCallback | None = None,
    intercept: Callable[[str, Frame], Awaitable[bool]] | None = None,
) -> AsyncIterator[Agentlet]:
    """Run one agent (node, channel manager, dispatcher, session watcher).

    `intercept(peer_id, frame)` sees every frame first and may consume it (returns
    True): how a hostile role departs from the protocol while reusing the rest.
    """
    async with agentlet(
        data_dir,
        ledger_path,
        listen=listen,
        config=channels,
        on_paid=on_paid,
        node_config=config or NodeConfig(),
        intercept=intercept,
        watch_sessions=True,
    ) as me:
        yield me


async def keep_session(
    node: Node,
    address: str,
    peer_id: str,
    *,
    on_change: Callable[[str, Any], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hold a session with `peer_id` at `address`: dial now, and redial whenever it
    drops (the runtime's connector does the same for discovered peers).

    `on_change("up"|"down", detail)` reports every transition. Returns never.
    """
    started = False
    while True:
        session = node.session(peer_id)
        if session is None:
            try:
                session = await node.connect(address, expect_peer=peer_id)
            except ConnectError as exc:
                if on_change is not None:
                    on_change("dial-failed", str(exc))
                await trio.sleep(0.2)
                continue
            if on_change is not None:
                on_change("up", session.core.index.hex())
        if not started:
            task_status.started()
            started = True
        await session.closed.wait()
        if on_change is not None:
            on_change("down", session.close_reason)
