"""The soak's numbers: samples in; growth per reading, targets and report rows out.

`bench.soak` runs the agents and samples them. This module owns what a sample holds
(`Proc`, `Sample`), what the agents' answers count (`buyer_counts`, `proof_counts`),
what the samples mean (`summarise`), the targets they are held to and the rows and text
that report them (`rows`, `report_lines`, `progress_line`). It must never start a
process, read /proc, a file or a socket, sleep or read a clock: everything it knows
comes in as arguments, so that it is tested on made-up samples in milliseconds.

Growth counts from the end of a warm-up (the first 20 % of the run, and until both
wants deliver), per reading delivered: the reading is the soak's unit of work, so the
mill's and the buyer's numbers are per sensor reading too.

Bytes stored are the growth of what an agent keeps: ``agent.db``, ``records/`` (its
segments) and ``archive/`` -- every entry of its data dir but SQLite's scratch files
(the WAL ``agent.db-wal``, ``-shm``, a journal such as the payment journal
``agent.db-channels.journal``), logs, the control socket, ``profile.toml`` and
``identity.key`` (`kept`). The WAL is reset after each checkpoint and cut back to
8 MiB (``journal_size_limit``); the payment journal is folded into the channels table
every MiB: in a short run their growth would flatter written/stored, in a long one it
is noise. ``agent.db`` counts at its size as of the last commit (pages x page size,
which SQLite keeps in the WAL index), not the file's: a committed page still in the
WAL is kept all the same, and a file that grows only at checkpoints (every ~4 MB of
WAL) would make a short run's stored growth a matter of when they fell. The file's
size stands in when the index cannot be read. The shared ledger's directory is held
to the same rule. Bytes written stay what /proc says each process made the kernel
write (``write_bytes - cancelled_write_bytes``), scratch files included: writing them
is a cost. The WAL's size at the end has a row of its own, for information.

Targets (issue "Running for months", for a 30-minute run; printed beside the values):
RSS growth < 5 MB per agent (per reading: 5 MB over the readings a 30-minute run
measures), bytes written <= 2x bytes stored (for the `KEEPERS`), CPU per reading flat
within 10 % (the last fifth of the measured period against the first), and with
``--retention-mb X``
every agent's online store (``agent.db``, its WAL and ``records/``: what retention
bounds; not ``archive/``) at most X MB (10^6 bytes) in every sample. Targets are
reported, never asserted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import median
from typing import Any

from bench.report import Row, Target, fmt, text_table
from mesh.channel.settle import LOCKING_STATES

SCENARIO = "soak"
SENSOR, MILL, BUYER = "vibration-sensor", "cnc-mill", "robot-cell"
AGENTS = (SENSOR, MILL, BUYER)
KEEPERS = (SENSOR, BUYER)
"""The agents that keep something per reading (the sensor its signed log, the buyer what
it bought): written <= 2x stored is their target. The mill keeps nothing per sensor
reading; what it writes (payments and its meter anchors) is reported, not judged."""
"""Started in this order (providers first); stopped buyer first."""
WARMUP = 0.2
WINDOW = 0.2
"""CPU flatness compares the first and the last fifth of the measured period."""
TARGET_MINUTES = 30.0
TARGET_RSS_MB = 5.0
TARGET_WRITTEN_X = 2.0
TARGET_CPU_FLAT = 0.10
LOCKED = frozenset(state.value for state in LOCKING_STATES)
MB = 1_000_000
WAL = "agent.db-wal"
ONLINE = frozenset({"agent.db", WAL, "records"})
"""The data-dir entries a retention bound holds: the database, its WAL and the record
segments (`mesh.anchoring.retention.store_bytes`); not the archive it moves records to."""
SCRATCH = ("-wal", "-shm", "-journal", ".journal", ".log", ".sock")
"""Endings of the data-dir entries that are not stored: SQLite's WAL and shared memory,
journals (a rollback journal, the payment journal), logs and sockets."""
NOT_STORED = frozenset({"profile.toml", "identity.key"})
"""What the operator puts in a data dir; not what the agent keeps."""
STORED_LABEL = "stored: agent.db as committed + records/ + archive/; no WAL, -shm, journal"


class SoakError(Exception):
    """The soak could not set up, start or keep its agents running, or measured too
    little to report."""


@dataclass(frozen=True)
class Config:
    """One soak run's parameters."""

    minutes: float = TARGET_MINUTES
    interval: float = 10.0
    rate: float = 100.0
    retention_mb: float | None = None
    retention_interval: float | None = None
    log_level: str = "warning"

    @property
    def seconds(self) -> float:
        """The run's length, from the agents' spawn to the last sample."""
        return self.minutes * 60

    def rss_per_reading_target(self) -> float:
        """Bytes per reading: 5 MB over what a 30-minute run measures after warm-up."""
        return TARGET_RSS_MB * MB / (self.rate * TARGET_MINUTES * 60 * (1 - WARMUP))


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class Proc:
    """One process's counters at one moment."""

    rss: int
    """VmRSS, bytes."""
    cpu: float
    """utime + stime, seconds."""
    written: int
    """write_bytes - cancelled_write_bytes: what it made the kernel write to disk."""
    wchar: int
    """Bytes it passed to write(2) and the like, sockets included."""


