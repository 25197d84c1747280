"""The chain benchmark still runs and produces numbers (never a speed assertion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_chain_benchmark_quick_run_produces_numbers(tmp_path: Path) -> None:
    out = tmp_path / "chain.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.chain_bench", "--quick", "--txs", "50", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {
        "spend_validate",
        "ledger_accept",
        "proof_generate",
        "proof_verify_offline",
        "proof_verify_live",
    }
    assert rows["spend_validate"]["ratio_to_spend_validate"] == 1.0
    assert all(row["per_s"] > 0 for row in rows.values())
    assert "x Spend.validate" in result.stdout
