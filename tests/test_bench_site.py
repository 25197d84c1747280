"""The site-scale scenario (`bench.site`): its counters, its rows, and one small site
end to end (real `mesh run` agents, a crowd process, real mDNS: in a namespace as root)."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from bench.site import (
    BASELINE,
    QUICK,
    SIZES,
    Settings,
    SiteRun,
    bench,
    rows,
)
from bench.site_agent import MdnsCounters

RUN = SiteRun(
    peers=32, table_s=1.5, paid_s=2.0, up_s=1.0, listed=32, sessions=1, sessions_peak=1,
    rss_mb=100.0,
    cpu_pct=1.0, mdns_in_bps=500.0, mdns_out_bps=0.0, mdns_in_pps=1.0, mdns_out_pps=0.0,
    window_s=120.0, ttl=120, crowd_register_s=0.5, crowd_nodes_s=0.1, netns=True,
    wall_s=60.0, timeout=90.0,
)  # fmt: skip


def test_counters_tell_our_echo_from_what_others_sent() -> None:
    counters = MdnsCounters()
    counters.sent(b"query")
    counters.received(b"query")  # the loopback echo of what we sent
    counters.received(b"query")  # the same bytes again: someone else's
    counters.received(b"answer!")
    assert counters.counts == {
        "sent_packets": 1, "sent_bytes": 5, "received_packets": 2, "received_bytes": 12,
        "echo_packets": 1, "echo_bytes": 5,
    }  # fmt: skip


def test_rows_hold_ratios_to_the_same_run_baseline_and_the_targets() -> None:
    big = replace(RUN, peers=1000, table_s=math.inf, rss_mb=150.0, sessions_peak=999, cpu_pct=3.0)
    table = {row.metric: row for row in rows([RUN, big], RUN)}
    rss = table["RSS, 1000 peers"]
    assert rss.ratio == pytest.approx(1.5) and rss.verdict == "short"
    assert table["RSS, 32 peers"].verdict == "pass"
    assert table["sessions held (most at once), 1000 peers"].verdict == "short"
    assert table["sessions held (most at once), 32 peers"].verdict == "pass"
    assert table["idle CPU, 1000 peers"].verdict == "short"
    missing = table["table complete from start, 1000 peers (did not happen)"]
    assert missing.value == RUN.timeout and missing.verdict == "short"
    assert table["mDNS out, 1000 peers"].baseline is None  # no ratio to nothing
    assert table["mDNS in+out, 32 peers"].verdict == "pass"
    assert all(math.isfinite(row.value) for row in table.values())


def test_the_quick_run_measures_one_site_end_to_end(
    quick_bench: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The suite's quick run (shared with the other scenarios' tests) ran a site of 200
    peers -- 199 announced peers with listening nodes, a quarter of them offering the
    feed above the buyer's price, and the seller -- around one real buyer: it lists them
    all, buys from the seller, and never holds a session with anyone else, its only
    trading partner (before sessions on demand it dialled every peer with a higher id);
    every other figure is there and plausible."""
    _result, out = quick_bench
    site = json.loads((out / "results.json").read_text())["scenarios"]["site"]
    assert site["status"] == "ok", site["error"]
    values = {row["metric"]: row["value"] for row in site["rows"]}
    print(f"\nMEASURE {values}")
    assert values["peers listed at the end, 200 peers"] == 200, values
    assert 0 < values["first paid unit from start, 200 peers"] < QUICK.timeout, values
    assert values["sessions held (most at once), 200 peers"] == 1, values  # the seller
    assert 0 < values["table complete from start, 200 peers"] < QUICK.timeout, values
    assert 20 < values["RSS, 200 peers"] < 2000, values
    assert 0 <= values["idle CPU, 200 peers"] < 200, values
    assert values["mDNS in+out, 200 peers"] > 0, values


@pytest.mark.slow
def test_the_full_sizes() -> None:
    """The suite's sizes (32 .. 1 000 peers, ~8 min): every size completes its run
    and is reported beside the 32-peer baseline (the test asserts that the figures are
    there, never a speed: `python -m bench site` judges the targets)."""
    runs = bench(SIZES, Settings())
    assert [r.peers for r in runs] == list(SIZES) and runs[0].peers == BASELINE
    for row in rows(runs, runs[0]):
        assert math.isfinite(row.value) and row.value >= 0, row
    for run in runs:
        assert run.listed > 0.9 * run.peers and run.sessions_peak > 0 and run.rss_mb > 0, run
