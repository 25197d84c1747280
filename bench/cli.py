"""The one benchmark tool: ``python -m bench [SCENARIO ...] [--quick] [--out DIR]``,
from a source checkout (the shipped `mesh` command does not import bench/). It runs the
chosen scenarios one after the other, prints the table (scenario, metric, value,
baseline, ratio, target, pass/short), and writes ``results.json``,
``results.md`` (the table as Markdown) and PNG plots to DIR. A full run -- every
scenario, not ``--quick``, the default DIR, no scenario failed -- also makes itself
the latest run in bench/RESULTS.md, whose previous latest run moves to its history
(`refreshes_results_file`): a partial, quick, failed or redirected run must not
replace the full table there.

A scenario is a module with ``run(quick: bool) -> list[Row]``. One that fails is
reported with its traceback and the run goes on with the next; the exit status
is then 1. A scenario whose bench/ module is not there (``anchoring`` without
bench/anchoring.py) is reported as missing, which is not a failure.
The exit status never depends on a target being met: speeds are reported, not
asserted, on a machine shared with other people's work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import soak
from bench.procs import ROOT
from bench.report import RESULTS_FILE, Row, text_table, update_results_file, write_results

SCENARIOS: dict[str, str] = {
    "primitives": "bench.primitives",
    "chain": "bench.chain_bench",
    "messaging": "bench.messaging",
    "payments": "bench.payments",
    "fan-in": "bench.fanin",
    "discovery": "bench.discovery_bench",
    "mesh": "bench.mesh_bench",
    "anchoring": "bench.anchoring_scenario",
    "ot": "bench.ot",
    "dashboard": "bench.dashboard",
    "site": "bench.site",
}
"""Scenario name -> module, in the order a run takes them (cheap ones first)."""

DEFAULT_OUT = ROOT / "bench" / "out"
DESCRIPTION = (__doc__ or "").split("\n\n")[0]
"""What ``--help`` says the tool is (this module doc's first paragraph)."""


class ScenarioMissing(Exception):
    """The scenario's module does not exist (yet)."""


def load(name: str) -> Any:
    """Import a scenario's module; raises `ScenarioMissing` if a bench/ file is not there."""
    try:
        return importlib.import_module(SCENARIOS[name])
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("bench."):
            raise ScenarioMissing(f"{exc.name.replace('.', '/')}.py does not exist") from None
        raise


def run_scenario(name: str, quick: bool) -> dict[str, Any]:
    """Run one scenario; returns its status, duration, load averages and rows."""
    started = time.perf_counter()
    load_before = os.getloadavg()
    outcome: dict[str, Any] = {"status": "ok", "error": None, "rows": []}
    try:
        rows = load(name).run(quick)
        if not isinstance(rows, list) or not all(isinstance(r, Row) for r in rows):
            raise TypeError(f"{name}: run() must return a list of bench.report.Row")
        outcome["rows"] = rows
    except ScenarioMissing as exc:
        outcome.update(status="missing", error=str(exc))
    # A failed scenario must not throw away the others' minutes of measurement:
    # it is reported in full (traceback on stderr, status "failed", exit code 1).
    except Exception as exc:
        traceback.print_exc()
        outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    outcome["seconds"] = time.perf_counter() - started
    outcome["load_before"] = load_before
    outcome["load_after"] = os.getloadavg()
    return outcome


def refreshes_results_file(
    names: Sequence[str], quick: bool, out: Path, outcomes: dict[str, dict[str, Any]]
) -> bool:
    """Whether a run writes bench/RESULTS.md: every scenario ran and none failed, not
    ``--quick`` (its numbers mean nothing), and ``--out`` left at its default (a run
    sent elsewhere is an experiment, or a test, and leaves the repository alone)."""
    return (
        list(names) == list(SCENARIOS)
        and not quick
        and out.resolve() == DEFAULT_OUT.resolve()
        and all(outcomes.get(name, {}).get("status") == "ok" for name in SCENARIOS)
    )


def run(names: Sequence[str], quick: bool, out: Path, plots: bool = True) -> int:
    """Run `names` in registry order, report, write files; returns the exit code."""
    wanted = [n for n in SCENARIOS if n in names]
    outcomes: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name in wanted:
        print(f"[bench] {name} ...", flush=True)
        outcomes[name] = outcome = run_scenario(name, quick)
        print(
            f"[bench] {name}: {outcome['status']}, {len(outcome['rows'])} rows, "
            f"{outcome['seconds']:.1f} s, load {outcome['load_after'][0]:.2f}",
            flush=True,
        )
    rows: list[Row] = [r for o in outcomes.values() for r in o["rows"]]
    print()
    print(text_table(rows))
    print()
    for name, outcome in outcomes.items():
        if outcome["status"] != "ok":
            print(f"{name}: {outcome['status']}: {outcome['error']}")
    verdicts = [r.verdict for r in rows if r.verdict]
    print(
        f"targets: {verdicts.count('pass')} pass, {verdicts.count('short')} short; "
        f"{len(wanted)} scenarios in {time.perf_counter() - started:.0f} s"
        f"{' (quick: numbers are not meaningful)' if quick else ''}"
    )
    print("values are from a shared 2-core machine: read the ratios, not the absolute numbers")
    path = write_results(out, quick, outcomes)
    print(f"wrote {path} and {out / 'results.md'}")
    if refreshes_results_file(wanted, quick, out, outcomes):
        try:
            update_results_file(RESULTS_FILE, json.loads(path.read_text()))
            print(f"wrote the latest run into {RESULTS_FILE}")
        except (OSError, ValueError) as exc:  # the run's own results are written already
            print(f"bench: {RESULTS_FILE} not updated: {exc}", file=sys.stderr)
    if plots:
        from bench.plots import write_plots

        for line in write_plots(rows, out):
            print(line)
    return 1 if any(o["status"] == "failed" for o in outcomes.values()) else 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}; or `soak` alone "
        "(see its options below)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a brief run of each scenario (CI smoke test)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for results.json, results.md and plots (default {DEFAULT_OUT};"
        " only a full run there also updates bench/RESULTS.md)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    soak.add_options(parser.add_argument_group("soak", soak.GROUP_HELP))


def _command(args: argparse.Namespace) -> int:
    if "soak" in args.scenarios:
        if args.scenarios != ["soak"] or args.quick:
            print("bench: soak runs alone and has no --quick (use --minutes)", file=sys.stderr)
            return 2
        return soak.command(args)
    if soak.used(args):
        print(f"bench: {', '.join(soak.used(args))}: soak options", file=sys.stderr)
        return 2
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        print(
            f"bench: unknown scenario {', '.join(unknown)} (known: {', '.join(SCENARIOS)})",
            file=sys.stderr,
        )
        return 2
    return run(args.scenarios or list(SCENARIOS), args.quick, args.out, not args.no_plots)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    _configure(parser)
    return _command(parser.parse_args(argv))
