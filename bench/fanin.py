"""Fan-in scenario: many buyer processes paying one provider process over real channels.

    python -m bench fan-in [--quick]

For 1, 4, 16 and 64 buyers (quick: 1 and 4) it starts one provider
(``tests/channel/channel_proc.py seller``) on a fresh LocalLedger file, then the
buyers (``bench/_fanin_worker.py``), a few at a time so that 2 cores are not
swamped by interpreter start-ups. Each buyer funds itself and opens one channel
with a fixed in-flight window, then waits. Once every buyer is ready they all
start paying at the same instant; after a warm-up, the payments acknowledged
during one common measurement window are summed over the buyers (each counts
its own cumulative acks against the shared wall clock).

Reported per level: aggregate payments/s, against the single-pair rate (1 buyer)
measured in the same run, and the provider's peak RSS (VmHWM from
/proc/PID/status), against its peak with one buyer, and the provider's CPU time
per payment during the window (/proc/PID/stat), against one buyer's: on 2 cores
the buyers run beside the provider, so this says whether the provider itself
scales when the aggregate rate does not. Also recorded (in results.json): CPU
cores used by the provider and by all buyers and their CPU per payment, the
slowest and fastest buyer, how many buyers had no ack yet when the window opened
(should be 0), and the provider's payments per commit and per ack over the run.
Target (issue 9): 64 buyers sustain >= 80 % of the single-pair rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.procs import ROOT, module_cmd
from bench.report import Row, Target
from mesh.chain.ledger import LocalLedger

SCENARIO = "fan-in"
WINDOW = 64
"""Each buyer's in-flight window (the window of the payments targets)."""
STAGGER = 4
"""Buyers started at once; the next batch starts when these have opened channels."""
TARGET_RATIO = 0.8


@dataclass(frozen=True)
class Timing:
    """Seconds of warm-up (all paying, not counted), measurement, and tail."""

    warmup: float
    measure: float
    tail: float


QUICK = Timing(warmup=0.5, measure=1.5, tail=0.2)
FULL = Timing(warmup=2.0, measure=6.0, tail=0.5)


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, e.g. VmHWM (peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.time()))


