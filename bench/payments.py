"""Payments benchmark: durable channel updates/s between two agent processes.

    python -m bench.payments [--quick] [--out results.json]

For in-flight windows 1, 16, 64 and 1024 a buyer process pays a seller process
1 sat per update over a real channel on a LocalLedger (payer signs, payee
verifies, both persist before sending/acknowledging), and reports updates/s
and update->ack latency p50/p99. The baseline, measured in the same run, is
bsv-sdk sign + verify of one sighash in one process (the ceiling of a single
core doing both halves). Also reported: bytes on chain per channel (funding +
close) and amortised per update, against one P2PKH transaction per payment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bsv.keys import PrivateKey

from mesh.chain.ledger import LocalLedger

P2PKH_PAYMENT_TX_BYTES = 226  # 1 input, 2 outputs: the one-tx-per-payment alternative
TARGETS = {1: 1_500, 64: 15_000, 1024: 15_000}


def sign_verify_ceiling(count: int) -> float:
    """sign + verify of a 32-byte digest, back to back, in this process."""
    key = PrivateKey()
    public = key.public_key()
    digests = [hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(count)]
    start = time.perf_counter()
    for digest in digests:
        assert public.verify(key.sign(digest, hasher=None), digest, hasher=None)
    return count / (time.perf_counter() - start)


def run_window(window: int, count: int, work: Path) -> dict[str, Any]:
    """One seller + one buyer process at `window`; returns the buyer's result."""
    ledger_path = work / f"ledger-{window}.db"
    LocalLedger.create(ledger_path).close()
    seller = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.channel.channel_proc",
            "seller",
            str(work / f"s{window}"),
            str(ledger_path),
            "tcp://127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert seller.stdout is not None
        hello = json.loads(seller.stdout.readline())
        buyer = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench._pay_worker",
                str(work / f"b{window}"),
                str(ledger_path),
                hello["address"],
                hello["peer_id"],
                str(window),
                str(count),
            ],
            stdout=subprocess.PIPE,
            text=True,
            timeout=600,
            check=True,
        )
        result: dict[str, Any] = json.loads(buyer.stdout.strip().splitlines()[-1])
    finally:
        seller.terminate()
        seller.communicate(timeout=30)
    with LocalLedger.open(ledger_path) as ledger:
        sizes = [len(ledger.raw_tx(result[k]) or b"") for k in ("funding_txid", "close_txid")]
    result["chain_bytes"] = sum(sizes)
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    """Every window, beside the sign+verify ceiling; returns result rows."""
    ceiling = sign_verify_ceiling(500 if quick else 5_000)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for window in (1, 16, 64, 1024):
            count = (200 if window == 1 else 1_000) if quick else (3_000 if window == 1 else 30_000)
            result = run_window(window, count, Path(tmp))
            lat = sorted(result["latencies"])
            rows.append(
                {
                    "scenario": "payments",
                    "window": window,
                    "updates": count,
                    "updates_per_s": result["rate"],
                    "ceiling_sign_verify_per_s": ceiling,
                    "ratio_to_ceiling": result["rate"] / ceiling,
                    "ack_p50_ms": statistics.median(lat) * 1e3,
                    "ack_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
                    "chain_bytes_per_channel": result["chain_bytes"],
                    "chain_bytes_per_update": result["chain_bytes"] / count,
                    "chain_bytes_per_update_one_tx_each": P2PKH_PAYMENT_TX_BYTES,
                    "target_updates_per_s": TARGETS.get(window),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (CI smoke test)")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    rows = run(args.quick)
    print(f"sign+verify ceiling (one process): {rows[0]['ceiling_sign_verify_per_s']:.0f}/s")
    print(
        f"{'window':>6} {'updates/s':>10} {'x ceiling':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'target':>7} {'B/chan':>7} {'B/update':>9}"
    )
    for r in rows:
        target = r["target_updates_per_s"]
        verdict = "" if target is None else ("pass" if r["updates_per_s"] >= target else "short")
        print(
            f"{r['window']:>6} {r['updates_per_s']:>10.0f} {r['ratio_to_ceiling']:>9.2f} "
            f"{r['ack_p50_ms']:>7.2f} {r['ack_p99_ms']:>7.2f} {target or '-':>7} "
            f"{r['chain_bytes_per_channel']:>7} {r['chain_bytes_per_update']:>9.3f} {verdict}"
        )
    print(f"one transaction per payment would put {P2PKH_PAYMENT_TX_BYTES} B on chain per update")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
