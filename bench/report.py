"""Result rows, targets and tables: what every scenario returns and how it is shown.

A scenario measures and returns `Row`s; this module holds, judges and formats them.
It never measures anything and never starts a process.

Every row states a value beside a baseline measured in the same run and their
ratio (value / baseline), because this 2-core machine is shared and noisy:
absolute numbers say more about the neighbours than about the code.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Param = int | float | str


@dataclass(frozen=True)
class Target:
    """A goal from issue 9: bounds on the value and/or the ratio; all given must hold."""

    min_value: float | None = None
    max_value: float | None = None
    min_ratio: float | None = None
    max_ratio: float | None = None

    def met(self, value: float, ratio: float | None) -> bool:
        """Whether `value` (and `ratio`, where the target bounds it) meet the goal."""
        if self.min_value is not None and not value >= self.min_value:
            return False
        if self.max_value is not None and not value <= self.max_value:
            return False
        if self.min_ratio is not None and (ratio is None or not ratio >= self.min_ratio):
            return False
        return self.max_ratio is None or (ratio is not None and ratio <= self.max_ratio)

    def describe(self, unit: str) -> str:
        """The goal as a short phrase, e.g. ``>= 15 000 /s, >= 1.00x``."""
        parts = []
        if self.min_value is not None:
            parts.append(f">= {fmt(self.min_value)} {unit}")
        if self.max_value is not None:
            parts.append(f"<= {fmt(self.max_value)} {unit}")
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:.2f}x")
        if self.max_ratio is not None:
            parts.append(f"<= {self.max_ratio:.2f}x")
        return ", ".join(parts)


@dataclass(frozen=True)
class Row:
    """One measured number, its same-run baseline, and the goal it is held to.

    `params` carries what the plots need (frame size, window, buyers, kind);
    `cdfs` maps a label to the quantiles (0, 1, ..., 100 %) of a latency
    distribution, in `unit`, for the latency CDF plot.
    """

    scenario: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None
    params: Mapping[str, Param] = field(default_factory=dict)
    cdfs: Mapping[str, Sequence[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """value / baseline, or None without a (non-zero) baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def verdict(self) -> str:
        """``pass`` or ``short`` against the target; empty without one."""
        if self.target is None:
            return ""
        return "pass" if self.target.met(self.value, self.ratio) else "short"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the derived ratio and verdict."""
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target": self.target.describe(self.unit) if self.target else None,
            "verdict": self.verdict or None,
            "params": dict(self.params),
            "cdfs": {label: list(q) for label, q in self.cdfs.items()},
        }


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (nearest rank) of an already sorted sequence."""
    if not ordered:
        raise ValueError("no samples")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def quantiles(samples: Sequence[float], scale: float = 1.0) -> list[float]:
    """The 0 %, 1 %, ..., 100 % quantiles of `samples`, multiplied by `scale`."""
    ordered = sorted(samples)
    return [percentile(ordered, i / 100) * scale for i in range(101)]


def fmt(x: float) -> str:
    """A number for people: thousands separated by spaces, three significant digits."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}".replace(",", " ")
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


HEADER = ("scenario", "metric", "value", "baseline", "ratio", "target", "result")


def cells(row: Row) -> tuple[str, ...]:
    """The table cells of one row."""
    return json_cells(row.to_json())


def json_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The table cells of one row as `Row.to_json` (and results.json) holds it."""
    unit = row["unit"]
    baseline = "-"
    if row["baseline"] is not None:
        baseline = f"{fmt(row['baseline'])} {unit}"
        if row["baseline_name"]:
            baseline += f" ({row['baseline_name']})"
    ratio = row["ratio"]
    return (
        row["scenario"],
        row["metric"],
        f"{fmt(row['value'])} {unit}",
        baseline,
        "-" if ratio is None else f"{ratio:.2f}x",
        row["target"] or "-",
        row["verdict"] or "-",
    )