def kept(entry: str) -> bool:
    """Whether a data-dir entry is what its agent keeps (counted as stored): not a
    scratch file (`SCRATCH`), the profile or the key."""
    return entry not in NOT_STORED and not entry.endswith(SCRATCH)


@dataclass(frozen=True)
class Sample:
    """Everything measured at one moment `t` (seconds since the agents' spawn)."""

    t: float
    procs: Mapping[str, Proc]
    stores: Mapping[str, Mapping[str, int]]
    """Per agent (and "ledger"): bytes under each top-level entry of its directory."""
    readings: int | None
    """Readings the buyer verified so far (None when it did not answer)."""
    spindle: int | None
    locked: int | None
    """Capacity of the buyer's channels that lock its coins, sat."""
    status_s: Mapping[str, float] = field(default_factory=dict)
    """Each agent's status round trip over its control socket, seconds."""
    committed: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per agent (and "ledger"): the size of each open SQLite database as of its last
    commit, by its entry in `stores`; it stands for the file's size in `stored`."""

    def online(self, name: str) -> int:
        """What `[retention] online_mb` bounds of the agent's store (ONLINE)."""
        return sum(n for entry, n in self.stores[name].items() if entry in ONLINE)

    def stored(self, name: str) -> int:
        """What the agent (or "ledger") keeps: every entry but scratch files (`kept`),
        a database by its committed size where known."""
        committed = self.committed.get(name, {})
        return sum(committed.get(e, n) for e, n in self.stores[name].items() if kept(e))


def buyer_counts(status: Mapping[str, Any]) -> tuple[int | None, int | None, int]:
    """From the buyer's status reply: readings and spindle ticks delivered (None for a
    want it does not list yet) and the capacity of its channels that lock its coins."""
    wants = {w["service"]: w["delivered"] for w in status["wants"]}
    payer = [c for c in status["channels"] if c["role"] == "payer"]
    locked = sum(c["capacity"] for c in payer if c["state"] in LOCKED)
    return wants.get("vibration"), wants.get("spindle-time"), locked


def held(stream: Mapping[str, Any]) -> int:
    """Records of one stream `mesh proof --list` shows: in the store and archived."""
    return int(stream["records"]) + int(stream.get("archived_records", 0))


def proof_counts(stdout: str) -> dict[str, int]:
    """From `mesh proof --list`'s output: the records it lists, and its own meter
    statements (a buyer's orders ended)."""
    streams = json.loads(stdout)["streams"]
    own = [s for s in streams if s["origin"] == "own" and s["stream"] == "meters"]
    return {"records": sum(held(s) for s in streams), "meter_statements": sum(held(s) for s in own)}


# ---------------------------------------------------------------- per reading


def _per(delta: float, readings: int) -> float | None:
    return delta / readings if readings > 0 else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base is not None and base > 0 else None


