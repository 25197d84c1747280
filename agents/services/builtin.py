"""Simulated machines for the demo and the tests: a spindle, a vibration sensor, an
inspection station. Deterministic given their state, cheap, and honest about time.
(docs/ARCHITECTURE.md §6)"""

from __future__ import annotations

import json
import math

import trio

from agents.services.vendor import ServiceContext, vendor
from mesh.readings import Reading


@vendor.tool("spindle")
async def spindle(ctx: ServiceContext) -> None:
    """One tick of spindle time: the simulated mill cuts for `tick` seconds."""
    ctx.state["running"] = True
    await trio.sleep(ctx.tick)
    ctx.state["cut_seconds"] = ctx.state.get("cut_seconds", 0.0) + ctx.tick


@spindle.on_stop
async def spindle_stop(ctx: ServiceContext) -> None:
    """Payment stopped or the lease ended: the spindle halts."""
    ctx.state["running"] = False
    ctx.state["stops"] = ctx.state.get("stops", 0) + 1


@vendor.feed("vibration")
async def vibration(ctx: ServiceContext) -> Reading:
    """One vibration reading (RMS velocity, mm/s) every `tick` seconds."""
    await trio.sleep(ctx.tick)
    n = ctx.state["readings"] = ctx.state.get("readings", 0) + 1
    value = round(2.0 + 0.5 * math.sin(n / 5) + 0.1 * math.sin(n * 1.7), 4)
    return Reading.of("rms_velocity", value, "mm/s")


@vendor.call("inspection")
async def inspection(ctx: ServiceContext, request: bytes) -> bytes:
    """A quality inspection of the part named in the request."""
    await trio.sleep(min(ctx.tick, 0.2))
    part = request.decode(errors="replace") or "part"
    verdict = "PASS" if sum(request) % 7 else "REWORK"
    return json.dumps({"part": part, "verdict": verdict}).encode()
