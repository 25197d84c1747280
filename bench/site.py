"""Site scenario: what one agent pays as the site around it grows.

    python -m bench site [--quick]       (in the suite: 32, 128, 512, 1 000 peers, ~6 min)
    python -m bench.site [--sizes 32,1000] [--settle 20] [--window 60] [--ttl 120]
                         [--timeout 60] [--no-netns] [--out runs.json]

Issue #33: a factory site holds hundreds to thousands of machines; an agent keeps
every one in its table but holds sessions only with its trading partners, and each
agent re-announces itself at a pace that keeps a listener's mDNS bounded. For each
size N this starts, in a fresh network namespace when run as root (else on the shared
127.0.0.1, with a site name of its own):

1. a crowd (`bench.site_crowd`) of N-1 peers from one process: signed announcements
   from one zeroconf instance, a listening node per peer (none buys from the agents,
   so none dials them), pricier offers of the feed, and the steady-state mDNS
   announcements of N-1 other agents;
2. one real seller, `mesh run` on the shipped vibration-sensor feed (1 sat, the
   cheapest), waited for until it lists the crowd (at most 20 s: from ~500 peers
   its table takes minutes);
3. the agent measured: `mesh run` with the robot cell's vibration want (3 units, so
   it is idle after buying them) on a funded local ledger.

From the agent's spawn it polls its status (the control socket, every 0.2 s) for

* **table complete**: the status lists all N peers (crowd and seller);
* **first paid unit**: a unit of its want delivered and paid (cheapest provider);

(either is reported as "did not happen", at the `timeout`, when it did not within it),

then, after `settle` seconds, over a `window` (60 s by default: the crowd's
announcements are spread evenly over their period, so a window sees their rate):

* **RSS**: VmRSS at the end of the window (/proc/PID/status);
* **idle CPU**: user+system time over the window (/proc/PID/stat), % of one core;
* **sessions held** at the end of the window (status ``sessions``);
* **mDNS bytes/s in and out**: the agent's own counts of the UDP payload zeroconf
  received and sent on port 5353 (`bench.site_agent`; its multicast echoes apart).

Each figure is reported beside the same agent among 32 peers measured in the same run
(the baseline; ratio = value / value at 32), against the targets of issue #33 at
1 000 peers: table < 5 s, first unit < 3 s, sessions = trading partners only (< 10),
RSS < 1.3x and idle CPU < 2 % of a core, mDNS < 2 kB/s in and out together.

Limits: the crowd answers mDNS from one responder (fewer, larger packets than N
machines would send) and models the other agents' announcements rather than running
them; crowd nodes hold no sessions among themselves; every process shares two cores,
so a thousand-peer crowd's own CPU slows the agent measured (read ratios, not
absolutes); on loopback all peers share one source address, so the agent's per-source
limits are lifted (`bench.site_agent`). ``--quick`` uses a short settle and window:
its mDNS and CPU figures mean little.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.profile import load_profile
from bench.procs import module_cmd
from bench.report import Row, Target
from bench.site_procs import (
    BUYER_BODY,
    SELLER_BODY,
    Agent,
    Crowd,
    Netns,
    netns_possible,
    network_of,
)
from mesh.chain.ledger import LocalLedger

SCENARIO = "site"
SIZES = (32, 128, 512, 1000)
QUICK_SIZES = (200,)
"""The smoke run (CI's `python -m bench --quick`): one site of 200 peers alone (its own
baseline), with the short settings of `QUICK`: the agent lists them all, buys, and holds
a session with its seller only; the rest of the figures exist and mean little."""
BASELINE = 32
FUNDS = 1_000_000
SELLER_WAIT = 20.0
TARGET_TABLE_S = 5.0
TARGET_PAID_S = 3.0
TARGET_SESSIONS = 9
TARGET_RSS_RATIO = 1.3
TARGET_CPU_PCT = 2.0
TARGET_MDNS_BPS = 2000.0


@dataclass(frozen=True)
class Settings:
    """How long each phase of a run lasts (see the module docstring)."""

    settle: float = 20.0
    window: float = 60.0
    ttl: int | None = None
    """None: the profile's default (120 s); else written into both agents' profiles."""
    timeout: float = 60.0
    """Longest wait for the table or the first unit before they are reported missing."""
    netns: bool = True
    """Run in a fresh network namespace when this process may create one."""


QUICK = Settings(settle=0.5, window=4.0, ttl=4, timeout=30.0)
"""A TTL of 4 s puts the agents' announcements in a short window: both mDNS
directions carry traffic in a run of ~15 s."""


@dataclass(frozen=True)
class SiteRun:
    """One agent among `peers` peers: what it took and what it held."""

    peers: int
    table_s: float
    """Spawn to its status listing all peers (inf: not within the timeout)."""
    paid_s: float
    """Spawn to the first unit delivered and paid (inf: not within the timeout)."""
    up_s: float
    """Spawn to the first status answer."""
    listed: int
    """Peers listed at the end of the window."""
    sessions: int
    """Sessions held at the end of the window."""
    sessions_peak: int
    """The most sessions seen held from the start to the window (status every ~0.2-2 s)."""
    rss_mb: float
    cpu_pct: float
    mdns_in_bps: float
    mdns_out_bps: float
    mdns_in_pps: float
    mdns_out_pps: float
    window_s: float
    ttl: int
    crowd_register_s: float
    crowd_nodes_s: float
    netns: bool
    wall_s: float
    timeout: float
    """How long startup steps were waited for."""


def measure(peers: int, settings: Settings, root: Path) -> SiteRun:
    """Run the scenario for one site of `peers` peers in `root` (see the module docstring)."""
    if peers < 2:
        raise ValueError("a site needs the seller and at least one crowd peer")
    started = time.monotonic()
    ledger = root / "ledger.db"
    LocalLedger.create(ledger).close()
    site = f"bench-{os.getpid()}"
    seller = Agent(root, "seller", SELLER_BODY, site=site, ledger=ledger, ttl=settings.ttl)
    buyer = Agent(
        root, "buyer", BUYER_BODY, site=site, ledger=ledger, ttl=settings.ttl, funds=FUNDS
    )
    profile = load_profile(buyer.profile, data_dir=buyer.data)
    ttl = profile.discovery_ttl
    window = settings.window
    netns = Netns(f"m2site-{os.getpid()}-{peers}") if settings.netns and netns_possible() else None
    prefix = netns.prefix() if netns else []
    agents = (seller, buyer)
    crowd: Crowd | None = None
    try:
        crowd = Crowd(
            [*prefix, *module_cmd(
                "bench.site_crowd", "--peers", str(peers - 1), "--site", site,
                "--network", network_of(ledger), "--ttl", str(ttl), "--nodes", "--chatter",
                "--heartbeat", str(profile.heartbeat), "--dead-after", str(profile.dead_after),
            )],
            root / "crowd.log",
        )  # fmt: skip
        ready = crowd.wait_event("ready", settings.timeout + peers * 0.2)
        expected = {*ready["peers"], seller.peer_id}
        seller.start(prefix)
        # Let the seller's own start-up burst pass before the buyer's: until it lists the
        # crowd, or for at most SELLER_WAIT s (from ~500 peers its table takes minutes).
        if seller.wait(bool, settings.timeout) is None:
            raise TimeoutError(f"the seller did not answer within {settings.timeout} s")
        seller.wait(lambda s: len(s["peers"]) >= peers - 1, min(SELLER_WAIT, settings.timeout))
        buyer.start(prefix)
        up_s, table_s, paid_s, peak = _startup(buyer, expected, settings.timeout)
        settled = time.monotonic() + settings.settle
        while time.monotonic() < settled:
            polled = buyer.status()
            peak = max(peak, len((polled or {}).get("sessions", [])))
            time.sleep(min(2.0, max(0.0, settled - time.monotonic())))
        cpu0, counts0, at0 = buyer.cpu_seconds(), buyer.mdns(), time.monotonic()
        time.sleep(window)
        cpu1, counts1, at1 = buyer.cpu_seconds(), buyer.mdns(), time.monotonic()
        rss_kb = buyer.rss_kb()
        status = buyer.status(timeout=30.0) or {}
        span = at1 - at0

        def rate(key: str) -> float:
            return (counts1[key] - counts0[key]) / span

        return SiteRun(
            peers=peers,
            table_s=table_s,
            paid_s=paid_s,
            up_s=up_s,
            listed=len(expected & {p["peer_id"] for p in status.get("peers", [])}),
            sessions=len(status.get("sessions", [])),
            sessions_peak=max(peak, len(status.get("sessions", []))),
            rss_mb=rss_kb / 1024,
            cpu_pct=100 * (cpu1 - cpu0) / span,
            mdns_in_bps=rate("received_bytes"),
            mdns_out_bps=rate("sent_bytes"),
            mdns_in_pps=rate("received_packets"),
            mdns_out_pps=rate("sent_packets"),
            window_s=span,
            ttl=int(ready.get("ttl", ttl)),
            crowd_register_s=float(ready["register_s"]),
            crowd_nodes_s=float(ready["nodes_s"]),
            netns=netns is not None,
            wall_s=time.monotonic() - started,
            timeout=settings.timeout,
        )
    finally:
        for agent in agents:
            agent.stop_signal()  # both shut down at once
        for agent in agents:
            agent.stop()
        if crowd is not None:
            crowd.stop()
        if netns is not None:
            netns.delete()


def _startup(agent: Agent, expected: set[str], timeout: float) -> tuple[float, float, float, int]:
    """Seconds from `agent`'s spawn to its first status, its complete table and its
    first paid unit (inf for what did not happen within `timeout`), and the most
    sessions it held meanwhile."""
    up = table = paid = math.inf
    peak = 0
    deadline = agent.spawned + timeout
    while time.monotonic() < deadline and (table == math.inf or paid == math.inf):
        status = agent.status()
        now = time.monotonic() - agent.spawned
        if status is not None:
            up = min(up, now)
            peak = max(peak, len(status["sessions"]))
            if table == math.inf and expected <= {p["peer_id"] for p in status["peers"]}:
                table = now
            wants = status["wants"]
            if paid == math.inf and wants and wants[0]["delivered"] >= 1 and wants[0]["paid"]:
                paid = now
        time.sleep(0.2)
    return up, table, paid, peak


def bench(sizes: Sequence[int], settings: Settings) -> list[SiteRun]:
    """Measure each size in turn (each in a fresh directory and namespace)."""
    runs: list[SiteRun] = []
    for peers in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"m2site-{peers}-"))
        try:
            run = measure(peers, settings, root)
        except BaseException:
            print(f"site: N={peers} failed; its logs are in {root}", file=sys.stderr)
            raise
        shutil.rmtree(root, ignore_errors=True)
        runs.append(run)
        print(_line(run), flush=True)
    return runs


def _line(run: SiteRun) -> str:
    return (
        f"N={run.peers:4d}  table {run.table_s:6.2f} s  first unit {run.paid_s:6.2f} s"
        f"  sessions {run.sessions_peak:4d} (end {run.sessions})  listed {run.listed:4d}"
        f"  RSS {run.rss_mb:6.1f} MB"
        f"  idle CPU {run.cpu_pct:5.2f} %  mDNS in {run.mdns_in_bps:8.0f} B/s"
        f" out {run.mdns_out_bps:7.0f} B/s  (window {run.window_s:.0f} s, TTL {run.ttl} s;"
        f" crowd registered in {run.crowd_register_s:.2f} s; {run.wall_s:.0f} s in all"
        f"{', netns' if run.netns else ', shared loopback'})"
    )


def _row(
    run: SiteRun,
    metric: str,
    values: tuple[float, float],
    unit: str,
    target: Target | None,
    name: str,
) -> Row:
    """One figure of `run` and its baseline value; a startup step that did not happen
    is shown as the time waited for it, and a baseline of 0 (or missing) gives no ratio."""
    value, base = values
    missing = math.isinf(value)
    return Row(
        SCENARIO,
        f"{metric}, {run.peers} peers" + (" (did not happen)" if missing else ""),
        run.timeout if missing else value,
        unit,
        base if base > 0 and math.isfinite(base) else None,
        name,
        target,
        {"peers": run.peers, "window_s": round(run.window_s, 1), "ttl": run.ttl},
    )


def rows(runs: Sequence[SiteRun], baseline: SiteRun) -> list[Row]:
    """Result rows: each figure at each size, beside `baseline` (the same agent among
    fewer peers, same run), with the issue's targets."""
    name = f"same agent, {baseline.peers} peers"
    b = baseline
    result: list[Row] = []
    for r in runs:
        figures: list[tuple[str, tuple[float, float], str, Target | None]] = [
            ("table complete from start", (r.table_s, b.table_s), "s",
             Target(max_value=TARGET_TABLE_S)),
            ("first paid unit from start", (r.paid_s, b.paid_s), "s",
             Target(max_value=TARGET_PAID_S)),
            ("sessions held (most at once)", (r.sessions_peak, b.sessions_peak), "sessions",
             Target(max_value=TARGET_SESSIONS)),
            ("peers listed at the end", (r.listed, b.listed), "peers",
             Target(min_value=r.peers)),
            ("RSS", (r.rss_mb, b.rss_mb), "MB", Target(max_ratio=TARGET_RSS_RATIO)),
            ("idle CPU", (r.cpu_pct, b.cpu_pct), "% core", Target(max_value=TARGET_CPU_PCT)),
            ("mDNS in", (r.mdns_in_bps, b.mdns_in_bps), "B/s", None),
            ("mDNS out", (r.mdns_out_bps, b.mdns_out_bps), "B/s", None),
            ("mDNS in+out", (r.mdns_in_bps + r.mdns_out_bps, b.mdns_in_bps + b.mdns_out_bps),
             "B/s", Target(max_value=TARGET_MDNS_BPS)),
            ("crowd registration (one zeroconf)", (r.crowd_register_s, b.crowd_register_s),
             "s", None),
        ]  # fmt: skip
        result += [_row(r, metric, v, unit, target, name) for metric, v, unit, target in figures]
    return result


def run(quick: bool) -> list[Row]:
    """The suite's entry: sizes 32..1 000 (quick: 200 alone, short windows)."""
    sizes = QUICK_SIZES if quick else SIZES
    settings = QUICK if quick else Settings()
    runs = bench(sizes, settings)
    return rows(runs, runs[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.site``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="peers per site")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--ttl", type=int, help="discovery TTL of the agents (default 120)")
    parser.add_argument("--timeout", type=float, default=60.0, help="longest startup wait")
    parser.add_argument("--no-netns", action="store_true", help="use the shared loopback")
    parser.add_argument("--out", type=Path, help="write the runs as JSON to this file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if BASELINE not in sizes:
        sizes.insert(0, BASELINE)  # the baseline is always measured in the same run
    sizes.sort()
    settings = Settings(args.settle, args.window, args.ttl, args.timeout, not args.no_netns)
    runs = bench(sizes, settings)
    baseline = next(r for r in runs if r.peers == BASELINE)
    from bench.report import text_table

    print(text_table(rows(runs, baseline)))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
    return 0


__all__ = ["QUICK", "Settings", "SiteRun", "bench", "measure", "rows", "run"]


if __name__ == "__main__":
    sys.exit(main())
