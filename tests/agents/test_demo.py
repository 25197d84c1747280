"""`mesh demo` as users run it, beyond the one happy run in test_agent_procs.py: demos
side by side on one host stay apart, and an unmet want fails the demo by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.demo import with_site

ROOT = Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_the_site_goes_into_the_agent_table_of_a_copy() -> None:
    text = "# a mill\n[agent]\nname = 'm'\n\n[discovery]\nsite = 'x'\n"
    assert with_site(Path("m.toml"), text, "demo-0a1b2c3d") == (
        "# a mill\n[agent]\nsite = \"demo-0a1b2c3d\"\nname = 'm'\n\n[discovery]\nsite = 'x'\n"
    )


@pytest.mark.slow
def test_two_demos_at_once_never_meet(tmp_path: Path) -> None:
    """(slow: two whole demos, ~30 s. CI keeps the property through
    `tests/reliability/test_two_deployments.py`: two sites on one LAN never meet.)"""
    runs = [demo("--seconds", "50", "--json", "--data-dir", str(tmp_path / n)) for n in "ab"]
    outs = [run.communicate(timeout=120) for run in runs]
    summaries = []
    for run, (out, err) in zip(runs, outs, strict=True):
        assert run.returncode == 0, err[-3000:]
        summaries.append(json.loads(out))
    a, b = summaries
    assert a["site"] != b["site"]
    for summary in summaries:
        assert summary["reconciled"] and not summary["unmet"]
        ids = {agent["peer_id"] for agent in summary["agents"]}
        for agent in summary["agents"]:  # its own three peers, and no one else
            assert set(agent["met"]) == ids - {agent["peer_id"]}, agent
        for channel in summary["channels"]:
            assert channel["payer"] in ids
            assert channel["payer_agent"] in ("robot-cell", "quality-lab")


@pytest.mark.slow  # (~20 s; CI sees an unmet want named in test_up's Ctrl-C run)
def test_a_demo_without_the_quality_lab_names_the_unmet_want_and_fails(
    tmp_path: Path,
) -> None:
    # Spindle time and the feed take ~12 s; the inspections can never come. (Without the
    # plant path: test_agent_procs runs the demo with it.)
    data = str(tmp_path / "d")
    run = demo("--seconds", "15", "--without", "quality-lab", "--no-plant", "--data-dir", data)
    out, err = run.communicate(timeout=90)
    assert run.returncode == 1, err[-3000:]
    assert "UNMET: robot-cell wants inspection: delivered 0/3 (" in out, out
    assert "reconcile exactly" not in out
    # Every want is listed with its state, the met ones too.
    listed = {line.split()[1] for line in out.splitlines() if line.startswith("robot-cell ")}
    assert listed == {"spindle-time", "vibration", "inspection"}, out