def text_table(rows: Sequence[Row]) -> str:
    """A fixed-width table for the terminal."""
    table = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    right = {2, 3, 4}
    lines = []
    for line in table:
        lines.append(
            "  ".join(
                cell.rjust(w) if i in right else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table (results.md, bench/RESULTS.md)."""
    return _markdown([cells(row) for row in rows])


def _markdown(table: Sequence[tuple[str, ...]]) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    for line in table:
        verdict = f"**{line[-1]}**" if line[-1] == "short" else line[-1]
        lines.append("| " + " | ".join([*line[:-1], verdict]) + " |")
    return "\n".join(lines)


def _host() -> dict[str, Any]:
    try:
        import bsv

        native = str(bsv.native_status())
    except (ImportError, AttributeError) as exc:
        native = f"unknown ({exc})"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bsv_native": native,
    }


def write_results(out: Path, quick: bool, outcomes: dict[str, dict[str, Any]]) -> Path:
    """Write results.json (every row, status and load) and results.md; returns the json path."""
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "host": _host(),
        "note": "shared 2-core machine: compare ratios, not absolute values",
        "scenarios": {
            name: {**o, "rows": [r.to_json() for r in o["rows"]]} for name, o in outcomes.items()
        },
    }
    path = out / "results.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    rows = [r for o in outcomes.values() for r in o["rows"]]
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    return path


RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
"""The benchmark history kept in the repository. A full run of ``python -m bench``
(`bench.cli.refreshes_results_file` says which runs count) rewrites its latest-run
section with `update_results_file`; the run it replaces moves to the top of the history."""

LATEST_START = "<!-- bench:latest:start -->"
LATEST_END = "<!-- bench:latest:end -->"
HISTORY_MARK = "<!-- bench:history -->"

_NEW_RESULTS_FILE = f"""# Benchmark results

Written by `python -m bench`: a full run rewrites the latest run below, and the run it
replaces moves to the top of the history with its rows that have a target.

## Latest full run

{LATEST_START}
{LATEST_END}

## History

{HISTORY_MARK}
"""


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def latest_section(document: Mapping[str, Any]) -> str:
    """The latest-run section of bench/RESULTS.md for one results.json `document`:
    a heading with the run's date, one line on the run, and every row's table."""
    outcomes: Mapping[str, Mapping[str, Any]] = document["scenarios"]
    rows = [row for outcome in outcomes.values() for row in outcome["rows"]]
    host: Mapping[str, Any] = document.get("host", {})
    facts = [
        f"{len(outcomes)} scenarios in {_duration(sum(o['seconds'] for o in outcomes.values()))}"
    ]
    if host.get("cpus"):
        facts.append(f"{host['cpus']} CPUs")
    if host.get("python"):
        facts.append(f"Python {host['python']}")
    loads = [o["load_before"] for o in outcomes.values() if o.get("load_before")]
    if loads:
        facts.append(f"load average {loads[0][0]:.1f} at the start")
    verdicts = [row["verdict"] for row in rows if row["verdict"]]
    return "\n".join(
        [
            f"### `python -m bench`, {document['when']}",
            "",
            f"{', '.join(facts)}. Targets: {verdicts.count('pass')} pass, "
            f"{verdicts.count('short')} short.",
            "",
            _markdown([json_cells(row) for row in rows]),
        ]
    )


def _judged(section: str) -> str:
    """A latest-run section cut down for the history: its text, and of its table only
    the rows held to a target."""
    kept: list[str] = []
    dropped = 0
    for line in section.strip().splitlines():
        is_row = line.startswith("| ") and not line.startswith("| scenario |")
        if is_row and line.split(" | ")[5] == "-":
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        rows = (
            "1 row without a target is" if dropped == 1 else f"{dropped} rows without a target are"
        )
        kept += ["", f"({rows} left out here.)"]
    return "\n".join(kept)


def update_results_file(path: Path, document: Mapping[str, Any]) -> None:
    """Make `document` (a results.json document) the latest run of the results file at
    `path`, and move the latest run it held to the top of the history below it.

    The file is created if missing. Its three markers (`LATEST_START`, `LATEST_END`,
    `HISTORY_MARK`, in this order) delimit what is rewritten; everything else is kept
    as it is. A file without them is refused with `ValueError`, never overwritten.
    """
    text = path.read_text() if path.exists() else _NEW_RESULTS_FILE
    start, end, mark = (text.find(m) for m in (LATEST_START, LATEST_END, HISTORY_MARK))
    if not 0 <= start < end < mark:
        raise ValueError(
            f"{path}: needs the markers {LATEST_START}, {LATEST_END} and {HISTORY_MARK},"
            " in this order"
        )
    previous = text[start + len(LATEST_START) : end].strip()
    after_mark = mark + len(HISTORY_MARK)
    demoted = f"\n\n{_judged(previous)}" if previous else ""
    updated = (
        f"{text[: start + len(LATEST_START)]}\n{latest_section(document)}\n\n"
        f"{text[end:after_mark]}{demoted}{text[after_mark:]}"
    )
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(updated)
    temporary.replace(path)