class _Level:
    """One provider and `buyers` buyer processes, from start to teardown.

    A watchdog kills every process of the level after `deadline` seconds, so a
    stuck process ends the level with an error instead of hanging the suite.
    """

    def __init__(self, buyers: int, work: Path, deadline: float) -> None:
        self.buyers = buyers
        self.work = work
        self.ledger = work / f"ledger-{buyers}.db"
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        self.files: list[IO[bytes]] = []
        self.watchdog = threading.Timer(deadline, self.kill)
        self.watchdog.start()

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[str]:
        """Start one process, its stderr to ``NAME.log`` in the work directory."""
        log = self.work / f"{name}.log"
        err = log.open("wb")
        self.files.append(err)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
        )
        self.procs.append((proc, log))
        return proc

    def expect(self, proc: subprocess.Popen[str], key: str) -> dict[str, Any]:
        """The next JSON line of `proc`, which must carry `key`."""
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a process ended before saying {key!r}\n{self.logs()}")
        message: dict[str, Any] = json.loads(line)
        if key not in message:
            raise RuntimeError(f"a process said {message} instead of {key!r}")
        return message

    def logs(self) -> str:
        """Exit codes and the stderr tails of processes that have ended."""
        report = []
        for proc, log in self.procs:
            code = proc.poll()
            if code is not None:
                report.append(f"--- {log.name}: exit {code}\n{log.read_text()[-1500:]}")
        return "\n".join(report)

    def kill(self) -> None:
        """Kill every process of this level that is still running."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()

    def close(self) -> None:
        """Stop the watchdog, kill what still runs, reap everything, close logs."""
        self.watchdog.cancel()
        self.kill()
        for proc, _ in self.procs:
            proc.communicate()
        for file in self.files:
            file.close()


def run_level(buyers: int, work: Path, timing: Timing) -> dict[str, Any]:
    """One level: returns the aggregate rate and the provider's measurements."""
    LocalLedger.create(work / f"ledger-{buyers}.db").close()
    level = _Level(buyers, work, deadline=120 + 5 * buyers)
    try:
        provider = level.spawn(
            f"provider-{buyers}",
            module_cmd(
                "tests.channel.channel_proc",
                "seller",
                str(work / f"provider-{buyers}"),
                str(level.ledger),
                "tcp://127.0.0.1:0",
            ),
        )
        hello = level.expect(provider, "address")
        buyer_procs = []
        for first in range(0, buyers, STAGGER):
            batch = [
                level.spawn(
                    f"buyer-{buyers}-{i}",
                    module_cmd(
                        "bench._fanin_worker",
                        str(work / f"buyer-{buyers}-{i}"),
                        str(level.ledger),
                        hello["address"],
                        hello["peer_id"],
                        str(WINDOW),
                    ),
                )
                for i in range(first, min(first + STAGGER, buyers))
            ]
            for proc in batch:
                level.expect(proc, "ready")
            buyer_procs += batch
        start = time.time() + 0.5
        window_from = start + timing.warmup
        window_to = window_from + timing.measure
        go = {"start": start, "from": window_from, "to": window_to, "stop": window_to + timing.tail}
        for proc in buyer_procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(go) + "\n")
            proc.stdin.flush()
        _sleep_until(window_from)
        cpu_before = [_cpu_seconds(p.pid) for p in (provider, *buyer_procs)]
        _sleep_until(window_to)
        cpu = [
            (_cpu_seconds(p.pid) - before) / timing.measure
            for p, before in zip((provider, *buyer_procs), cpu_before, strict=True)
        ]
        results = [level.expect(proc, "acked_in_window") for proc in buyer_procs]
        if provider.poll() is not None:
            raise RuntimeError(f"the provider died\n{level.logs()}")
        peak_kib = _status_kib(provider.pid, "VmHWM")
        provider.terminate()  # the seller prints its manager's counters on SIGTERM
        counters = level.expect(provider, "statistics")["statistics"]
    finally:
        level.close()
    rates = [r["acked_in_window"] / timing.measure for r in results]
    late = sum(1 for r in results if r["first_ack_at"] is None or r["first_ack_at"] > window_from)
    rate = sum(rates)
    return {
        "rate": rate,
        "slowest_buyer_per_s": min(rates),
        "fastest_buyer_per_s": max(rates),
        "late_buyers": late,
        "provider_peak_mib": peak_kib / 1024,
        "provider_cpu_cores": cpu[0],
        "buyers_cpu_cores": sum(cpu[1:]),
        "provider_cpu_us_per_payment": cpu[0] / rate * 1e6 if rate else float("nan"),
        "buyers_cpu_us_per_payment": sum(cpu[1:]) / rate * 1e6 if rate else float("nan"),
        # Whole-run counters of the provider's channel manager: how well it batches.
        "provider_payments_per_commit": counters["payments_accepted"] / max(1, counters["commits"]),
        "provider_payments_per_ack": counters["payments_accepted"] / max(1, counters["acks_sent"]),
        "provider_rejections": counters["rejections"],
    }


def run(quick: bool) -> list[Row]:
    """Every level, beside the single-pair rate of the same run; returns result rows."""
    levels, timing = ((1, 4), QUICK) if quick else ((1, 4, 16, 64), FULL)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        measured = {n: run_level(n, Path(tmp), timing) for n in levels}
    pair = measured[1]
    for n, result in measured.items():
        params = {"buyers": n, "window": WINDOW, **result}
        base = n != 1
        rows += [
            Row(
                SCENARIO,
                f"payments/s, {n} buyer{'s' * base} -> 1 provider (window {WINDOW})",
                result["rate"],
                "/s",
                pair["rate"] if base else None,
                "1 pair" if base else "",
                Target(min_ratio=TARGET_RATIO) if n == 64 else None,
                params,
            ),
            Row(
                SCENARIO,
                f"provider peak RSS, {n} buyer{'s' * base}",
                result["provider_peak_mib"],
                "MiB",
                pair["provider_peak_mib"] if base else None,
                "1 pair" if base else "",
                params=params,
            ),
            Row(
                SCENARIO,
                f"provider CPU per payment, {n} buyer{'s' * base}",
                result["provider_cpu_us_per_payment"],
                "us",
                pair["provider_cpu_us_per_payment"] if base else None,
                "1 pair" if base else "",
                params=params,
            ),
        ]
    return rows


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main([SCENARIO, *sys.argv[1:]]))
