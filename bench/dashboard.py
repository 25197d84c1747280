"""Dashboard scenario: what a browser watching the dashboards costs a payment stream.

    python -m bench dashboard [--quick]

Real processes: a seller `mesh run` selling a vibration feed and a buyer `mesh run`
buying it flat out (every reading paid for as it arrives), on a fresh LocalLedger; and
headless Debian Chromium (tests/web/browser.py) showing both agents' dashboards, one
window each, live (server-sent events, charts redrawn every second).

The run alternates windows of `Timing.window` seconds without and with the browser
open (off, on, off, on, ...; the first window after start-up is not measured) and
reads, per window, the satoshis the buyer's payments moved (its status's
``channel_stats.sat_paid``, asked for at each window's edges only; a reading costs
1 sat, and the buyer pays ahead in updates of ~32 sat) and the CPU seconds of each
agent process.
Each "on" window is set against the mean of the "off" windows on either side of it
(same run, same machine), and each row is the median of those ratios:

- the payment stream, sat paid/s, with a browser open vs without (target: falls < 5 %,
  ratio >= 0.95);
- CPU seconds per sat paid of the buyer and of the seller, with vs without (target:
  rises < 5 %, ratio <= 1.05): the agent's own cost of serving the dashboard;
- the page's load time (Navigation Timing, loadEventEnd) of each dashboard (< 1 s).

Chromium's own CPU is not the agents' and is not counted, but on this 2-core machine
it competes with them for the cores: the sat paid/s row includes that contention, the
CPU rows do not. Without Chromium (Debian's ``chromium`` and ``chromium-driver``) the
scenario is reported as missing.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Row, Target

SCENARIO = "dashboard"
RATE_TARGET = 0.95
CPU_TARGET = 1.05
LOAD_TARGET_MS = 1000.0
START_SECONDS = 30.0


@dataclass(frozen=True)
class Timing:
    """How long each window is, and how many "on" windows are measured."""

    window: float
    pairs: int


FULL = Timing(window=10.0, pairs=4)
QUICK = Timing(window=3.0, pairs=1)
SELLER = """
[[services]]
id = "vibration"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.0005
credit = 64
handler = "builtin:vibration"
"""
BUYER = """
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.0005
max_price = 2
units = 100000000
budget = 100000000
prepay = 64
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Window:
    """One measured window: sat paid/s, and CPU seconds per sat paid of each agent."""

    browser: bool
    rate: float
    buyer_cpu: float
    seller_cpu: float


def paid(agent: Any) -> int:
    """Satoshis the agent's payments moved so far (1 sat = 1 reading here)."""
    status = agent.status()
    if status is None:
        raise RuntimeError(f"{agent.data.name} does not answer")
    return int(status["channel_stats"]["sat_paid"])


def measure_window(seller: Any, buyer: Any, seconds: float, browser: bool) -> Window:
    """Sat paid and CPU over `seconds` (the browser, if open, stays as it is)."""
    count0, cpu_b0, cpu_s0 = (
        paid(buyer),
        cpu_seconds(buyer.proc.pid),
        cpu_seconds(seller.proc.pid),
    )
    start = time.monotonic()
    time.sleep(seconds)
    count1, cpu_b1, cpu_s1 = (
        paid(buyer),
        cpu_seconds(buyer.proc.pid),
        cpu_seconds(seller.proc.pid),
    )
    took = time.monotonic() - start
    sats = max(count1 - count0, 1)
    return Window(browser, sats / took, (cpu_b1 - cpu_b0) / sats, (cpu_s1 - cpu_s0) / sats)


def load_ms(driver: Any) -> float:
    return float(
        driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            " return n.loadEventEnd - n.startTime;"
        )
    )


def open_dashboards(driver: Any, urls: list[str]) -> list[float]:
    """Open each URL in a window of its own, wait until live; each page's load ms."""
    from tests.web.browser import until

    loads = []
    for i, url in enumerate(urls):
        if i:
            driver.switch_to.new_window("window")
        driver.get(url)
        until(lambda: driver.find_element("id", "connection").text == "live", 15, f"{url} live")
        loads.append(load_ms(driver))
    return loads


