"""`python -m bench ot`: it runs end to end and its rows hold sane numbers (never a speed
target: CI machines vary), and the buyer says when it held each unit (``received_ms``)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agents.buy_command import DeliverySink
from agents.ot import missing
from bench.ot import SCENARIO, held_per_second, latencies
from mesh.anchoring.record import Record
from mesh.identity import Identity
from mesh.readings import Reading, now_ms

ROOT = Path(__file__).resolve().parents[1]


def test_the_sink_says_when_the_agent_held_each_unit() -> None:
    key = Identity.generate()
    reading = Reading.of("Vibration", 2.5, "mm/s", source_ms=1_765_000_000_000)
    times = iter([1_765_000_000_004, 1_765_000_000_009, 1_765_000_000_011])
    sink = DeliverySink("data-feed", units=2, clock=lambda: next(times))
    for seq in range(3):  # the third is more than asked for: not kept
        prev = bytes(32) if seq == 0 else b"\x01" * 32
        record = Record(key.public_key, "readings/x", seq, 0, reading.encode(), prev)
        sink.add(record.encode())
    shown = sink.to_json()
    assert [(d["seq"], d["received_ms"]) for d in shown] == [
        (0, 1_765_000_000_004),
        (1, 1_765_000_000_009),
    ]
    assert shown[1]["received_ms"] - shown[1]["reading"]["source_ms"] == 9  # a latency
    before = now_ms()
    calls = DeliverySink("call", units=1)  # the wall clock by default, for every kind
    calls.add(b"answer")
    [answer] = calls.to_json()
    assert before <= answer["received_ms"] <= now_ms()
    assert answer["payload"] == "answer"


def test_latencies_and_rate_come_from_source_and_receive_times() -> None:
    samples = [(1000 + 10 * i, 1003 + 10 * i + (i % 3)) for i in range(20)]
    assert latencies(samples) == sorted(3 + i % 3 for i in range(20))
    # 20 readings held 10 ms apart (give or take 2 ms): 100/s, the first 10 % not counted
    assert held_per_second(samples) == pytest.approx(100, rel=0.05)


@pytest.mark.skipif(bool(missing("asyncua")), reason="needs the ot extra (asyncua)")
def test_quick_ot_run_measures_every_leg(
    quick_bench: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, tmp_path = quick_bench  # (the quick run of every scenario, ot among them)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads((tmp_path / "results.json").read_text())["scenarios"][SCENARIO]
    assert outcome["status"] == "ok", outcome["error"]

    def row(prefix: str) -> dict[str, Any]:
        [found] = [r for r in outcome["rows"] if r["metric"].startswith(prefix)]
        return found

    p50, p99 = (
        row("OPC UA change -> buyer holds signed reading, p50"),
        row("OPC UA change -> buyer holds signed reading, p99"),
    )
    assert 0 <= p50["value"] <= p99["value"] < 10_000, (p50, p99)  # ms: changes reach the buyer
    for latency in (p50, p99):
        assert latency["unit"] == "ms" and latency["baseline_name"] == "bare asyncua"
        assert 0 <= latency["baseline"] < 10_000, latency
    assert p99["params"]["mesh_readings"] >= 100 and p99["params"]["bare_readings"] >= 100
    assert math.isfinite(row("latency the mesh adds at p50")["params"]["added_ms_signed"])
    feed = row("readings/s per feed")
    assert feed["unit"] == "/s" and 10 < feed["value"] < 100_000, feed
    assert feed["baseline"] > 10 and feed["params"]["controller_changes_per_s"] > 100
    if "Sparkplug rows skipped" not in result.stderr:  # without mosquitto: said so
        sparkplug = row("Sparkplug DDATA publishes/s")
        assert sparkplug["value"] > 100 and sparkplug["baseline"] > 100, sparkplug
        assert sparkplug["params"]["dropped"] == 0
    for each in outcome["rows"]:
        assert each["scenario"] == SCENARIO and math.isfinite(each["value"]), each
