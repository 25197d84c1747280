"""Soak: a sensor, a mill and a buyer trading for N minutes, watched from /proc.

    python -m bench soak [--minutes 30] [--interval 10] [--retention-mb X]

It sets up and runs everything as an operator would, each step a real `mesh` process
from this checkout: ``mesh ledger init``, ``mesh keygen``, ``mesh address`` and
``mesh ledger fund`` (one coin per want for the buyer, a float for each provider's
anchoring fees), ``mesh ledger mine --interval 2`` (a block every 2 s) and one
``mesh run`` per agent: a vibration sensor selling signed readings at ``--rate`` (100/s),
a CNC mill selling spindle time, and a robot cell buying both with wants larger than
the run (``bench/soak_profiles/``; each run fills in its site and sizes).

Every ``--interval`` seconds it samples each agent process from /proc -- RSS (VmRSS),
CPU (utime + stime), bytes written to disk (``write_bytes - cancelled_write_bytes``) --
the bytes each store holds (every file under the agent's data dir; the shared ledger's
files apart) and, over the control socket, the readings the buyer verified and the
capacity its channels lock (funded, open, closing or refused). Growth counts from the
end of a warm-up (the first 20 % of the run, and until both wants deliver), per reading
delivered: the reading is the soak's unit of work, so the mill's and the buyer's
numbers are per sensor reading too. At the warm-up's end and at the end it times
``mesh status`` and ``mesh proof --list`` on every agent (interpreter start included).

Targets (issue "Running for months", for a 30-minute run; printed beside the values):
RSS growth < 5 MB per agent (per reading: 5 MB over the readings a 30-minute run
measures), bytes written <= 2x bytes stored, CPU per reading flat within 10 % (the
last fifth of the measured period against the first), and with ``--retention-mb X``
every agent's online store (``agent.db``, its WAL and ``records/``: what retention
bounds; not ``archive/``) at most X MB (10^6 bytes) in every sample. Targets are
reported, never asserted.

Results go where the other benchmarks' go (``--out``, default bench/out): the rows in
``results.json`` and ``results.md``, and under ``scenarios.soak.soak`` in the JSON the
summary and every sample. This module must never leave a process behind: its children
stop in order at the end and on Ctrl-C or SIGTERM, and die with it if it is killed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import signal
import string
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from types import FrameType
from typing import Any

from agents.control import ControlError, request
from agents.demo import new_site, with_site
from agents.profile import ProfileError, load_profile
from agents.settlement import LOCKING_STATES
from bench.procs import ROOT, module_cmd
from bench.report import Row, Target, fmt, text_table

SCENARIO = "soak"
PROFILES = Path(__file__).resolve().parent / "soak_profiles"
SENSOR, MILL, BUYER = "vibration-sensor", "cnc-mill", "robot-cell"
AGENTS = (SENSOR, MILL, BUYER)
"""Started in this order (providers first); stopped buyer first."""
MINER = "ledger-miner"
BLOCK_SECONDS = 2.0
READING_PRICE, SPINDLE_PRICE, SPINDLE_TICK = 1, 2, 0.25
"""As in bench/soak_profiles/: what the buyer's units and budgets are sized from."""
WARMUP = 0.2
WINDOW = 0.2
"""CPU flatness compares the first and the last fifth of the measured period."""
TARGET_MINUTES = 30.0
TARGET_RSS_MB = 5.0
TARGET_WRITTEN_X = 2.0
TARGET_CPU_FLAT = 0.10
LOCKED = frozenset(state.value for state in LOCKING_STATES)
MB = 1_000_000
ONLINE = frozenset({"agent.db", "agent.db-wal", "records"})
"""The data-dir entries a retention bound holds: the database, its WAL and the record
segments (`mesh.anchoring.retention.store_bytes`); not the archive it moves records to."""
STOP_SECONDS = 20.0
"""How long a process may take to stop on its own before it is killed."""


class SoakError(Exception):
    """The soak could not set up, start or keep its agents running."""


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


