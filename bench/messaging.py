"""Messaging benchmark: encrypted frames/s and round trips between two processes.

    python -m bench.messaging [--quick] [--out results.json]

For 100 B and 4 KiB frames it measures, in the same run, one-way throughput and
round-trip latency (p50/p99) of m2mesh sessions (Noise + msgpack + nng, two
agent processes), raw pynng with its sync API (no crypto), and raw Trio TCP
(length-prefixed frames). Results are reported as ratios to the raw pynng
baseline; the target is m2mesh 100 B throughput >= 50% of raw pynng.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

WORKER = [sys.executable, "-m", "bench._msg_worker"]
TARGET_RATIO = 0.5


def _pair(server: list[str], client: list[str], result_from: str) -> dict[str, Any]:
    """Start the server role, then the client with the server's address.

    Returns the JSON result line of `result_from` ("server" or "client").
    """
    srv = subprocess.Popen(WORKER + server, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        address = json.loads(srv.stdout.readline())["address"]
        cli = subprocess.run(
            [*WORKER, client[0], address, *client[1:]],
            stdout=subprocess.PIPE,
            text=True,
            timeout=300,
            check=True,
        )
        if result_from == "client":
            return dict(json.loads(cli.stdout.strip().splitlines()[-1]))
        return dict(json.loads(srv.stdout.readline()))
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.communicate()


def throughput(kind: str, count: int, size: int) -> float:
    server, client = {
        "mesh": ("mesh-sink", "mesh-source"),
        "pynng": ("raw-pull", "raw-push"),
        "tcp": ("tcp-sink", "tcp-source"),
    }[kind]
    result = _pair([server, str(count)], [client, str(count), str(size)], "server")
    return float(result["rate"])


def round_trips(kind: str, count: int, size: int) -> tuple[float, float]:
    server, client = {
        "mesh": ("mesh-echo", "mesh-ping"),
        "pynng": ("raw-echo", "raw-ping"),
        "tcp": ("tcp-echo", "tcp-ping"),
    }[kind]
    samples = sorted(_pair([server], [client, str(count), str(size)], "client")["rtts"])
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50 * 1e6, p99 * 1e6


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every kind for both frame sizes; return result rows."""
    count = 5_000 if quick else 100_000
    pings = 200 if quick else 5_000
    rows: list[dict[str, Any]] = []
    for size in (100, 4096):
        rates = {kind: throughput(kind, count, size) for kind in ("pynng", "tcp", "mesh")}
        rtts = {kind: round_trips(kind, pings, size) for kind in ("pynng", "tcp", "mesh")}
        for kind in ("mesh", "pynng", "tcp"):
            rows.append(
                {
                    "scenario": "messaging",
                    "size": size,
                    "kind": kind,
                    "frames_per_s": rates[kind],
                    "ratio_to_pynng": rates[kind] / rates["pynng"],
                    "rtt_p50_us": rtts[kind][0],
                    "rtt_p99_us": rtts[kind][1],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (CI smoke test)")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    rows = run(args.quick)
    print(f"{'size':>5} {'kind':>6} {'frames/s':>10} {'x pynng':>8} {'p50 us':>8} {'p99 us':>8}")
    for r in rows:
        print(
            f"{r['size']:>5} {r['kind']:>6} {r['frames_per_s']:>10.0f} "
            f"{r['ratio_to_pynng']:>8.2f} {r['rtt_p50_us']:>8.0f} {r['rtt_p99_us']:>8.0f}"
        )
    small = next(r for r in rows if r["kind"] == "mesh" and r["size"] == 100)
    verdict = "pass" if small["ratio_to_pynng"] >= TARGET_RATIO else "short"
    print(
        f"target: m2mesh 100 B >= {TARGET_RATIO:.0%} of raw pynng: "
        f"{small['ratio_to_pynng']:.2f}x ({verdict})"
    )
    if args.out:
        with open(args.out, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
