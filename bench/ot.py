"""OT scenario: an OPC UA value changes; how soon, and how often, a buyer holds it signed.

    python -m bench ot [--quick]

Real processes, as `tests/ot/test_plant_path.py` wires them: the simulated controller
(`bench.ot_controller`: `agents.ot.controller` on a real asyncua server, its
``Machine.Vibration`` written on a fixed schedule, each write's SourceTimestamp the
instant it was written), a seller `mesh run` whose feed's source subscribes to that node
(``[services.opcua]``, sampling and publishing every `INTERVAL`), a buyer `mesh run`
(the seller its static peer, same site, funded on a fresh LocalLedger) and `mesh buy
--json`, whose deliveries say when the buyer held each reading, verified
(``received_ms``). One machine, one clock.

- **Latency** at `LATENCY_RATE` changes/s: ``received_ms - source_ms`` of every reading
  a `mesh buy` of `Timing.latency_units` got, p50 and p99. The baseline is a bare
  asyncua subscription to the same node with the same intervals, in this process,
  timed the same way (ms, the same `stamp_ms`), for half its time right before and
  half right after each mesh leg. Rows: the mesh's p50 and p99 beside the bare ones,
  and what the mesh adds at p50 (mesh p50 - bare p50; shown as 0 if the bare one was
  slower, with the signed difference in the row's ``added_ms_signed``).
- **Readings/s per feed**: the controller at `FEED_RATE` changes/s, one `mesh buy` of
  `Timing.feed_units`; the readings the buyer held per second, from the first to the
  last, after the first `WARMUP_FRACTION` of them. Baseline: what the bare subscription
  receives per second of the same changes. The row's params also say how many CPU cores
  the seller, the buyer and the controller used while that `mesh buy` ran (its start-up
  included): a process near 1.0 is the limit; none near it, a wait is.
- **Sparkplug**: `bench.ot_sparkplug` (DDATA publishes/s beside bare paho).

Each row is the median over `Timing.reps` repetitions (after one buy of `WARMUP_UNITS`,
not measured, which opens the buyer's channel). The seller gives `CREDIT` readings of
credit, so a feed at 1 000/s is not waiting for each payment. Times are whole ms (a
reading's ``source_ms``), so a latency is +-1 ms.
Targets (the OT issue): p99 < 100 ms at 100 changes/s, >= 1 000 readings/s per feed,
the mesh adds < 10 ms at p50 over the bare subscription. This module owns the
processes and the clocks; it must never leave a process behind (every one is
stopped, then killed, when the scenario ends or fails).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.ot import OT_EXTRA, missing
from bench import ot_sparkplug
from bench.procs import ROOT, module_cmd
from bench.report import Row, Target, percentile, quantiles

SCENARIO = "ot"
SERVICE = "spindle-vibration"
NODE = "ns=2;s=Machine.Vibration"
INTERVAL = 0.005
"""Seconds: the subscription's sampling and publishing interval (seller and bare)."""
LATENCY_RATE = 100.0
FEED_RATE = 2000.0
"""Changes/s while readings/s is measured: twice the target, so the feed is the limit."""
CREDIT = 100
WARMUP_FRACTION = 0.1
WARMUP_UNITS = 20
P99_TARGET_MS, ADDED_TARGET_MS, RATE_TARGET = 100.0, 10.0, 1000.0
START_SECONDS = 60.0
"""How long a process may take to start (the agents, their session, the source)."""

Sample = tuple[int, int]
"""(source_ms, received_ms) of one reading."""


@dataclass(frozen=True)
class Timing:
    """How much each leg measures."""

    reps: int
    latency_units: int
    """Readings one latency leg buys (at `LATENCY_RATE`/s)."""
    bare_seconds: float
    """Bare subscription seconds around each latency leg (half before, half after)."""
    feed_units: int
    """Readings one readings/s leg buys."""
    bare_feed_seconds: float
    """Bare subscription seconds at `FEED_RATE`, before each readings/s leg."""
    sparkplug_messages: int
    """DDATA messages per Sparkplug repetition (publisher and bare paho each)."""


