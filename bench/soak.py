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
the bytes under each entry of every agent's data dir and of the shared ledger's, each
open database's size as of its last commit (from SQLite's WAL index), and, over the
control socket, the readings the buyer verified and the capacity its channels
lock (funded, open, closing or refused). At the end of a warm-up (the first 20 % of the
run, and until both wants deliver) and at the end it times ``mesh status`` and
``mesh proof --list`` on every agent (interpreter start included).

`bench.soak_numbers` turns the samples into growth per reading and holds it to the
targets of a 30-minute run: RSS growth < 5 MB, bytes written <= 2x bytes stored -- the
growth of ``agent.db`` as committed, ``records/`` and ``archive/``; never the WAL,
``-shm`` or a journal, which are scratch -- CPU per reading flat within 10 %, and with
``--retention-mb`` every online store within its bound. Targets are reported, never
asserted.

Results go where the other benchmarks' go (``--out``, default bench/out): the rows in
``results.json`` and ``results.md``, and under ``scenarios.soak.soak`` in the JSON the
summary and every sample. This module owns the processes, /proc, the data dirs and the
command line; it must never compute or judge a number from the samples itself (that is
`bench.soak_numbers`'s), and never leave a process behind: its children stop in order
at the end and on Ctrl-C or SIGTERM, and die with it if it is killed.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import shutil
import signal
import string
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from agents.control import ControlError, request
from agents.demo import new_site, with_site
from agents.profile import ProfileError, load_profile
from bench.procs import ROOT, module_cmd
from bench.report import Row, write_results
from bench.soak_numbers import (
    AGENTS,
    BUYER,
    MILL,
    SCENARIO,
    SENSOR,
    TARGET_MINUTES,
    WARMUP,
    Config,
    Proc,
    Sample,
    SoakError,
    buyer_counts,
    progress_line,
    proof_counts,
    report_lines,
    rows,
    summarise,
)

PROFILES = Path(__file__).resolve().parent / "soak_profiles"
MINER = "ledger-miner"
BLOCK_SECONDS = 2.0
READING_PRICE, SPINDLE_PRICE, SPINDLE_TICK = 1, 2, 0.25
"""As in bench/soak_profiles/: what the buyer's units and budgets are sized from."""
WAL_INDEX_HEADER = 48
"""Bytes of one copy of the header of SQLite's WAL index (``WalIndexHdr``, wal.c)."""
WAL_INDEX_VERSION = 3007000
STOP_SECONDS = 20.0
"""How long a process may take to stop on its own before it is killed."""


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


def committed_bytes(database: Path) -> int | None:
    """The SQLite database at `database` as of its last commit (pages x page size),
    wherever its pages are: in the file, or still in the WAL. Read from the header of
    its WAL index (`database`-shm, native byte order, kept twice so that a reader can
    tell a torn copy); None without an agent holding the index or with no settled copy."""
    for _ in range(5):
        try:
            with open(f"{database}-shm", "rb") as index:
                head = index.read(2 * WAL_INDEX_HEADER)
        except FileNotFoundError:
            return None
        if len(head) < 2 * WAL_INDEX_HEADER:
            return None
        if head[:WAL_INDEX_HEADER] == head[WAL_INDEX_HEADER:]:  # else a commit is under way
            fields: tuple[int, ...] = struct.unpack("=IIIBBHII", head[:24])
            version, _, _, ready, _, page, _, pages = fields
            if version != WAL_INDEX_VERSION or not ready:
                return None
            return pages * (65_536 if page == 1 else page)
        time.sleep(0.001)
    return None


def databases(directory: Path, *names: str) -> dict[str, int]:
    """The committed size (`committed_bytes`) of each database in `directory` that an
    agent has open, by its name."""
    out = {}
    for name in names:
        size = committed_bytes(directory / name)
        if size is not None:
            out[name] = size
    return out


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
        """Every process's counters, every store's size and its databases' committed
        size, then the agents' answers."""
        procs = {name: read_proc(proc.pid) for name, proc in self.procs.items()}
        stores = {name: tree_bytes(self.data(name)) for name in AGENTS}
        stores["ledger"] = tree_bytes(self.ledger.parent)
        committed = {name: databases(self.data(name), "agent.db") for name in AGENTS}
        committed["ledger"] = databases(self.ledger.parent, self.ledger.name)
        answers = {name: self.status(name) for name in AGENTS}
        buyer = answers[BUYER][0]
        readings = spindle = locked = None
        if buyer is not None:
            readings, spindle, locked = buyer_counts(buyer)
        socket = {name: s for name, (reply, s) in answers.items() if reply is not None}
        return Sample(t, procs, stores, readings, spindle, locked, socket, committed)

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
                out[name].update(proof_counts(stdout))
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
            say(progress_line(s, warmup[-2] if len(warmup) > 1 else None, config, " (warm-up)"))
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
            say(progress_line(measured[-1], measured[-2], config))
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
    print("\n".join(report_lines(outcome, table, summary, exits, STOP_SECONDS)))


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
