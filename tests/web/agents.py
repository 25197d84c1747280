"""A seller and a buyer as real `mesh run` processes streaming payments: the dashboard
tests' subject (`tests.discovery.agents.RunningAgent`)."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity
from tests.discovery.agents import FEED, ROOT, WANT, RunningAgent, sessions

ROOT_DIR = ROOT
"""The source checkout (the tests run `mesh` from it)."""


@dataclass
class Stream:
    """A seller and a buyer of its vibration feed (20 readings/s, paid one by one)."""

    seller: RunningAgent
    buyer: RunningAgent

    def url(self, agent: RunningAgent) -> str:
        """The agent's dashboard URL, from its status."""
        status = agent.status()
        assert status is not None and status["dashboard"], status
        return str(status["dashboard"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET `url`: the status code and the body (error statuses too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def get_json(url: str) -> Any:
    code, body = get(url)
    assert code == 200, (url, code, body[:200])
    return json.loads(body)


@contextmanager
def streaming(
    root: Path,
    seller_extra: str = "",
    buyer_extra: str = "",
    seller_identity: Identity | None = None,
) -> Iterator[Stream]:
    """Start both, wait until readings flow, stop both at the end."""
    ledger = root / "ledger.db"
    LocalLedger.create(ledger).close()
    port = free_port()
    site = f"web-{os.getpid()}-{port}"  # away from any other test's agents
    seller = RunningAgent(root, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                          FEED + seller_extra, site=site, identity=seller_identity)  # fmt: skip
    buyer = RunningAgent(root, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0",
                         WANT + buyer_extra, funds=2_000_000, site=site,
                         static_peers=[f"{seller.peer_id}@tcp://127.0.0.1:{port}"])  # fmt: skip
    try:
        buyer.wait(lambda s: seller.peer_id in sessions(s), 30, "a session with the seller")
        buyer.wait(lambda s: s["wants"][0]["delivered"] >= 5, 30, "readings flowing")
        yield Stream(seller, buyer)
    finally:
        buyer.stop()
        seller.stop()