QUICK = Timing(reps=1, latency_units=200, bare_seconds=2.0, feed_units=2000,
               bare_feed_seconds=1.0, sparkplug_messages=5_000)  # fmt: skip
FULL = Timing(reps=3, latency_units=1000, bare_seconds=6.0, feed_units=10_000,
              bare_feed_seconds=3.0, sparkplug_messages=50_000)  # fmt: skip


# ---------------------------------------------------------------- the bare subscription


def bare_subscription(endpoint: str, seconds: float) -> list[Sample]:
    """What a bare asyncua subscription to `NODE` (`INTERVAL`) receives in `seconds`,
    each as (SourceTimestamp ms, receive ms), as the seller's source times it."""
    return asyncio.run(_bare(endpoint, seconds))


async def _bare(endpoint: str, seconds: float) -> list[Sample]:
    from asyncua import ua
    from asyncua.client.client import Client

    from agents.ot.opcua_source import stamp_ms
    from mesh.readings import now_ms

    samples: list[Sample] = []
    counting = False

    class Changes:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            received = now_ms()
            source = stamp_ms(data.monitored_item.Value.SourceTimestamp)
            if counting and source is not None:
                samples.append((source, received))

    async with Client(endpoint, timeout=4) as client:
        node = client.get_node(NODE)
        subscription = await client.create_subscription(INTERVAL * 1000, Changes())
        await subscription.subscribe_data_change(
            node, queuesize=1000, sampling_interval=ua.Double(INTERVAL * 1000)
        )
        await asyncio.sleep(0.3)  # the subscription's first publish is behind it
        counting = True
        await asyncio.sleep(seconds)
        counting = False
    return samples


# ---------------------------------------------------------------- the plant


def seller_profile(endpoint: str) -> str:
    """The seller's feed: the controller's node, sold a reading at a time."""
    return f"""
[[services]]
id = "{SERVICE}"
kind = "data-feed"
unit = "reading"
price = 1
tick = 0.01
credit = {CREDIT}

[services.opcua]
endpoint = "{endpoint}"
node = "{NODE}"
interval = {INTERVAL}
"""


class Controller:
    """`bench.ot_controller` in its own process (see its docstring)."""

    def __init__(self, work: Path) -> None:
        from agents.ot.controller import free_port

        self.log = (work / "controller.log").open("wb")
        self.proc = subprocess.Popen(
            module_cmd("bench.ot_controller", str(free_port("127.0.0.1"))),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
        )
        self.endpoint = str(self._answer()["endpoint"])

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the controller exited {self.proc.wait()}: see its log")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def rate(self, rate: float) -> dict[str, Any]:
        """Change the node `rate` times a second from now; what the previous rate wrote."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"rate": rate}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def stop(self) -> None:
        """End of input: it stops its server and exits (killed if it does not)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


