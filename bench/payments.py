"""Payments scenario: durable channel updates/s between two agent processes.

    python -m bench payments [--quick]

For in-flight windows 1, 16, 64 and 1024 a buyer process pays a seller process
1 sat per update over a real channel on a LocalLedger (payer signs, payee
verifies, both persist before sending/acknowledging), and reports updates/s
and update->ack latency p50/p99. The baseline, measured before and after each
run, is bsv-sdk sign + verify of one sighash in one process (the ceiling of a single
core doing both halves). Also reported: bytes on chain per channel (funding +
close) and amortised per payment, against one P2PKH transaction per payment.

Window 1 is latency-bound, not CPU-bound: each update waits for the last one's
acknowledgement, so it is also shown against the floor under it, raw pynng round
trips of a payment-sized message between two processes on the same two CPUs (sync
API, no crypto, no Trio), measured right before each window-1 run. Windows 64 and
1024 are also shown against the payee's own bound: `verify_digest` alone on one core
(each update is verified there), measured like the ceiling, before and after the run.

The payer and the payee each run on a CPU of their own (`bench.pinned`), as two
agents on two machines do; ``M2MESH_BENCH_PIN=0`` lets the scheduler place them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.messaging import round_trips
from bench.primitives import sign_verify_ceiling, verify_ceiling
from bench.procs import ROOT, pinned_cmd, two_cpus
from bench.report import Param, Row, Target, percentile, quantiles
from mesh.chain.ledger import LocalLedger

SCENARIO = "payments"
P2PKH_PAYMENT_TX_BYTES = 226  # 1 input, 2 outputs: the one-tx-per-payment alternative
TARGETS = {
    1: Target(min_value=1_500),
    64: Target(min_value=15_000, min_ratio=1.0),
    1024: Target(min_value=15_000, min_ratio=1.0),
}
CPU_BOUND = frozenset(w for w, t in TARGETS.items() if t.min_ratio is not None)
"""Windows held to the sign+verify ceiling: these are also measured against the
payee's verify alone."""
P99_TARGETS = {1: Target(max_value=2.0)}
"""Ack latency p99 in ms: below 2 ms at window 1 (issue 6)."""
BOUNDS = {
    "floor": ("the transport alone", "raw pynng round trips"),
    "verify_bound": ("the payee's verify alone", "verify_digest, one core"),
}
"""The bound a window's rate is also shown against, where the run measured it: result
key -> (what the row is against, the baseline's name)."""
PACKET_BYTES = 160
"""About one encrypted ChannelPay (or ChannelAck) packet: the raw round trip's size."""


