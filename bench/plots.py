"""PNG plots of a run: throughput vs payload size, payments/s vs buyers, latency CDFs.

Drawn from the rows alone (their `params` and `cdfs`), after the run. matplotlib
is the optional ``bench`` extra (``pip install -e '.[bench]'``); without it the
plots are skipped with a message and nothing else changes, so CI never needs it.
A plot whose scenario did not run is skipped too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import Row

NOTE = "shared 2-core machine: compare curves within this run"


def write_plots(rows: Sequence[Row], out: Path) -> list[str]:
    """Draw every plot the rows allow into `out`; returns one line per plot or skip."""
    try:
        import matplotlib
    except ImportError:
        return ["plots skipped: matplotlib is not installed (pip install -e '.[bench]')"]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for name, draw in (
        ("throughput_vs_payload.png", _throughput),
        ("fanin.png", _fanin),
        ("latency_cdf.png", _latency),
    ):
        fig = draw(plt, rows)
        if fig is None:
            lines.append(f"plot {name} skipped: its scenario did not run")
            continue
        fig.text(0.99, 0.01, NOTE, ha="right", va="bottom", fontsize=7, color="grey")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        lines.append(f"wrote {out / name}")
    return lines


def _throughput(plt: Any, rows: Sequence[Row]) -> Any:
    """frames/s and MB/s vs frame size: m2mesh, raw pynng, raw Trio TCP."""
    points = [r for r in rows if r.params.get("measure") == "throughput"]
    if not points:
        return None
    series: dict[str, dict[int, float]] = {"m2mesh": {}, "raw pynng": {}, "raw Trio TCP": {}}
    for row in points:
        size = int(row.params["size"])
        label = "m2mesh" if row.params["kind"] == "mesh" else "raw Trio TCP"
        series[label][size] = row.value
        if row.baseline is not None:
            series["raw pynng"][size] = row.baseline
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, by_size in series.items():
        sizes = sorted(by_size)
        left.plot(sizes, [by_size[s] for s in sizes], marker="o", label=label)
        right.plot(sizes, [by_size[s] * s / 1e6 for s in sizes], marker="o", label=label)
    for axis, unit in ((left, "frames/s"), (right, "MB/s of payload")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("frame payload (bytes)")
        axis.set_ylabel(unit)
        axis.grid(True, alpha=0.3)
        axis.legend()
    left.set_title("one-way throughput vs payload size")
    right.set_title("payload bandwidth")
    return fig


def _fanin(plt: Any, rows: Sequence[Row]) -> Any:
    """Aggregate payments/s and provider peak RSS vs concurrent buyers."""
    rates = [r for r in rows if r.scenario == "fan-in" and r.unit == "/s"]
    memory = [r for r in rows if r.scenario == "fan-in" and r.unit == "MiB"]
    if not rates:
        return None
    fig, axis = plt.subplots(figsize=(7, 4))
    buyers = [int(r.params["buyers"]) for r in rates]
    axis.plot(buyers, [r.value for r in rates], marker="o", label="aggregate payments/s")
    single = next((r.value for r in rates if r.params["buyers"] == 1), None)
    if single is not None:
        axis.axhline(single, color="grey", linestyle=":", label="single pair (same run)")
        axis.axhline(0.8 * single, color="red", linestyle="--", label="target: 80 % of a pair")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent buyers (processes), one provider")
    axis.set_ylabel("payments/s")
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    twin = axis.twinx()
    twin.plot(
        [int(r.params["buyers"]) for r in memory],
        [r.value for r in memory],
        marker="s",
        color="tab:green",
        label="provider peak RSS",
    )
    twin.set_ylabel("provider peak RSS (MiB)")
    twin.set_ylim(bottom=0)
    handles, labels = axis.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    axis.legend(handles + more, labels + more_labels, fontsize=8, loc="lower left")
    axis.set_title("fan-in: payments/s vs number of concurrent buyers")
    return fig


def _latency(plt: Any, rows: Sequence[Row]) -> Any:
    """Round-trip CDFs (messaging) and update->ack CDFs (payments)."""
    panels = [
        (scenario, [r for r in rows if r.scenario == scenario and r.cdfs])
        for scenario in ("messaging", "payments")
    ]
    panels = [(s, found) for s, found in panels if found]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    fractions = [i / 100 for i in range(101)]
    for axis, (scenario, found) in zip(axes[0], panels, strict=True):
        for row in found:
            prefix = f"{row.params['size']} B, " if scenario == "messaging" else ""
            for label, points in row.cdfs.items():
                axis.plot(points, fractions, label=prefix + label)
        axis.set_xscale("log")
        axis.set_xlabel(f"latency ({found[0].unit})")
        axis.set_ylabel("fraction of samples")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
        axis.set_title(
            "messaging: round-trip time" if scenario == "messaging" else "payments: update -> ack"
        )
    return fig
