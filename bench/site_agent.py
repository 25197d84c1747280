"""The agent under measurement in `bench.site`: `mesh run` with mDNS byte counters.

    M2MESH_SITE_COUNTERS=FILE python -m bench.site_agent [mesh arguments, e.g. run ...]

This runs ``agents.cli.main`` unchanged in what it does, with two additions that
exist only in this process:

* **mDNS counters.** zeroconf moves every mDNS datagram through asyncio's selector
  datagram transport; `sendto` and the read callback of that transport class are
  wrapped to count the datagrams and bytes this agent sends from and receives on
  port 5353 (UDP payload, no IP/UDP headers). Multicast loops back to the sender,
  so a received datagram equal to one sent in the last few hundred is counted as our
  own echo, apart from what others sent. On SIGUSR1 the counts are written as JSON
  to FILE (atomically), so reading them costs the agent nothing between reads.
  This is a per-process count that needs no root and no namespace: on a shared
  loopback every process sends from 127.0.0.1:5353, so the packets cannot be told
  apart on the wire.
* **Per-source limits lifted.** A node caps the connections and handshakes per
  network source (`mesh.net.sources`; 128 connections) so one machine cannot take a
  node over. On loopback every peer is the source 127.0.0.1, which on a real site
  would be a thousand different addresses, so the agent's `NodeConfig` is given
  limits no benchmark reaches. Nothing else of the agent is changed.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mesh.net.node import NodeConfig

COUNTERS_ENV = "M2MESH_SITE_COUNTERS"
MDNS_PORT = 5353
ECHO_MEMORY = 512
"""Sent datagrams remembered to recognise their loopback echo."""
UNLIMITED = 1_000_000


@dataclass(frozen=True)
class SiteNodeConfig(NodeConfig):
    """`NodeConfig` with the per-source limits out of reach (see the module docstring)."""

    max_connections_per_source: int = UNLIMITED
    handshakes_per_source_per_s: float = float(UNLIMITED)
    handshake_burst_per_source: float = float(UNLIMITED)


class MdnsCounters:
    """Datagrams and bytes sent and received on port 5353 (zeroconf's loop thread
    counts; the signal handler on the main thread only reads)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(
            ("sent_packets", "sent_bytes", "received_packets", "received_bytes"), 0
        ) | dict.fromkeys(("echo_packets", "echo_bytes"), 0)
        self._recent: collections.deque[bytes] = collections.deque()
        self._pending: collections.Counter[bytes] = collections.Counter()

    def sent(self, data: bytes) -> None:
        """Count one datagram sent; remember it to recognise its echo."""
        self.counts["sent_packets"] += 1
        self.counts["sent_bytes"] += len(data)
        self._recent.append(data)
        self._pending[data] += 1
        if len(self._recent) > ECHO_MEMORY:
            old = self._recent.popleft()
            self._pending[old] -= 1
            if self._pending[old] <= 0:
                del self._pending[old]

    def received(self, data: bytes) -> None:
        """Count one datagram received: our own echo, or someone else's."""
        if self._pending.get(data, 0) > 0:
            self._pending[data] -= 1
            self.counts["echo_packets"] += 1
            self.counts["echo_bytes"] += len(data)
            return
        self.counts["received_packets"] += 1
        self.counts["received_bytes"] += len(data)

    def dump(self, path: Path, seq: int) -> None:
        """Write the counts (and `seq`, so a reader knows this dump is new) to `path`."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps({"seq": seq, **self.counts}))
        temporary.replace(path)


COUNTERS = MdnsCounters()


class _CountingProtocol:
    """Stands between a datagram transport and zeroconf's protocol, counting."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        COUNTERS.received(bytes(data))
        self.inner.datagram_received(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _is_mdns(transport: Any) -> bool:
    sockname = transport.get_extra_info("sockname")
    return isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[1] == MDNS_PORT


def install_counters() -> None:
    """Wrap asyncio's selector datagram transport (before zeroconf creates any)."""
    transport_class: Any = importlib.import_module("asyncio.selector_events")
    transport_class = transport_class._SelectorDatagramTransport
    original_sendto = transport_class.sendto
    original_read_ready = transport_class._read_ready

    def sendto(self: Any, data: Any, addr: Any = None) -> None:
        if _is_mdns(self):
            COUNTERS.sent(bytes(data))
        original_sendto(self, data, addr)

    def read_ready(self: Any) -> None:
        if not isinstance(self._protocol, _CountingProtocol) and _is_mdns(self):
            self._protocol = _CountingProtocol(self._protocol)
        original_read_ready(self)

    transport_class.sendto = sendto
    transport_class._read_ready = read_ready


def lift_source_limits() -> None:
    """Make the agent's node use `SiteNodeConfig` (see the module docstring)."""
    runtime = importlib.import_module("agents.runtime")
    vars(runtime)["NodeConfig"] = SiteNodeConfig


def main(argv: list[str] | None = None) -> int:
    """Install the counters and the limits, then run ``mesh`` with `argv`."""
    path = os.environ.get(COUNTERS_ENV)
    install_counters()
    lift_source_limits()
    if path:
        dumps = [0]

        def on_usr1(signum: int, frame: FrameType | None) -> None:
            dumps[0] += 1
            COUNTERS.dump(Path(path), dumps[0])

        signal.signal(signal.SIGUSR1, on_usr1)
    from agents.cli import main as mesh_main

    return mesh_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
