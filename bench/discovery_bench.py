"""Discovery scenario: time until N agents on one host have all found each other.

    python -m bench discovery [--quick]             (in the suite: 2, 8, 32 agents)
    python -m bench.discovery_bench [--sizes 2,8,32] [--repeat 1] [--out results.json]

For each N it starts N ``python -m mesh.discovery`` processes on the loopback
interface at once and waits until every one lists the N-1 others. In the same
run it does the same with N bare zeroconf processes (same settings: explicit
127.0.0.1 interface, V4 only, QM browse, cooperating responders, no signatures,
no Trio, no table) as the baseline, and reports the ratio.

Times, all from the processes' own wall-clock stamps (one host, one clock):

* ``mesh_s``  -- full mesh, measured from the moment the *last* process was up and
  browsing: the discovery cost itself.
* ``spawn_s`` -- full mesh, measured from the first spawn: includes interpreter
  start-up and imports of N processes competing for the CPUs.
* ``ready_s`` -- the last process registered, from the first spawn.

Ratios are m2mesh / baseline for ``mesh_s`` and ``spawn_s``. At N=2 both
``mesh_s`` are a few milliseconds (the first agent hears the second's first
announcement), so that ratio is noise; it means something from N=8 up.

The issue's target is 32 agents meshed within 5 s (sessions excluded here: this
measures discovery only). Results are ratios against the baseline of the same
run, never bare absolute times alone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import trio

from bench.procs import ROOT
from bench.report import Row, Target

SCENARIO = "discovery"
PORT_BASE = 31000
TARGET_32_S = 5.0


class _Proc:
    """One child process and the JSON events it printed."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.ident: str | None = None
        self.browsing_at: float | None = None
        self.ready_at: float | None = None
        self.found: dict[str, float] = {}

    async def read(self, changed: trio.Condition) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._handle(json.loads(line))
            async with changed:
                changed.notify_all()

    def _handle(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        kind = event["event"]
        if kind == "ready":
            self.ident = event["peer_id"] if "peer_id" in event else event["name"]
            self.browsing_at = float(event["browsing_at"])
            self.ready_at = float(event["time"])
        elif kind == "added":
            key = event["peer_id"] if "peer_id" in event else event["name"]
            self.found.setdefault(key, float(event["time"]))
        elif kind == "removed":
            key = event["peer_id"] if "peer_id" in event else event["name"]
            self.found.pop(key, None)


def _commands(kind: str, n: int) -> list[list[str]]:
    if kind == "m2mesh":
        return [
            [
                sys.executable,
                "-m",
                "mesh.discovery",
                "--interface",
                "127.0.0.1",
                "--mailbox",
                f"tcp://127.0.0.1:{PORT_BASE + i}",
                "--name",
                f"bench-{i}",
            ]
            for i in range(n)
        ]
    return [
        [sys.executable, "-m", "bench.discovery_bench", "--baseline-child", str(i)]
        for i in range(n)
    ]


async def _run_once(kind: str, n: int, timeout: float) -> dict[str, float]:
    changed = trio.Condition()
    procs: list[_Proc] = []
    first_spawn = time.time()
    async with trio.open_nursery() as nursery:
        try:
            for command in _commands(kind, n):
                process = await trio.lowlevel.open_process(
                    command, stdout=subprocess.PIPE, cwd=ROOT
                )
                proc = _Proc(process)
                procs.append(proc)
                nursery.start_soon(proc.read, changed)
            with trio.fail_after(timeout):
                async with changed:
                    while not _meshed(procs):
                        await changed.wait()
            ids = {p.ident for p in procs}
            last_browsing = max(p.browsing_at or 0.0 for p in procs)
            meshed_at = max(
                max(t for key, t in p.found.items() if key in ids) if n > 1 else 0.0 for p in procs
            )
            return {
                "mesh_s": meshed_at - last_browsing,
                "spawn_s": meshed_at - first_spawn,
                "ready_s": max(p.ready_at or 0.0 for p in procs) - first_spawn,
            }
        finally:
            with trio.CancelScope(shield=True):
                for proc in procs:
                    if proc.process.returncode is None:
                        os.kill(proc.process.pid, signal.SIGTERM)
                with trio.move_on_after(20):
                    for proc in procs:
                        await proc.process.wait()
                for proc in procs:
                    if proc.process.returncode is None:
                        os.kill(proc.process.pid, signal.SIGKILL)
                        await proc.process.wait()


def _meshed(procs: list[_Proc]) -> bool:
    if any(p.ident is None for p in procs):
        return False
    ids = {p.ident for p in procs}
    return all(ids - {p.ident} <= p.found.keys() for p in procs)


async def _bench(sizes: list[int], repeat: int, timeout: float) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": {}, "target": {"n": 32, "mesh_s": TARGET_32_S}}
    for n in sizes:
        row: dict[str, Any] = {}
        for kind in ("baseline", "m2mesh"):
            runs = []
            for _ in range(repeat):
                runs.append(await _run_once(kind, n, timeout))
                await trio.sleep(1.0)  # let goodbyes and caches settle between runs
            row[kind] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        row["mesh_ratio"] = row["m2mesh"]["mesh_s"] / max(row["baseline"]["mesh_s"], 1e-3)
        row["spawn_ratio"] = row["m2mesh"]["spawn_s"] / max(row["baseline"]["spawn_s"], 1e-3)
        results["sizes"][str(n)] = row
        print(
            f"N={n:3d}  m2mesh mesh {row['m2mesh']['mesh_s']:6.3f} s"
            f" (from spawn {row['m2mesh']['spawn_s']:6.3f} s, all ready"
            f" {row['m2mesh']['ready_s']:6.3f} s)  |  zeroconf baseline mesh"
            f" {row['baseline']['mesh_s']:6.3f} s (from spawn {row['baseline']['spawn_s']:6.3f} s)"
            f"  |  ratios mesh {row['mesh_ratio']:5.2f}, from spawn {row['spawn_ratio']:5.2f}",
            flush=True,
        )
    if "32" in results["sizes"]:
        mesh_32 = results["sizes"]["32"]["m2mesh"]["mesh_s"]
        verdict = "meets" if mesh_32 <= TARGET_32_S else "MISSES"
        print(
            f"N=32 discovery {mesh_32:.3f} s after the last agent was up: {verdict} the 5 s target"
        )
    return results


# --------------------------------------------------------------------------- baseline child


def _baseline_child(index: int) -> int:
    """Bare zeroconf with the same settings; prints the same JSON events. Imported lazily."""
    from zeroconf import (
        DNSQuestionType,
        IPVersion,
        ServiceBrowser,
        ServiceInfo,
        ServiceStateChange,
        Zeroconf,
    )

    service_type = "_m2mesh-bench._tcp.local."
    name = f"baseline-{os.getpid()}-{index}"
    full = f"{name}.{service_type}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, "time": time.time(), **fields}), flush=True)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if name == full:
            return
        if state_change is ServiceStateChange.Added:
            emit("added", name=name.split(".", 1)[0])
        elif state_change is ServiceStateChange.Removed:
            emit("removed", name=name.split(".", 1)[0])

    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    browsing_at = time.time()
    browser = ServiceBrowser(
        zc, service_type, handlers=[on_change], question_type=DNSQuestionType.QM
    )
    info = ServiceInfo(
        service_type,
        full,
        port=PORT_BASE + index,
        properties={"v": "1"},
        server=f"{name}.local.",
        parsed_addresses=["127.0.0.1"],
    )
    zc.register_service(info, cooperating_responders=True)
    emit("ready", name=name, browsing_at=browsing_at)
    stop.wait()
    browser.cancel()
    zc.close()
    return 0


def run(quick: bool) -> list[Row]:
    """Time to full mesh for 2 and 8 agents (quick) or 2, 8 and 32; returns result rows."""
    sizes = [2, 8] if quick else [2, 8, 32]
    results = trio.run(_bench, sizes, 1, 120.0)
    rows: list[Row] = []
    for n in sizes:
        row = results["sizes"][str(n)]
        mesh, base = row["m2mesh"], row["baseline"]
        rows += [
            Row(
                SCENARIO,
                f"full mesh after last agent up, {n} agents",
                mesh["mesh_s"],
                "s",
                base["mesh_s"],
                "bare zeroconf",
                Target(max_value=TARGET_32_S) if n == 32 else None,
                {"agents": n},
            ),
            Row(
                SCENARIO,
                f"full mesh from first spawn, {n} agents",
                mesh["spawn_s"],
                "s",
                base["spawn_s"],
                "bare zeroconf",
                params={"agents": n},
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.discovery_bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench.discovery_bench", description=__doc__)
    parser.add_argument("--sizes", default="2,8,32", help="comma-separated N (default 2,8,32)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; medians reported")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--baseline-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_child is not None:
        return _baseline_child(args.baseline_child)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = trio.run(_bench, sizes, args.repeat, args.timeout)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