def summarise(
    samples: Sequence[Sample], latency: Mapping[str, Any], warmup: Sequence[Sample] = ()
) -> dict[str, Any]:
    """Per-agent growth, writes and CPU per reading over `samples` (the first is the
    baseline at the warm-up's end, the last the end of the run), with the times of
    `mesh status` and `mesh proof --list` (`latency`) at both ends."""
    measured = [s for s in samples if s.readings is not None]
    if len(measured) < 3:
        raise SoakError(f"{len(measured)} samples with readings after warm-up; 3 needed")
    first, last = measured[0], measured[-1]
    readings = (last.readings or 0) - (first.readings or 0)
    span = max(1, math.ceil(WINDOW * (len(measured) - 1)))
    windows = ((measured[0], measured[span]), (measured[-1 - span], measured[-1]))
    start, end = latency.get("start", {}), latency.get("end", {})
    agents: dict[str, Any] = {}
    for name in AGENTS:
        a, b = first.procs[name], last.procs[name]
        stored = last.stored(name) - first.stored(name)
        cpu = [
            _per(w1.procs[name].cpu - w0.procs[name].cpu, (w1.readings or 0) - (w0.readings or 0))
            for w0, w1 in windows
        ]
        socket = [s.status_s[name] for s in measured if name in s.status_s]
        k = max(1, math.ceil(WINDOW * len(socket)))
        then, now = start.get(name, {}), end.get(name, {})
        agents[name] = {
            "rss_start": a.rss,
            "rss_end": b.rss,
            "rss_growth": b.rss - a.rss,
            "rss_per_reading": _per(b.rss - a.rss, readings),
            "written": b.written - a.written,
            "stored_growth": stored,
            "written_per_reading": _per(b.written - a.written, readings),
            "stored_per_reading": _per(stored, readings),
            "written_over_stored": _ratio(b.written - a.written, stored),
            "cpu_first": cpu[0],
            "cpu_last": cpu[1],
            "cpu_flatness": _ratio(cpu[1], cpu[0]),
            "stored_end": last.stored(name),
            "wal_start": first.stores[name].get(WAL, 0),
            "wal_end": last.stores[name].get(WAL, 0),
            "online_end": last.online(name),
            "online_max": max(s.online(name) for s in [*warmup, *samples]),
            "entries_end": dict(last.stores[name]),
            "committed_end": dict(last.committed.get(name, {})),
            "status_socket_first": median(socket[:k]) if socket else None,
            "status_socket_last": median(socket[-k:]) if socket else None,
            "status_cli_start": then.get("status", {}).get("s"),
            "status_cli_end": now.get("status", {}).get("s"),
            "proof_list_start": then.get("proof --list", {}).get("s"),
            "proof_list_end": now.get("proof --list", {}).get("s"),
        }
    ledger = last.stored("ledger") - first.stored("ledger")
    seconds = last.t - first.t
    return {
        "measured_seconds": seconds,
        "readings": readings,
        "rate": readings / seconds if seconds > 0 else 0.0,
        "spindle_units": (last.spindle or 0) - (first.spindle or 0),
        "window_intervals": span,
        "locked_start": first.locked,
        "locked_end": last.locked,
        "ledger_stored_growth": ledger,
        "ledger_stored_per_reading": _per(ledger, readings),
        "orders_ended": end.get(BUYER, {}).get("meter_statements"),
        "agents": agents,
    }


# ---------------------------------------------------------------- report

AGENT_ROWS = (
    # metric; the agent summary's key of the value and of the baseline; unit; scale
    ("RSS growth after warm-up", "rss_growth", "rss_start", "MB", 1 / MB),
    ("RSS growth per reading", "rss_per_reading", "", "B/reading", 1),
    ("bytes written per reading", "written_per_reading", "stored_per_reading", "B/reading", 1),
    ("CPU per reading, last window", "cpu_last", "cpu_first", "us", 1e6),
    ("online store, largest sample", "online_max", "", "MB", 1 / MB),
    ("SQLite WAL at end (scratch, not stored)", "wal_end", "wal_start", "MB", 1 / MB),
    ("status over control socket, last window", "status_socket_last", "status_socket_first",
     "ms", 1e3),
    ("`mesh status` latency at end", "status_cli_end", "status_cli_start", "s", 1),
    ("`mesh proof --list` latency at end", "proof_list_end", "proof_list_start", "s", 1),
)  # fmt: skip
BASELINE_NAMES = {
    "rss_start": "RSS at warm-up end",
    "stored_per_reading": STORED_LABEL,
    "cpu_first": "first window",
    "status_socket_first": "first window",
}