class Plant:
    """The controller, the seller and the buyer, running (see the module docstring)."""

    def __init__(self, work: Path, stops: ExitStack) -> None:
        from mesh.chain.ledger import LocalLedger
        from tests.discovery.agents import RunningAgent, sessions
        from tests.reliability.procs import free_port

        self.work = work
        ledger = work / "ledger.db"
        LocalLedger.create(ledger).close()
        self.controller = Controller(work)
        stops.callback(self.controller.stop)
        site = f"bench-ot-{os.getpid()}"  # away from any other run's agents
        port = free_port()
        self.seller = RunningAgent(
            work, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
            seller_profile(self.controller.endpoint), site=site,
        )  # fmt: skip
        stops.callback(self.seller.stop)
        self.buyer = RunningAgent(
            work, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", "",
            funds=10_000_000, capacity=2_000_000, site=site,
            static_peers=[f"{self.seller.peer_id}@tcp://127.0.0.1:{port}"],
        )  # fmt: skip
        stops.callback(self.buyer.stop)
        seller_id = self.seller.peer_id
        self.buyer.wait(lambda s: seller_id in sessions(s), START_SECONDS, "a session")
        self.seller.wait(
            lambda s: s["bridges"]["sources"][SERVICE].startswith("connected"),
            START_SECONDS,
            "the source connected to the controller",
        )
        self.buys = 0

    def buy(self, units: int, timeout: float) -> list[Sample]:
        """`mesh buy --json` of `units` readings: each one's (source_ms, received_ms)."""
        self.buys += 1
        out = self.work / f"buy-{self.buys}.json"
        command = module_cmd(
            "agents.cli", "--log-level", "error", "buy", SERVICE, "--kind", "data-feed",
            "--units", str(units), "--peer", self.seller.peer_id,
            "--data-dir", str(self.buyer.data), "--json", "--out", str(out),
            "--timeout", f"{timeout:g}",
        )  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout + 60, check=False, cwd=ROOT
        )
        if not out.exists():
            raise RuntimeError(f"mesh buy wrote nothing (exit {done.returncode}): {done.stderr}")
        document = json.loads(out.read_text())
        if document["delivered"] < units:
            raise RuntimeError(f"mesh buy: {document['delivered']}/{units}: {document['why']}")
        return [(d["reading"]["source_ms"], d["received_ms"]) for d in document["deliveries"]]


@contextmanager
def plant() -> Iterator[Plant]:
    """A running plant in a fresh directory; every process stopped at the end, the
    last started first (also when starting one failed)."""
    with tempfile.TemporaryDirectory(prefix="bench-ot-") as tmp, ExitStack() as stops:
        yield Plant(Path(tmp), stops)


# ---------------------------------------------------------------- the legs


def latencies(samples: Sequence[Sample]) -> list[int]:
    """Each reading's ms from its change to its receipt, sorted."""
    return sorted(received - source for source, received in samples)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def held_per_second(samples: Sequence[Sample]) -> float:
    """Readings held per second from the first to the last of `samples`, past the first
    `WARMUP_FRACTION` of them."""
    counted = samples[int(len(samples) * WARMUP_FRACTION) :]
    if len(counted) < 2:
        raise RuntimeError("too few readings to time")
    span = (counted[-1][1] - counted[0][1]) / 1000
    return (len(counted) - 1) / span if span > 0 else float("inf")


@dataclass(frozen=True)
class Repetition:
    """What one repetition measured."""

    mesh_ms: list[int]
    bare_ms: list[int]
    feed_rate: float
    bare_feed_rate: float
    controller_rate: float
    """Changes/s the controller really wrote while the feed was timed."""
    feed_cores: dict[str, float]
    """CPU cores each process used during the readings/s leg (is one of them the limit?)."""


def repetition(p: Plant, timing: Timing) -> Repetition:
    """One latency leg between two bare halves, then the readings/s leg."""
    p.controller.rate(LATENCY_RATE)
    before = bare_subscription(p.controller.endpoint, timing.bare_seconds / 2)
    units = timing.latency_units
    mesh = p.buy(units, units / LATENCY_RATE * 3 + 10)
    after = bare_subscription(p.controller.endpoint, timing.bare_seconds / 2)
    p.controller.rate(FEED_RATE)
    bare_feed = bare_subscription(p.controller.endpoint, timing.bare_feed_seconds)
    pids = {"seller": p.seller.proc.pid, "buyer": p.buyer.proc.pid,
            "controller": p.controller.proc.pid}  # fmt: skip
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    fed = p.buy(timing.feed_units, timing.feed_units / RATE_TARGET * 4 + 10)
    seconds = time.monotonic() - started
    cores = {name: (cpu_seconds(pid) - cpu[name]) / seconds for name, pid in pids.items()}
    wrote = p.controller.rate(0)
    return Repetition(
        mesh_ms=latencies(mesh),
        bare_ms=latencies(before + after),
        feed_rate=held_per_second(fed),
        bare_feed_rate=len(bare_feed) / timing.bare_feed_seconds,
        controller_rate=wrote["written"] / wrote["seconds"],
        feed_cores=cores,
    )