def close_dashboards(driver: Any) -> None:
    """Leave one blank window: no page of the agents' is open."""
    handles = driver.window_handles
    for handle in handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(handles[0])
    driver.get("about:blank")


def ratios(windows: list[Window], value: str) -> list[float]:
    """Each "on" window's value over the mean of its neighbouring "off" windows."""
    found = []
    for i, window in enumerate(windows):
        if window.browser and 0 < i < len(windows) - 1:
            before, after = windows[i - 1], windows[i + 1]
            base = (getattr(before, value) + getattr(after, value)) / 2
            if base > 0:
                found.append(getattr(window, value) / base)
    return found


def run(quick: bool) -> list[Row]:
    """Every window (see the module docstring); returns the rows."""
    from tests.web.browser import CHROMEDRIVER, CHROMIUM

    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        from bench.cli import ScenarioMissing

        raise ScenarioMissing("needs Debian's chromium and chromium-driver")
    from mesh.chain.ledger import LocalLedger
    from tests.discovery.agents import RunningAgent, sessions
    from tests.reliability.procs import free_port
    from tests.web.browser import chromium

    timing = QUICK if quick else FULL
    with ExitStack() as stops, tempfile.TemporaryDirectory(prefix="m2mesh-bench-web-") as tmp:
        work = Path(tmp)
        ledger = work / "ledger.db"
        LocalLedger.create(ledger).close()
        site, port = f"bench-web-{os.getpid()}", free_port()
        seller = RunningAgent(work, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                              SELLER, site=site)  # fmt: skip
        stops.callback(seller.stop)
        buyer = RunningAgent(work, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", BUYER,
                             funds=20_000_000, capacity=2_000_000, site=site,
                             static_peers=[f"{seller.peer_id}@tcp://127.0.0.1:{port}"])  # fmt: skip
        stops.callback(buyer.stop)
        buyer.wait(lambda s: seller.peer_id in sessions(s), START_SECONDS, "a session")
        buyer.wait(lambda s: s["wants"][0]["delivered"] > 1000, START_SECONDS, "the stream")
        urls = [str(agent.status()["dashboard"]) for agent in (buyer, seller)]  # type: ignore[index]
        driver = stops.enter_context(chromium())
        measure_window(seller, buyer, timing.window, False)  # warm-up, not counted
        windows: list[Window] = []
        loads: list[float] = []
        for _ in range(timing.pairs):
            windows.append(measure_window(seller, buyer, timing.window, False))
            loads += open_dashboards(driver, urls)
            windows.append(measure_window(seller, buyer, timing.window, True))
            close_dashboards(driver)
        windows.append(measure_window(seller, buyer, timing.window, False))
    off = [w for w in windows if not w.browser]
    on = [w for w in windows if w.browser]
    params: dict[str, int | float | str] = {
        "window_s": timing.window,
        "windows_with_browser": len(on),
        "windows_without": len(off),
        "sat_paid_per_s_without": round(statistics.median(w.rate for w in off)),
        "sat_paid_per_s_with": round(statistics.median(w.rate for w in on)),
    }

    def row(metric: str, value: str, target: Target, unit: str = "x") -> Row:
        found = ratios(windows, value)
        return Row(SCENARIO, metric, statistics.median(found), unit, 1.0,
                   "the same agents, no browser open", target,
                   {**params, "ratios": " ".join(f"{r:.3f}" for r in found)})  # fmt: skip

    return [
        row("payment stream (sat paid/s) with both dashboards open in Chromium", "rate",
            Target(min_ratio=RATE_TARGET)),
        row("buyer CPU per sat paid with its dashboard open", "buyer_cpu",
            Target(max_ratio=CPU_TARGET)),
        row("seller CPU per sat earned with its dashboard open", "seller_cpu",
            Target(max_ratio=CPU_TARGET)),
        Row(SCENARIO, "dashboard page load (Navigation Timing, worst)", max(loads), "ms",
            target=Target(max_value=LOAD_TARGET_MS),
            params={"loads_ms": " ".join(f"{x:.0f}" for x in loads)}),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main([SCENARIO, *sys.argv[1:]]))
