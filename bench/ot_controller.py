"""The `ot` scenario's machine: the simulated controller, driven on a schedule.

    python -m bench.ot_controller PORT

Serves `agents.ot.controller.ControllerServer` (a real asyncua server) on
``opc.tcp://127.0.0.1:PORT/m2mesh/controller``, prints ``{"endpoint": URL}`` and then
takes one JSON command a line on stdin, answering each with one JSON line:

- ``{"rate": R}``: from now on change ``Machine.Vibration`` R times a second, on an
  absolute schedule: the n-th change at a random instant of the n-th 1/R slot after the
  start (a late change does not push the later ones back; 0 stops). Random, because a
  fixed period would keep every change at one phase of a subscription's publishing
  cycle (10 ms is two 5 ms cycles), and the latency measured would depend on when the
  subscription was made. Each write's SourceTimestamp is the wall clock just before
  it is written: the instant a reading's latency is counted from. Answers
  what the previous rate wrote: ``{"written": N, "seconds": S, "behind": B}`` (B: the
  changes still due when the rate changed, i.e. how far it fell behind).
- end of input: stop the server and exit.

The bench drives the values itself (rather than ``mesh controller --rate``, whose
changes are a sleep apart, so slower than asked) and writes straight to the node on
the asyncio loop: the writer must cost as little as possible, for it is not what is
measured. It must never measure anything itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any

import trio

from agents.ot.controller import ControllerServer
from agents.ot.portal import AsyncioPortal

NODE = "Vibration"
WRITE_BATCH = 64
"""Writes at most this many due changes back to back before yielding to the loop
(the server's publishing must run meanwhile)."""


async def drive(node: Any, rate: float, progress: dict[str, float]) -> None:
    """Write `node` `rate` times a second on an absolute schedule (asyncio side),
    counting into `progress` until cancelled."""
    from asyncua import ua

    start = time.monotonic()  # asyncio's loop clock, and readable from Trio
    progress.update(written=0, started=start, behind=0)
    n = 0
    due = start + random.random() / rate
    while True:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        burst = 0
        while burst < WRITE_BATCH and due <= time.monotonic():
            stamp: Any = datetime.now(UTC)
            await node.write_value(
                ua.DataValue(
                    ua.Variant(2.0 + (n % 1000) / 1000, ua.VariantType.Double),
                    SourceTimestamp=stamp,
                    ServerTimestamp=stamp,
                )
            )
            n += 1
            burst += 1
            due = start + (n + random.random()) / rate
        progress["written"] = n
        progress["behind"] = max(0, int((time.monotonic() - start) * rate) - n)
        if burst == WRITE_BATCH:
            await asyncio.sleep(0)  # the server's publishing runs too


class Driver:
    """The one schedule running now, if any (Trio side)."""

    def __init__(self, portal: AsyncioPortal, node: Any) -> None:
        self._portal, self._node = portal, node
        self._scope: trio.CancelScope | None = None
        self._progress: dict[str, float] = {}

    async def change(self, nursery: trio.Nursery, rate: float) -> dict[str, float]:
        """Stop the current schedule, start one at `rate` (0: none); what the stopped
        one wrote."""
        progress = self._progress
        if self._scope is not None:
            self._scope.cancel()
            await trio.sleep(0.05)  # its asyncio task ends
        report = {
            "written": int(progress.get("written", 0)),
            "seconds": time.monotonic() - progress["started"] if progress else 0.0,
            "behind": int(progress.get("behind", 0)),
        }
        self._scope, self._progress = None, {}
        if rate > 0:
            self._scope = trio.CancelScope()
            nursery.start_soon(self._run, self._scope, rate, self._progress)
        return report

    async def _run(self, scope: trio.CancelScope, rate: float, progress: dict[str, float]) -> None:
        with scope:
            await self._portal.run(drive, self._node, rate, progress)


async def main(port: int) -> None:
    """Serve the controller and obey stdin (see the module docstring)."""
    async with AsyncioPortal.open() as portal:
        server = ControllerServer(portal, port=port)
        await server.start()
        driver = Driver(portal, server.nodes[NODE])
        print(json.dumps({"endpoint": server.endpoint}), flush=True)
        try:
            async with trio.open_nursery() as nursery:
                async for line in trio.wrap_file(sys.stdin):
                    report = await driver.change(nursery, float(json.loads(line)["rate"]))
                    print(json.dumps(report), flush=True)
                await driver.change(nursery, 0)
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
