"""The benchmark suite runs every scenario and produces numbers (never a speed assertion)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from bench.cli import SCENARIOS


def test_quick_run_of_every_scenario_produces_numbers(
    quick_bench: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, tmp_path = quick_bench
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["quick"] is True
    scenarios = document["scenarios"]
    assert set(scenarios) == set(SCENARIOS)
    for name, outcome in scenarios.items():
        assert outcome["status"] == "ok", (name, outcome["error"])
        assert outcome["rows"], name
        for row in outcome["rows"]:
            assert row["scenario"] == name
            assert math.isfinite(row["value"]) and row["value"] >= 0, row
            if row["baseline"] is not None:
                assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    assert (tmp_path / "results.md").read_text().startswith("| scenario |")
    assert "targets:" in result.stdout
    # Plots are optional (the `bench` extra): drawn if matplotlib is there, else skipped.
    if "matplotlib is not installed" not in result.stdout:
        for plot in ("throughput_vs_payload.png", "fanin.png", "latency_cdf.png"):
            assert (tmp_path / plot).stat().st_size > 0, plot
