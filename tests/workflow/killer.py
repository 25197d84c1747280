"""`mesh run` that SIGKILLs itself at one named step of a work order, for the kill -9
matrix of the escrow (`test_work_order_crashes`).

``python -m tests.workflow.killer POINT -- MESH-ARGS...`` runs the real agent
(`agents.cli.main(MESH-ARGS)`) with one method wrapped; the real method still runs:

``save:ROLE:STATE:before|after[:N]``  around the (N-th) save of a row of ROLE in STATE
``broadcast:N:before|after``       around the N-th escrow broadcast (funding, release,
                                   return or refund) of this process

``fail:ROLE:STATE:N``              the first N saves of a row of ROLE in STATE fail as
                                   a full disk does (sqlite3.OperationalError)

Points may be joined with commas. The line ``KILLING <point>`` (``FAILING <point>``)
goes to stderr (the agent's log) just before the kill (the failure).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from typing import Any

from agents import cli
from agents.workflows.store import Saved, WorkOrderStore
from mesh.chain.local import LocalChain


def _die(point: str) -> None:
    print(f"KILLING {point}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    kind, *rest = point.split(":")
    if kind == "fail":
        role, state, times = rest
        left = {"n": int(times)}
        failing_save = WorkOrderStore.save

        def save_or_fail(self: WorkOrderStore, saved: Saved) -> None:
            if (saved.role, saved.state) == (role, state) and left["n"] > 0:
                left["n"] -= 1
                print(f"FAILING {point}", file=sys.stderr, flush=True)
                raise sqlite3.OperationalError("database or disk is full")
            failing_save(self, saved)

        WorkOrderStore.save = save_or_fail  # type: ignore[method-assign]
        return
    if kind == "save":
        role, state, when, *nth = rest
        real_save = WorkOrderStore.save
        seen = {"n": 0}

        def save(self: WorkOrderStore, saved: Saved) -> None:
            if (saved.role, saved.state) == (role, state):
                seen["n"] += 1
            hit = (saved.role, saved.state) == (role, state) and seen["n"] == int(
                nth[0] if nth else 1
            )
            if hit and when == "before":
                _die(point)
            real_save(self, saved)
            if hit and when == "after":
                _die(point)

        WorkOrderStore.save = save  # type: ignore[method-assign]
        return
    nth, when = int(rest[0]), rest[1]
    real_broadcast = LocalChain.broadcast_raw
    calls = {"n": 0}

    async def broadcast_raw(self: LocalChain, raw: bytes) -> Any:
        calls["n"] += 1
        if calls["n"] == nth and when == "before":
            _die(point)
        result = await real_broadcast(self, raw)
        if calls["n"] == nth and when == "after":
            _die(point)
        return result

    LocalChain.broadcast_raw = broadcast_raw  # type: ignore[method-assign]


def main() -> None:
    points, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: killer POINT[,POINT...] -- MESH-ARGS..."
    for point in points.split(","):
        arm(point)
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main()