def rows(summary: Mapping[str, Any], config: Config) -> list[Row]:
    """The soak's table: each number beside its start (or what was stored) and its target."""
    targets = {
        "rss_growth": Target(max_value=TARGET_RSS_MB),
        "rss_per_reading": Target(max_value=config.rss_per_reading_target()),
        "written_per_reading": Target(max_ratio=TARGET_WRITTEN_X),
        "cpu_last": Target(min_ratio=1 - TARGET_CPU_FLAT, max_ratio=1 + TARGET_CPU_FLAT),
        "online_max": Target(max_value=config.retention_mb) if config.retention_mb else None,
    }
    out = [Row(SCENARIO, "readings delivered per second", summary["rate"], "/s", config.rate)]
    for name, a in summary["agents"].items():
        for metric, key, base_key, unit, scale in AGENT_ROWS:
            base = a.get(base_key)
            base = base * scale if base is not None and base > 0 else None  # else no ratio
            named = BASELINE_NAMES.get(base_key, "at warm-up end")
            if a[key] is not None:
                row = Row(SCENARIO, f"{metric}, {name}", a[key] * scale, unit, base, named)
                target = targets.get(key)
                if key == "written_per_reading" and name not in KEEPERS:
                    target = None  # the mill keeps nothing per reading: no ratio to hold
                out.append(replace(row, target=target, params={"agent": name}))
    if summary["locked_end"] is not None:
        metric, start = f"locked channel capacity at end, {BUYER}", summary["locked_start"]
        row = Row(SCENARIO, metric, summary["locked_end"], "sat", start, "at warm-up end")
        out.append(replace(row, params={"agent": BUYER}))
    ledger = summary["ledger_stored_per_reading"]
    if ledger is not None:
        out.append(Row(SCENARIO, "ledger bytes stored per reading (shared)", ledger, "B/reading"))
    return out


def report_lines(
    outcome: Mapping[str, Any],
    table: Sequence[Row],
    summary: Mapping[str, Any] | None,
    exits: Mapping[str, int | None],
    stop_seconds: float,
) -> list[str]:
    """The report's text: the table beside the targets, what each store holds at the
    end, how the processes ended (None: killed after `stop_seconds`), the verdicts."""
    lines = [""]
    if table:
        lines.append(text_table(table) + "\n")
    if summary is not None:
        lines.append(
            f"measured {summary['measured_seconds']:.0f} s after warm-up: {summary['readings']}"
            f" readings, {summary['spindle_units']} spindle ticks. Bytes held at the end:"
        )
        for name, a in summary["agents"].items():
            entries = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(a["entries_end"].items()))
            committed = "".join(f"; {k} committed {fmt(v)}" for k, v in a["committed_end"].items())
            lines.append(f"  {name:<17} {entries}{committed}")
        if summary["orders_ended"] is not None:
            lines.append(
                f"orders the buyer ended before the end: {summary['orders_ended']} (0: one"
                " order per want throughout; --log-level info names each one's reason)"
            )
    lines.append(f"exit codes (None: killed after {stop_seconds:g} s): {dict(exits)}")
    verdicts = [r.verdict for r in table if r.verdict]
    lines.append(
        f"targets (of a {TARGET_MINUTES:g}-minute run): {verdicts.count('pass')} pass,"
        f" {verdicts.count('short')} short; status {outcome['status']}"
        + (f": {outcome['error']}" if outcome["error"] else "")
    )
    return lines


def progress_line(s: Sample, before: Sample | None, config: Config, phase: str = "") -> str:
    """One sample as a progress line: time, readings (and their rate since `before`),
    each agent's RSS (and CPU since `before`), the buyer's locked capacity."""

    def mmss(t: float) -> str:
        return f"{int(t // 60)}:{int(t % 60):02d}"

    line = f"[soak] {mmss(s.t)}/{mmss(config.seconds)} readings {s.readings}"
    if before is not None and s.readings is not None and before.readings is not None:
        line += f" ({(s.readings - before.readings) / (s.t - before.t):.1f}/s)"
    for name in AGENTS:
        line += f" | {name} {s.procs[name].rss / MB:.1f} MB"
        if before is not None:
            line += f" {100 * (s.procs[name].cpu - before.procs[name].cpu) / (s.t - before.t):.0f}%"
    locked = "?" if s.locked is None else fmt(s.locked)
    return f"{line} | locked {locked} sat{phase}"
