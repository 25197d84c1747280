"""Load: 64 buyers paying one provider at once, on loopback, then everyone closes.

The buyers are 64 independent agents -- each its own identity, store, wallet, node,
session and channel -- spread over four processes (64 interpreters would spend the
run importing bsv-sdk on two cores). Each opens a channel and pays 1 sat at a steady
rate for the run's duration, then waits for the last acknowledgement and closes.

Proved: zero lost payments -- every buyer's signed total is acknowledged, closed on
the ledger and held by the provider, to the satoshi, and the ledger balances.
Reported: payments, the p50/p99/max acknowledgement latency over all of them, and
the provider's peak memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.chain.ledger import LocalLedger
from tests.discovery.helpers import agents_running
from tests.reliability.budget import CI_LOAD, SLOW_LOAD
from tests.reliability.invariants import acked_of, check_channel, check_ledger, stored_records
from tests.reliability.procs import command, event, new_ledger, rss, stop

PROCESSES = 4
RATE = 20.0
"""Payments per second per buyer: 64 buyers make 1 280/s at the provider."""


async def load(tmp_path: Path, buyers: int, seconds: float) -> dict[str, Any]:
    ledger = new_ledger(tmp_path / "ledger.db")
    s_dir = tmp_path / "provider"
    per_process = buyers // PROCESSES
    async with agents_running() as start:
        provider = await start(
            "provider",
            command("provider", "--data", s_dir, "--ledger", ledger, "--heartbeat", 1.0,
                    "--dead-after", 30),
        )  # fmt: skip
        hello = await event(provider, "ready")
        idle = rss(provider)
        crowds = [
            await start(
                f"buyers{i}",
                command(
                    "buyers",
                    "--data",
                    tmp_path / f"crowd{i}",
                    "--ledger",
                    ledger,
                    "--connect",
                    hello["address"],
                    "--peer",
                    hello["peer_id"],
                    "--count",
                    per_process,
                    "--seconds",
                    seconds,
                    "--rate",
                    RATE,
                    "--capacity",
                    200_000,
                    "--close",
                    "--timeout",
                    120,
                ),
            )
            for i in range(PROCESSES)
        ]
        started = trio.current_time()
        results = [await event(crowd, "done", seconds + 240) for crowd in crowds]
        elapsed = trio.current_time() - started
        peak = rss(provider)
        report = await stop(provider, "stats")
    done = [b for r in results for b in r["buyers"]]
    assert len(done) == buyers
    # Zero lost payments: each buyer's every payment acknowledged and closed.
    for b in done:
        assert b["total"] == b["acked_total"] == b["payments"], b
        assert b["state"] == "closed", b
    provider_records = stored_records(s_dir)
    assert len(provider_records) == buyers
    with LocalLedger.open(ledger) as chain:
        chain.mine()
    facts = check_ledger(ledger)
    paid = 0
    for b in done:
        cid = bytes.fromhex(b["channel_id"])
        payee = provider_records[cid]
        assert payee.total == b["total"]
        [payer] = [
            r for crowd in range(PROCESSES)
            for d in sorted((tmp_path / f"crowd{crowd}").iterdir())
            for c, r in stored_records(d).items() if c == cid
        ]  # fmt: skip
        settled = check_channel(facts, payer, payee, acked_bounds=acked_of(payer, payee))
        assert settled.payee_total == b["total"]
        paid += b["total"]
    assert report["paid"] and sum(report["paid"].values()) == paid
    latencies = sorted(r["p99_ms"] for r in results)
    figures = {
        "buyers": buyers,
        "seconds": seconds,
        "payments": sum(r["payments"] for r in results),
        "payments_per_s": round(sum(r["payments"] for r in results) / seconds),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": latencies[-1],
        "max_ms": max(r["max_ms"] for r in results),
        "provider_rss_idle_kib": idle,
        "provider_peak_rss_kib": peak,
        "buyer_process_peak_rss_kib": max(r["peak_rss_kib"] for r in results),
        "wall_seconds": round(elapsed, 1),
    }
    print(f"\nload: {figures}")
    return figures


async def test_64_buyers_short_run(tmp_path: Path) -> None:
    """CI: 64 buyers for a few seconds; zero lost payments."""
    await load(tmp_path, *CI_LOAD)


@pytest.mark.slow
async def test_64_buyers_for_60_seconds(tmp_path: Path) -> None:
    """Slow: 64 buyers for 60 s; zero lost payments, p99 and peak memory reported."""
    await load(tmp_path, *SLOW_LOAD)
