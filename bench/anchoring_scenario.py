"""Anchoring scenario: bench/anchoring.py's measurements as suite rows, with targets.

bench/anchoring.py (records/s, batches/s, proofs/s, bytes on chain per record) is
its own tool with its own row type; this adapter runs its `measure` and states
the issue's targets on the two rows they are about. Should anchoring.py rename
those rows, the scenario fails loudly rather than drop a target. Once
anchoring.py returns `bench.report.Row`s from ``run(quick)`` this module can go.
"""

from __future__ import annotations

from bench import anchoring
from bench.report import Row, Target

SCENARIO = "anchoring"
TARGETS = {
    "records logged+batched+anchored (log_many x100)": Target(
        min_value=anchoring.TARGET_LOGGED_PER_S
    ),
    "bytes on chain per record, batch 1000": Target(max_value=anchoring.TARGET_BYTES_PER_RECORD),
}


def run(quick: bool) -> list[Row]:
    """Run bench/anchoring.py's measurements; returns them as result rows."""
    measured = anchoring.measure(quick)
    missing = TARGETS.keys() - {row.name for row in measured}
    if missing:
        raise RuntimeError(f"bench/anchoring.py no longer reports {sorted(missing)}")
    return [
        Row(
            SCENARIO,
            row.name,
            row.value,
            row.unit,
            row.baseline_value,
            row.baseline,
            TARGETS.get(row.name),
            row.params,
        )
        for row in measured
    ]