# ---------------------------------------------------------------- samples (no I/O)


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

    def online(self, name: str) -> int:
        """What `[retention] online_mb` bounds of the agent's store (ONLINE)."""
        return sum(n for entry, n in self.stores[name].items() if entry in ONLINE)


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
        stored = sum(last.stores[name].values()) - sum(first.stores[name].values())
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
            "stored_end": sum(last.stores[name].values()),
            "online_end": last.online(name),
            "online_max": max(s.online(name) for s in [*warmup, *samples]),
            "entries_end": dict(last.stores[name]),
            "status_socket_first": median(socket[:k]) if socket else None,
            "status_socket_last": median(socket[-k:]) if socket else None,
            "status_cli_start": then.get("status", {}).get("s"),
            "status_cli_end": now.get("status", {}).get("s"),
            "proof_list_start": then.get("proof --list", {}).get("s"),
            "proof_list_end": now.get("proof --list", {}).get("s"),
        }
    ledger = sum(last.stores["ledger"].values()) - sum(first.stores["ledger"].values())
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


AGENT_ROWS = (
    # metric; the agent summary's key of the value and of the baseline; unit; scale
    ("RSS growth after warm-up", "rss_growth", "rss_start", "MB", 1 / MB),
    ("RSS growth per reading", "rss_per_reading", "", "B/reading", 1),
    ("bytes written per reading", "written_per_reading", "stored_per_reading", "B/reading", 1),
    ("CPU per reading, last window", "cpu_last", "cpu_first", "us", 1e6),
    ("online store, largest sample", "online_max", "", "MB", 1 / MB),
    ("status over control socket, last window", "status_socket_last", "status_socket_first",
     "ms", 1e3),
    ("`mesh status` latency at end", "status_cli_end", "status_cli_start", "s", 1),
    ("`mesh proof --list` latency at end", "proof_list_end", "proof_list_start", "s", 1),
)  # fmt: skip
BASELINE_NAMES = {
    "rss_start": "RSS at warm-up end",
    "stored_per_reading": "stored",
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
                out.append(replace(row, target=targets.get(key), params={"agent": name}))
    if summary["locked_end"] is not None:
        metric, start = f"locked channel capacity at end, {BUYER}", summary["locked_start"]
        row = Row(SCENARIO, metric, summary["locked_end"], "sat", start, "at warm-up end")
        out.append(replace(row, params={"agent": BUYER}))
    ledger = summary["ledger_stored_per_reading"]
    if ledger is not None:
        out.append(Row(SCENARIO, "ledger bytes stored per reading (shared)", ledger, "B/reading"))
    return out


# ---------------------------------------------------------------- /proc and files


def read_proc(pid: int) -> Proc:
    """A process's RSS, CPU time and disk writes, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 is [0]
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    io = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        io[key] = int(value)
    return Proc(rss * 1024, cpu, io["write_bytes"] - io["cancelled_write_bytes"], io["wchar"])


def tree_bytes(directory: Path) -> dict[str, int]:
    """Bytes under each top-level entry of `directory` (a subdirectory summed whole)."""
    out: dict[str, int] = {}
    for entry in os.scandir(directory):
        with suppress(FileNotFoundError):  # a WAL or a segment removed as we looked
            if entry.is_file(follow_symlinks=False):
                out[entry.name] = entry.stat(follow_symlinks=False).st_size
            elif entry.is_dir(follow_symlinks=False):
                total = 0
                for root, _, files in os.walk(entry.path):
                    for f in files:
                        with suppress(FileNotFoundError):
                            total += os.lstat(os.path.join(root, f)).st_size
                out[entry.name] = total
    return out


def held(stream: Mapping[str, Any]) -> int:
    """Records of one stream `mesh proof --list` shows: in the store and archived."""
    return int(stream["records"]) + int(stream.get("archived_records", 0))


def _child() -> None:
    """In a child before exec: SIGTERM when the soak dies, however it dies, and the
    default SIGINT (a soak started in the background has it ignored, and so would they)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ---------------------------------------------------------------- the processes


class Soak:
    """The processes and files of one soak run under `root`."""

    def __init__(self, root: Path, config: Config) -> None:
        self.root = root
        self.config = config
        self.ledger = root / "ledger" / "ledger.db"
        self.logs = root / "logs"
        self.site = new_site()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: dict[str, int | None] = {}
        """Each process's exit code once stopped; None if it had to be killed."""

    def data(self, name: str) -> Path:
        """An agent's data dir."""
        return self.root / "agents" / name

    def mesh(self, *args: str, timeout: float = 120.0) -> str:
        """Run one `mesh` command to its end; its stdout (raises on failure)."""
        command = module_cmd("agents.cli", *args)
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
            preexec_fn=_child,
        )  # fmt: skip
        if result.returncode != 0:
            raise SoakError(f"mesh {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def profile_text(self, name: str) -> str:
        """The agent's profile for this run: its template, sized, under the run's site."""
        c = self.config
        spindle, readings = (
            math.ceil(2 * c.seconds / SPINDLE_TICK),
            math.ceil(2 * c.seconds * c.rate),
        )
        template = PROFILES / f"{name}.toml"
        text = string.Template(template.read_text()).substitute(
            tick=f"{1 / c.rate:.6g}",
            lifetime_blocks=math.ceil(2 * c.seconds / BLOCK_SECONDS) + 144,
            spindle_units=spindle,
            spindle_budget=spindle * SPINDLE_PRICE,
            vibration_units=readings,
            vibration_budget=readings * READING_PRICE,
        )
        if c.retention_mb is not None:
            text += f"\n[retention]\nonline_mb = {c.retention_mb:g}\n"
            if c.retention_interval is not None:
                text += f"interval = {c.retention_interval:g}\n"
        return with_site(template, text, self.site)

    def prepare(self) -> None:
        """Ledger, keys, profiles and coins, each through the `mesh` CLI."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.mesh("ledger", "init", "--db", str(self.ledger))
        for name in AGENTS:
            data = self.data(name)
            self.mesh("keygen", "--out", str(data / "identity.key"))
            (data / "profile.toml").write_text(self.profile_text(name))
            try:
                profile = load_profile(data / "profile.toml", data_dir=data)
            except ProfileError as exc:
                if self.config.retention_mb is not None and "retention" in exc.key:
                    raise SoakError(
                        f"--retention-mb: no [retention] in profiles yet: {exc}"
                    ) from None
                raise
            # A coin per want (a channel each: none waits for change) and a spare; a
            # provider gets a float for its anchoring fees.
            coins = [w.budget + 10_000 for w in profile.wants] + [50_000]
            if not profile.wants:
                coins = [10_000 + 10 * math.ceil(self.config.seconds)]
            for sats in coins:
                address = self.mesh("address", "--data-dir", str(data)).strip()
                self.mesh("ledger", "fund", "--db", str(self.ledger), address, str(sats))
        self.mesh("ledger", "mine", "--db", str(self.ledger))

    def spawn(self, name: str, *args: str) -> None:
        """Start one long-running `mesh` process, logging beside (not in) the data dirs."""
        command = module_cmd("agents.cli", "--log-level", self.config.log_level, *args)
        with open(self.logs / f"{name}.log", "wb") as log:
            # Its own session: Ctrl-C reaches only the soak, which stops them in order.
            self.procs[name] = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_child,
            )  # fmt: skip

    def start(self) -> None:
        """The miner, then one `mesh run` per agent."""
        ledger = str(self.ledger)
        self.spawn(MINER, "ledger", "mine", "--db", ledger, "--interval", str(BLOCK_SECONDS))
        for name in AGENTS:
            data = self.data(name)
            profile = str(data / "profile.toml")
            self.spawn(name, "run", profile, "--data-dir", str(data), "--ledger", ledger)

    def check_alive(self) -> None:
        """Raise if a process died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SoakError(f"{name} exited with {proc.returncode}:\n{tail}")

    def status(self, name: str) -> tuple[dict[str, Any] | None, float]:
        """An agent's status over its control socket (None if it did not answer), and
        how long the round trip took."""
        started = time.perf_counter()
        try:
            reply = request(self.data(name) / "control.sock", {"cmd": "status"}, timeout=30)
        except (ControlError, OSError, ValueError):
            reply = None
        return reply, time.perf_counter() - started

    def sample(self, t: float) -> Sample:
        """Every process's counters and every store's size, then the agents' answers."""
        procs = {name: read_proc(proc.pid) for name, proc in self.procs.items()}
        stores = {name: tree_bytes(self.data(name)) for name in AGENTS}
        stores["ledger"] = tree_bytes(self.ledger.parent)
        answers = {name: self.status(name) for name in AGENTS}
        buyer = answers[BUYER][0]
        readings = spindle = locked = None
        if buyer is not None:
            wants = {w["service"]: w["delivered"] for w in buyer["wants"]}
            readings, spindle = wants.get("vibration"), wants.get("spindle-time")
            payer = [c for c in buyer["channels"] if c["role"] == "payer"]
            locked = sum(c["capacity"] for c in payer if c["state"] in LOCKED)
        socket = {name: s for name, (reply, s) in answers.items() if reply is not None}
        return Sample(t, procs, stores, readings, spindle, locked, socket)

    def latencies(self) -> dict[str, dict[str, Any]]:
        """Wall time of `mesh status` and `mesh proof --list` on every agent, and how
        many records (and own meter statements: a buyer's orders ended) each lists."""
        out: dict[str, dict[str, Any]] = {}
        for name in AGENTS:
            data = str(self.data(name))
            out[name] = {}
            for command, args in (
                ("status", ("status", "--data-dir", data, "--json")),
                ("proof --list", ("proof", "--data-dir", data, "--list")),
            ):
                started, stdout, error = time.perf_counter(), "", None
                try:
                    stdout = self.mesh(*args)
                except (SoakError, subprocess.TimeoutExpired) as exc:
                    error = str(exc)[-300:]
                out[name][command] = {"s": time.perf_counter() - started, "error": error}
            if stdout:  # proof --list's
                streams = json.loads(stdout)["streams"]
                own = [s for s in streams if s["origin"] == "own" and s["stream"] == "meters"]
                out[name]["records"] = sum(held(s) for s in streams)
                out[name]["meter_statements"] = sum(held(s) for s in own)
        return out

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one process as an operator would (SIGTERM: an agent settles first)."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.exits[name] = None
                return
        self.exits[name] = proc.returncode

    def stop_all(self) -> None:
        """The buyer first (it settles its orders), then the providers, the miner last
        (SIGINT, its Ctrl-C), so that what the agents broadcast at shutdown is mined."""
        for name in (BUYER, SENSOR, MILL):
            if name in self.procs:
                self.stop(name)
        if MINER in self.procs:
            self.stop(MINER, signal.SIGINT)

    def kill_all(self) -> None:
        """Make sure nothing is left running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- the run


def say(line: str) -> None:
    """A progress line, at once (the soak is long)."""
    print(line, flush=True)


def _progress(s: Sample, before: Sample | None, config: Config, phase: str = "") -> str:
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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure(soak: Soak, say: Callable[[str], None]) -> dict[str, Any]:
    """Start the processes, warm up, sample until the end; the samples and latencies,
    also when it ends early (Ctrl-C, a process that died)."""
    config = soak.config
    soak.start()
    spawned = time.monotonic()
    warmup: list[Sample] = []
    measured: list[Sample] = []
    latency: dict[str, Any] = {}
    outcome: dict[str, Any] = {"status": "ok", "error": None}
    try:
        while True:  # warm-up: 20 % of the run, and until both wants deliver
            time.sleep(config.interval)
            soak.check_alive()
            warmup.append(soak.sample(time.monotonic() - spawned))
            s = warmup[-1]
            say(_progress(s, warmup[-2] if len(warmup) > 1 else None, config, " (warm-up)"))
            if s.readings and s.spindle and s.t >= WARMUP * config.seconds:
                break
            if s.t > config.seconds:
                raise SoakError(f"the buyer did not buy both services: logs in {soak.logs}")
        latency["start"] = soak.latencies()
        measured.append(soak.sample(time.monotonic() - spawned))
        say(f"[soak] warm-up over at {measured[0].t:.0f} s; measuring until {config.seconds:.0f} s")
        while config.seconds - measured[-1].t >= config.interval / 2:
            time.sleep(min(config.interval, config.seconds - measured[-1].t))
            soak.check_alive()
            measured.append(soak.sample(time.monotonic() - spawned))
            say(_progress(measured[-1], measured[-2], config))
        latency["end"] = soak.latencies()
    except KeyboardInterrupt:
        outcome.update(status="interrupted", error="interrupted (Ctrl-C or SIGTERM)")
        say("[soak] interrupted: stopping, then reporting what was measured")
    except SoakError as exc:
        outcome.update(status="failed", error=str(exc))
        say(f"[soak] {exc}")
    outcome.update(warmup=warmup, measured=measured, latency=latency)
    return outcome


def run_soak(config: Config, out: Path, data_dir: Path | None, keep: bool) -> int:
    """The whole soak: set up, measure, stop every process, report; the exit code."""
    from bench.cli import write_results  # bench.cli imports this module

    root = data_dir or Path(tempfile.mkdtemp(prefix="m2mesh-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    soak = Soak(root, config)
    started, load_before = time.perf_counter(), os.getloadavg()
    result: dict[str, Any] = {"status": "interrupted", "error": "interrupted during set-up"}
    with _sigterm_as_interrupt():
        try:
            say(f"[soak] {config.minutes:g} min in {root}, site {soak.site}; setting up…")
            try:
                soak.prepare()
            except (SoakError, ProfileError, subprocess.TimeoutExpired) as exc:
                result = {"status": "failed", "error": f"set-up: {exc}"}
            else:
                result = measure(soak, say)
                say("[soak] stopping: the buyer settles, then the providers, then the miner…")
                soak.stop_all()
        except KeyboardInterrupt:  # again, while stopping: kill them, keep the samples
            result.update(status="interrupted", error="interrupted (Ctrl-C or SIGTERM)")
        finally:
            soak.kill_all()
    samples: list[Sample] = result.get("measured", [])
    latency: dict[str, Any] = result.get("latency", {})
    summary, table = None, []
    try:
        summary = summarise(samples, latency, result.get("warmup", []))
        table = rows(summary, config)
    except SoakError as exc:
        result["error"] = result["error"] or str(exc)
        result["status"] = "failed" if result["status"] == "ok" else result["status"]
    outcome = {
        "status": result["status"],
        "error": result["error"],
        "rows": table,
        "seconds": time.perf_counter() - started,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        SCENARIO: {
            "config": asdict(config),
            "site": soak.site,
            "data_dir": str(root),
            "summary": summary,
            "latency": latency,
            "exits": soak.exits,
            "warmup": [asdict(s) for s in result.get("warmup", [])],
            "samples": [asdict(s) for s in samples],
        },
    }
    print_report(outcome, table, summary, soak.exits)
    path = write_results(out, False, {SCENARIO: outcome})
    print(f"wrote {path} and {out / 'results.md'}")
    if keep or data_dir is not None:
        print(f"kept the data dir: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return {"ok": 0, "interrupted": 130}.get(outcome["status"], 1)


def print_report(
    outcome: Mapping[str, Any],
    table: Sequence[Row],
    summary: Mapping[str, Any] | None,
    exits: Mapping[str, int | None],
) -> None:
    """The table beside the targets, what each store holds, how the processes ended."""
    print()
    if table:
        print(text_table(table) + "\n")
    if summary is not None:
        print(
            f"measured {summary['measured_seconds']:.0f} s after warm-up: {summary['readings']}"
            f" readings, {summary['spindle_units']} spindle ticks. Bytes held at the end:"
        )
        for name, a in summary["agents"].items():
            entries = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(a["entries_end"].items()))
            print(f"  {name:<17} {entries}")
        if summary["orders_ended"] is not None:
            print(
                f"orders the buyer ended before the end: {summary['orders_ended']} (0: one"
                " order per want throughout; --log-level info names each one's reason)"
            )
    print(f"exit codes (None: killed after {STOP_SECONDS:g} s): {dict(exits)}")
    verdicts = [r.verdict for r in table if r.verdict]
    print(
        f"targets (of a {TARGET_MINUTES:g}-minute run): {verdicts.count('pass')} pass,"
        f" {verdicts.count('short')} short; status {outcome['status']}"
        + (f": {outcome['error']}" if outcome["error"] else "")
    )


# ---------------------------------------------------------------- command line

GROUP_HELP = (
    "python -m bench soak [--minutes N]: a run of its own, never part of 'all'. A vibration"
    " sensor selling readings at --rate/s, a CNC mill selling spindle time and a robot cell"
    " buying both, each a `mesh run` process on a fresh LocalLedger mined every 2 s, for N"
    " minutes. Every --interval s it samples each agent from /proc (RSS, CPU, disk writes),"
    " its stores' sizes and, over the control socket, the readings delivered and the"
    " capacity the buyer's channels lock; at the end of a 20 % warm-up and at the end it"
    " times `mesh status` and `mesh proof --list`. It reports, per reading and after the"
    " warm-up, each agent's RSS growth, bytes written and stored, CPU in the first and last"
    " fifth of the run, beside the targets of a 30-minute run: RSS growth < 5 MB, written"
    " <= 2x stored, CPU per reading flat within 10 %, and with --retention-mb every online"
    " store within its bound. Ctrl-C stops every process cleanly and reports what was"
    " measured. bench/soak.py explains the details."
)
OPTIONS = (
    "minutes",
    "interval",
    "rate",
    "retention_mb",
    "retention_interval",
    "log_level",
    "data_dir",
    "keep",
)


def add_options(group: Any) -> None:
    """The soak's options (on `python -m bench`'s parser; they apply to `soak` only)."""
    group.add_argument("--minutes", type=float, help="soak length (default 30)")
    group.add_argument("--interval", type=float, help="seconds between samples (default 10)")
    group.add_argument("--rate", type=float, help="sensor readings per second (default 100)")
    group.add_argument(
        "--retention-mb",
        type=float,
        metavar="X",
        help="write `[retention] online_mb = X` into every profile and hold each agent's "
        "online store to X MB (needs a profile parser that knows [retention])",
    )
    group.add_argument(
        "--retention-interval",
        type=float,
        metavar="S",
        help="with --retention-mb: `[retention] interval = S`, seconds between retention "
        "passes (the profile's default is an hour: longer than the soak)",
    )
    group.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the agents' log level (default warning; info names why each order ended); "
        "logs go to DIR/logs/, outside the stores measured, but count as written",
    )
    group.add_argument("--data-dir", type=Path, help="run in this directory and keep it")
    group.add_argument("--keep", action="store_true", default=None, help="keep the data dir")


def used(args: argparse.Namespace) -> list[str]:
    """The soak options given on the command line."""
    return [name for name in OPTIONS if getattr(args, name, None) is not None]


def command(args: argparse.Namespace) -> int:
    """`python -m bench soak ...`: check the options, run, report."""
    config = Config(
        minutes=TARGET_MINUTES if args.minutes is None else args.minutes,
        interval=args.interval or 10.0,
        rate=args.rate or 100.0,
        retention_mb=args.retention_mb,
        retention_interval=args.retention_interval,
        log_level=args.log_level or "warning",
    )
    if config.seconds * (1 - WARMUP) < 3 * config.interval or config.rate <= 0:
        print("bench soak: --minutes must leave 3 --interval samples after the warm-up")
        return 2
    if config.retention_interval is not None and config.retention_mb is None:
        print("bench soak: --retention-interval goes with --retention-mb")
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_soak(config, args.out, args.data_dir, bool(args.keep))
