"""Messaging scenario: encrypted frames/s and round trips between two processes.

    python -m bench messaging [--quick]

For 100 B and 4 KiB frames (and 1 KiB, 16 KiB for throughput in a full run) it
measures, in the same run, one-way throughput and round-trip latency of m2mesh
sessions (Noise + msgpack + nng, two agent processes), raw pynng with its sync
API (no crypto, one nng message per frame), and raw Trio TCP (length-prefixed
frames). Every m2mesh number is a ratio to raw pynng. Targets (issue 9): with
coalescing under load, 100 B frames/s at least raw pynng's message rate; one
frame at a time (ping-pong), at least 50 % of raw pynng's round-trip rate.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from bench.procs import ROOT, pinned_cmd
from bench.report import Param, Row, Target, percentile, quantiles

SCENARIO = "messaging"
WORKER = "bench._msg_worker"
TARGET_RATIO = 0.5


def _pair(
    server: list[str],
    client: list[str],
    result_from: str,
    cpus: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Start the server role, then the client with the server's address; with
    `cpus`, each on a CPU of its own (server, client).

    Returns the JSON result line of `result_from` ("server" or "client").
    """
    server_cpu, client_cpu = cpus or (None, None)
    srv = subprocess.Popen(
        pinned_cmd(server_cpu, WORKER, *server), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert srv.stdout is not None
        address = json.loads(srv.stdout.readline())["address"]
        cli = subprocess.run(
            pinned_cmd(client_cpu, WORKER, client[0], address, *client[1:]),
            stdout=subprocess.PIPE,
            text=True,
            timeout=300,
            check=True,
            cwd=ROOT,
        )
        if result_from == "client":
            return dict(json.loads(cli.stdout.strip().splitlines()[-1]))
        return dict(json.loads(srv.stdout.readline()))
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.communicate()


def throughput(kind: str, count: int, size: int) -> float:
    """One-way frames/s of `count` frames of `size` bytes, as the receiver saw it."""
    server, client = {
        "mesh": ("mesh-sink", "mesh-source"),
        "pynng": ("raw-sink", "raw-source"),
        "tcp": ("tcp-sink", "tcp-source"),
    }[kind]
    result = _pair([server, str(count)], [client, str(count), str(size)], "server")
    return float(result["rate"])


def round_trips(
    kind: str, count: int, size: int, cpus: tuple[int, int] | None = None
) -> list[float]:
    """`count` sequential ping-pongs of `size` bytes (with `cpus`: echo and ping each
    pinned to one); returns the RTTs in seconds, sorted."""
    server, client = {
        "mesh": ("mesh-echo", "mesh-ping"),
        "pynng": ("raw-echo", "raw-ping"),
        "tcp": ("tcp-echo", "tcp-ping"),
    }[kind]
    return sorted(_pair([server], [client, str(count), str(size)], "client", cpus)["rtts"])


def _label(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size // 1024} KiB"


def _throughput_rows(size: int, count: int, repeat: int) -> list[Row]:
    runs: dict[str, list[float]] = {"pynng": [], "tcp": [], "mesh": []}
    for _ in range(repeat):  # interleaved, so a slow spell hits every kind alike
        for kind, rates_of_kind in runs.items():
            rates_of_kind.append(throughput(kind, count, size))
    rates = {kind: statistics.median(r) for kind, r in runs.items()}
    label = _label(size)
    return [
        Row(
            SCENARIO,
            f"frames/s {label}, m2mesh",
            rates["mesh"],
            "/s",
            rates["pynng"],
            "raw pynng",
            Target(min_ratio=1.0) if size == 100 else None,
            {"size": size, "kind": "mesh", "measure": "throughput"},
        ),
        Row(
            SCENARIO,
            f"frames/s {label}, raw Trio TCP",
            rates["tcp"],
            "/s",
            rates["pynng"],
            "raw pynng",
            params={"size": size, "kind": "tcp", "measure": "throughput"},
        ),
    ]


def _round_trip_rows(size: int, pings: int, repeat: int) -> list[Row]:
    rtts: dict[str, list[float]] = {"pynng": [], "tcp": [], "mesh": []}
    for _ in range(repeat):  # pooled over process pairs: raw pynng's RTT is bimodal
        for kind, samples in rtts.items():
            samples += round_trips(kind, pings, size)
    rtts = {kind: sorted(samples) for kind, samples in rtts.items()}
    names = {"mesh": "m2mesh", "pynng": "raw pynng", "tcp": "raw Trio TCP"}
    cdfs = {names[kind]: quantiles(samples, 1e6) for kind, samples in rtts.items()}
    mesh, raw = rtts["mesh"], rtts["pynng"]
    label = _label(size)
    params: dict[str, Param] = {"size": size, "kind": "mesh", "measure": "round trip"}
    return [
        Row(
            SCENARIO,
            f"round trips/s {label} (one frame in flight)",
            len(mesh) / sum(mesh),
            "/s",
            len(raw) / sum(raw),
            "raw pynng",
            Target(min_ratio=TARGET_RATIO) if size == 100 else None,
            params,
        ),
        Row(
            SCENARIO,
            f"RTT p50 {label}",
            percentile(mesh, 0.5) * 1e6,
            "us",
            percentile(raw, 0.5) * 1e6,
            "raw pynng",
            params=params,
            cdfs=cdfs,
        ),
        Row(
            SCENARIO,
            f"RTT p99 {label}",
            percentile(mesh, 0.99) * 1e6,
            "us",
            percentile(raw, 0.99) * 1e6,
            "raw pynng",
            params=params,
        ),
    ]


def run(quick: bool) -> list[Row]:
    """Throughput and round trips for each frame size; returns the result rows.

    The full run adds 1 KiB and 16 KiB frames (throughput only) for the
    throughput-vs-payload plot, and measures every kind three times with fresh
    process pairs, interleaved: frames/s is the median of the three, RTTs are
    pooled. Raw pynng in particular swings run to run (its RTT p50 between
    ~50 and ~200 us on this machine, by where the scheduler puts its threads).
    """
    count, pings, repeat = (5_000, 200, 1) if quick else (50_000, 2_000, 3)
    rows: list[Row] = []
    for size in (100, 4096) if quick else (100, 1024, 4096, 16384):
        rows += _throughput_rows(size, count, repeat)
        if size in (100, 4096):
            rows += _round_trip_rows(size, pings, repeat)
    return rows


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main([SCENARIO, *sys.argv[1:]]))