def _median(reps: Sequence[Repetition], value: Callable[[Repetition], float]) -> float:
    return float(statistics.median(value(r) for r in reps))


def rows_of(reps: Sequence[Repetition], timing: Timing) -> list[Row]:
    """The latency and readings/s rows: medians over `reps`."""
    p50 = _median(reps, lambda r: percentile(r.mesh_ms, 0.5))
    p99 = _median(reps, lambda r: percentile(r.mesh_ms, 0.99))
    bare50 = _median(reps, lambda r: percentile(r.bare_ms, 0.5))
    bare99 = _median(reps, lambda r: percentile(r.bare_ms, 0.99))
    added = _median(reps, lambda r: percentile(r.mesh_ms, 0.5) - percentile(r.bare_ms, 0.5))
    params: dict[str, int | float | str] = {
        "changes_per_s": LATENCY_RATE,
        "interval_s": INTERVAL,
        "credit": CREDIT,
        "repetitions": len(reps),
        "mesh_readings": sum(len(r.mesh_ms) for r in reps),
        "bare_readings": sum(len(r.bare_ms) for r in reps),
        "mesh_max_ms": max(r.mesh_ms[-1] for r in reps),
        "bare_max_ms": max(r.bare_ms[-1] for r in reps),
    }
    cdfs = {
        "mesh": quantiles([x for r in reps for x in r.mesh_ms]),
        "bare asyncua": quantiles([x for r in reps for x in r.bare_ms]),
    }
    feed = _median(reps, lambda r: r.feed_rate)
    bare_feed = _median(reps, lambda r: r.bare_feed_rate)
    feed_cores = {
        name: float(statistics.median(r.feed_cores[name] for r in reps))
        for name in reps[0].feed_cores
    }
    where = f"@ {LATENCY_RATE:g} changes/s"
    return [
        Row(SCENARIO, f"OPC UA change -> buyer holds signed reading, p50 {where}", p50, "ms",
            bare50, "bare asyncua", None, params),
        Row(SCENARIO, f"OPC UA change -> buyer holds signed reading, p99 {where}", p99, "ms",
            bare99, "bare asyncua", Target(max_value=P99_TARGET_MS), params, cdfs),
        Row(SCENARIO, f"latency the mesh adds at p50 {where}", max(added, 0.0), "ms",
            target=Target(max_value=ADDED_TARGET_MS),
            params={**params, "added_ms_signed": added}),
        Row(SCENARIO, "readings/s per feed (one buyer, controller at "
            f"{FEED_RATE:g} changes/s)", feed, "/s", bare_feed, "bare asyncua",
            Target(min_value=RATE_TARGET),
            {"changes_per_s": FEED_RATE, "units": timing.feed_units, "credit": CREDIT,
             "controller_changes_per_s": _median(reps, lambda r: r.controller_rate),
             **{f"{name}_cpu_cores": cores for name, cores in feed_cores.items()},
             "repetitions": len(reps)}),
    ]  # fmt: skip


def run(quick: bool) -> list[Row]:
    """Every leg (see the module docstring); returns the rows."""
    absent = missing("asyncua")
    if absent:  # not a failure: reported as missing, as a scenario without its module
        from bench.cli import ScenarioMissing

        raise ScenarioMissing(f"needs {', '.join(absent)}: {OT_EXTRA}")
    timing = QUICK if quick else FULL
    with plant() as p:
        p.controller.rate(LATENCY_RATE)
        p.buy(WARMUP_UNITS, 30)  # opens the channel: not measured
        p.controller.rate(0)
        reps = [repetition(p, timing) for _ in range(timing.reps)]
    rows = rows_of(reps, timing)
    sparkplug = ot_sparkplug.measure(timing.sparkplug_messages, timing.reps)
    if isinstance(sparkplug, str):
        print(f"[bench] {SCENARIO}: Sparkplug rows skipped: {sparkplug}", file=sys.stderr)
    else:
        rows += ot_sparkplug.rows(SCENARIO, sparkplug)
    return rows


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main([SCENARIO, *sys.argv[1:]]))
