"""How late the agent's Trio loop runs its tasks: a task sleeps `interval` and measures
how much longer it took. A loop busy with signatures and commits shows it here first,
long before payments slow down visibly (`m2mesh_event_loop_lag_seconds`).
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class LoopLag:
    """The last sample and the largest since start, in seconds."""

    lag_seconds: float = 0.0
    lag_max_seconds: float = 0.0


class LagMonitor:
    """Samples the loop's lag every `interval` seconds while `run` runs."""

    def __init__(self, interval: float = 0.5) -> None:
        """Nothing measured yet (both zero)."""
        self.interval = interval
        self.lag = LoopLag()

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            start = trio.current_time()
            await trio.sleep(self.interval)
            late = max(0.0, trio.current_time() - start - self.interval)
            self.lag = LoopLag(late, max(late, self.lag.lag_max_seconds))
