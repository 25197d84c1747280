"""The benchmarks still run and produce numbers (never a speed assertion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_messaging_benchmark_quick_run_produces_numbers(tmp_path: Path) -> None:
    out = tmp_path / "messaging.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.messaging", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert {(r["kind"], r["size"]) for r in rows} == {
        (kind, size) for kind in ("mesh", "pynng", "tcp") for size in (100, 4096)
    }
    for row in rows:
        assert row["frames_per_s"] > 0 and row["rtt_p50_us"] > 0 and row["rtt_p99_us"] > 0
    assert "target:" in result.stdout
