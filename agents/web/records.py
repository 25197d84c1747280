"""The dashboard's view of the agent's anchored records: the streams with their anchored
ranges (`mesh proof --list`), refreshed at most every `max_age` seconds, and one record's
proof as `mesh proof` exports it. Both read the agent's store through a connection of
their own, in a worker thread, as `mesh proof` does beside a running agent.
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import trio

from agents.proof_cli import open_records
from mesh.errors import MeshError
from mesh.identity import parse_peer_id


class RecordsView:
    """Streams and proofs of the agent whose data dir is `data_dir`."""

    def __init__(self, data_dir: Path, max_age: float = 10.0) -> None:
        """Nothing read until asked."""
        self.data_dir = data_dir
        self.max_age = max_age
        self._listing: list[dict[str, Any]] = []
        self._at = -float("inf")
        self._limiter = trio.CapacityLimiter(1)

    def _list(self) -> list[dict[str, Any]]:
        with ExitStack() as stack:
            try:
                return open_records(self.data_dir, stack).listing()
            except MeshError:  # nothing logged yet
                return []

    async def listing(self) -> list[dict[str, Any]]:
        """Per (agent, stream, origin): records, anchored and archived ranges."""
        if trio.current_time() - self._at >= self.max_age:
            self._listing = await trio.to_thread.run_sync(self._list, limiter=self._limiter)
            self._at = trio.current_time()
        return self._listing

    def _proof(self, agent: bytes, stream: str, seq: int) -> str:
        with ExitStack() as stack:
            return open_records(self.data_dir, stack).proof(agent, stream, seq).to_json()

    async def proof(self, agent: str, stream: str, seq: int) -> str:
        """The proof of record `seq` of `agent`'s `stream`, as JSON text.

        MeshError (record not found, not anchored yet) or ValueError (a bad agent id)
        says why there is none."""
        agent_id = parse_peer_id(agent)
        return await trio.to_thread.run_sync(
            self._proof, agent_id, stream, seq, limiter=self._limiter
        )
