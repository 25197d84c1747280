"""The Acme P1's services: print time sold tick by tick, and its nozzle temperature.

The printer is simulated, so the package runs anywhere: where a real one would talk to
the printer's controller (run or pause the job, read the thermistor), a comment says
so. The handlers never see payments: the agent calls `print_time` once per paid tick,
`pause` when payment stops or the order ends, and `nozzle_temperature` once per reading
sold. `ctx.state` is kept per service across orders: the job's progress lives there.
"""

from __future__ import annotations

import math

import trio

from agents.services.vendor import FeedContext, ToolContext, vendor
from mesh.readings import Reading


@vendor.tool("acme-print-time")
async def print_time(ctx: ToolContext) -> None:
    """One paid tick of printing: the job runs for `ctx.tick` seconds."""
    ctx.state["printing"] = True
    await trio.sleep(ctx.tick)  # a real printer: the job runs (resumed by the first tick)
    ctx.state["printed_s"] = ctx.state.get("printed_s", 0.0) + ctx.tick


@print_time.on_stop
async def pause(ctx: ToolContext) -> None:
    """Payment stopped or the order ended: pause the job, the head parked, the bed warm."""
    ctx.state["printing"] = False
    printed = ctx.state.get("printed_s", 0.0)
    ctx.log.info("acme-printer: job paused after %.1f s of printing", printed)


@vendor.feed("acme-nozzle-temp")
async def nozzle_temperature(ctx: FeedContext) -> Reading:
    """One nozzle temperature reading (degrees Celsius, UCUM ``Cel``) per tick."""
    await trio.sleep(ctx.tick)
    n = ctx.state["readings"] = ctx.state.get("readings", 0) + 1
    celsius = 215.0 + 1.2 * math.sin(n / 4) + 0.3 * math.sin(n * 2.3)  # a real one: the sensor
    return Reading.of("nozzle_temp", round(celsius, 2), "Cel")