def run_window(window: int, count: int, work: Path, cpus: tuple[int, int] | None) -> dict[str, Any]:
    """One seller + one buyer process at `window`, each on its own CPU of `cpus`
    (if given); returns the buyer's result."""
    seller_cpu, buyer_cpu = cpus or (None, None)
    ledger_path = work / f"ledger-{window}.db"
    LocalLedger.create(ledger_path).close()
    seller = subprocess.Popen(
        pinned_cmd(
            seller_cpu,
            "tests.channel.channel_proc",
            "seller",
            str(work / f"s{window}"),
            str(ledger_path),
            "tcp://127.0.0.1:0",
        ),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert seller.stdout is not None
        hello = json.loads(seller.stdout.readline())
        buyer = subprocess.run(
            pinned_cmd(
                buyer_cpu,
                "bench._pay_worker",
                str(work / f"b{window}"),
                str(ledger_path),
                hello["address"],
                hello["peer_id"],
                str(window),
                str(count),
            ),
            stdout=subprocess.PIPE,
            text=True,
            timeout=600,
            check=True,
            cwd=ROOT,
        )
        result: dict[str, Any] = json.loads(buyer.stdout.strip().splitlines()[-1])
    finally:
        seller.terminate()
        seller.communicate(timeout=30)
    with LocalLedger.open(ledger_path) as ledger:
        sizes = [len(ledger.raw_tx(result[k]) or b"") for k in ("funding_txid", "close_txid")]
    result["chain_bytes"] = sum(sizes)
    return result


def _rows(
    window: int,
    result: dict[str, Any],
    ceiling: float,
    rates: str,
    cpus: tuple[int, int] | None,
) -> list[Row]:
    """Rate and ack latency of one window's (median) run; `rates` lists every run's."""
    latencies = sorted(result["latencies"])
    params: dict[str, Param] = {
        "window": window,
        "updates": result["count"],
        "runs": rates,
        "cpus": f"payee {cpus[0]}, payer {cpus[1]}" if cpus else "unpinned",
    }
    target = TARGETS.get(window)
    rows = [
        Row(
            SCENARIO,
            f"updates/s, window {window}",
            result["rate"],
            "/s",
            ceiling,
            "sign+verify",
            target,
            params,
        ),
        Row(
            SCENARIO,
            f"ack latency p50, window {window}",
            percentile(latencies, 0.5) * 1e3,
            "ms",
            params=params,
            cdfs={f"window {window}": quantiles(latencies, 1e3)},
        ),
        Row(
            SCENARIO,
            f"ack latency p99, window {window}",
            percentile(latencies, 0.99) * 1e3,
            "ms",
            target=P99_TARGETS.get(window),
            params=params,
        ),
    ]
    rows += [
        Row(
            SCENARIO,
            f"updates/s, window {window}, against {against}",
            result["rate"],
            "/s",
            result[key],
            baseline_name,
            params=params,
        )
        for key, (against, baseline_name) in BOUNDS.items()
        if key in result
    ]
    return rows


def run(quick: bool) -> list[Row]:
    """Every window, beside the sign+verify ceiling; returns the result rows.

    The full run measures every window three times, interleaved, with fresh
    processes and ledgers, and reports the run with the median ratio: on this
    machine one pair's rate at window 64 swings by 2x from one run to the next.
    The ceiling is measured right before and right after each run, and each run is
    held to the mean of the two: on a shared machine the ceiling itself drifts by
    20 % within a minute.
    """
    count = 500 if quick else 2_000
    cpus = two_cpus() if os.environ.get("M2MESH_BENCH_PIN", "1") != "0" else None
    windows = (1, 16, 64, 1024)
    repeat, short, long = (1, 200, 1_000) if quick else (3, 2_000, 20_000)
    runs: dict[int, list[dict[str, Any]]] = {window: [] for window in windows}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(repeat):
            for window in windows:
                updates = short if window == 1 else long
                work = Path(tmp) / f"{attempt}"
                work.mkdir(exist_ok=True)
                extra: dict[str, float] = {}
                if window == 1:
                    rtts = round_trips("pynng", updates, PACKET_BYTES, cpus)
                    extra["floor"] = len(rtts) / sum(rtts)
                bound = window in CPU_BOUND
                before = sign_verify_ceiling(count)
                verify_before = verify_ceiling(count) if bound else 0.0
                result = run_window(window, updates, work, cpus)
                ceiling = (before + sign_verify_ceiling(count)) / 2
                if bound:
                    extra["verify_bound"] = (verify_before + verify_ceiling(count)) / 2
                runs[window].append({**result, **extra, "count": updates, "ceiling": ceiling})
    rows: list[Row] = []
    for window, results in runs.items():
        results.sort(key=lambda r: float(r["rate"]) / float(r["ceiling"]))
        median = results[len(results) // 2]
        rates = ", ".join(
            f"{r['rate']:.0f} ({r['rate'] / r['ceiling']:.2f}x)"
            for r in sorted(results, key=lambda r: r["rate"])
        )
        rows += _rows(window, median, median["ceiling"], rates, cpus)
    # Chain bytes of the last channel (window 1024, the most payments on one channel).
    per_channel, updates = median["chain_bytes"], median["count"]
    rows += [
        Row(SCENARIO, "bytes on chain per channel (funding + close)", per_channel, "B"),
        Row(
            SCENARIO,
            f"bytes on chain per payment ({updates} payments, one channel)",
            per_channel / updates,
            "B",
            P2PKH_PAYMENT_TX_BYTES,
            "one tx each",
        ),
    ]
    return rows


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main([SCENARIO, *sys.argv[1:]]))
