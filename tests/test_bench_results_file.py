"""bench/RESULTS.md: a full run replaces the latest-run section and keeps the history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.cli import DEFAULT_OUT, SCENARIOS, refreshes_results_file
from bench.report import (
    HISTORY_MARK,
    LATEST_END,
    LATEST_START,
    Row,
    Target,
    update_results_file,
)

HAND_WRITTEN = f"""# Benchmark results

How to read these numbers.

## Latest full run

{LATEST_START}
### `python -m bench`, 2026-11-25

| scenario | metric | value | baseline | ratio | target | result |
|---|---|--:|--:|--:|---|---|
| payments | updates/s, window 64 | 17 440 /s | 19 615 /s | 0.89x | >= 1.00x | **short** |
| payments | ack latency p50, window 64 | 3.01 ms | - | - | - | - |
{LATEST_END}

## History

{HISTORY_MARK}

### Eighth run of 2026-12-02: the payer signs ahead

Window 1 gained ~15 % from signing ahead.
"""


def document(when: str, rate: float) -> dict[str, Any]:
    """A results.json document of two scenarios, as `bench.report.write_results` writes."""
    rows = {
        "payments": [
            Row("payments", "updates/s, window 64", rate, "/s", 10_000.0, "sign+verify",
                Target(min_ratio=1.0)),
            Row("payments", "ack latency p50, window 64", 3.2, "ms"),
        ],
        "anchoring": [
            Row("anchoring", "bytes on chain per record, batch 1000", 0.313, "B",
                target=Target(max_value=1.0)),
        ],
    }  # fmt: skip
    return {
        "when": when,
        "quick": False,
        "host": {"cpus": 2, "python": "3.11.9"},
        "scenarios": {
            name: {
                "status": "ok",
                "error": None,
                "seconds": 61.0,
                "load_before": [0.5, 0.4, 0.3],
                "load_after": [1.5, 0.9, 0.5],
                "rows": [row.to_json() for row in scenario_rows],
            }
            for name, scenario_rows in rows.items()
        },
    }


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) + len(start) : text.index(end)]


def test_a_run_replaces_the_latest_section_and_moves_the_old_one_to_the_history(
    tmp_path: Path,
) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(HAND_WRITTEN)

    update_results_file(results, document("2026-12-06T10:00:00+00:00", 12_000.0))

    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nHow to read these numbers.\n")
    latest = section(text, LATEST_START, LATEST_END)
    assert "### `python -m bench`, 2026-12-06T10:00:00+00:00" in latest
    assert "2 scenarios in 2 min 2 s, 2 CPUs, Python 3.11.9" in latest
    assert "Targets: 2 pass, 0 short." in latest
    assert (
        "| payments | updates/s, window 64 | 12 000 /s | 10 000 /s (sign+verify) | 1.20x"
        " | >= 1.00x | pass |" in latest
    )
    assert "| payments | ack latency p50, window 64 | 3.20 ms | - | - | - | - |" in latest
    assert "2026-11-25" not in latest and "17 440" not in latest

    history = text[text.index(HISTORY_MARK) :]
    # The replaced run is the newest history entry, cut to its rows with a target...
    assert history.index("### `python -m bench`, 2026-11-25") < history.index("### Eighth run")
    assert "| payments | updates/s, window 64 | 17 440 /s |" in history
    assert "ack latency p50, window 64 | 3.01 ms" not in history
    assert "(1 row without a target is left out here.)" in history
    # ...and what was there by hand is kept word for word.
    assert history.endswith(
        "### Eighth run of 2026-12-02: the payer signs ahead\n\n"
        "Window 1 gained ~15 % from signing ahead.\n"
    )


def test_each_run_pushes_the_one_before_it_down_the_history(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(HAND_WRITTEN)
    update_results_file(results, document("2026-12-06T10:00:00+00:00", 12_000.0))
    update_results_file(results, document("2026-12-07T10:00:00+00:00", 9_000.0))

    text = results.read_text()
    latest = section(text, LATEST_START, LATEST_END)
    assert "2026-12-07" in latest and "| 9 000 /s |" in latest and "**short**" in latest
    assert "2026-12-06" not in latest
    history = text[text.index(HISTORY_MARK) :]
    order = [history.index(h) for h in ("2026-12-06T10", "2026-11-25", "### Eighth run")]
    assert order == sorted(order)
    assert history.count("| 12 000 /s |") == 1
    assert text.count(LATEST_START) == text.count(LATEST_END) == text.count(HISTORY_MARK) == 1


def test_a_missing_file_is_created_and_a_file_without_markers_is_refused(
    tmp_path: Path,
) -> None:
    results = tmp_path / "RESULTS.md"
    update_results_file(results, document("2026-12-06T10:00:00+00:00", 12_000.0))
    text = results.read_text()
    assert "| 12 000 /s |" in section(text, LATEST_START, LATEST_END)
    assert text.rstrip().endswith(HISTORY_MARK)

    other = tmp_path / "OTHER.md"
    other.write_text("# someone's notes\n")
    with pytest.raises(ValueError, match="markers"):
        update_results_file(other, document("2026-12-06T10:00:00+00:00", 1.0))
    assert other.read_text() == "# someone's notes\n"


def test_only_a_full_run_into_the_default_directory_refreshes_the_file(tmp_path: Path) -> None:
    everything = list(SCENARIOS)
    ok = {name: {"status": "ok"} for name in SCENARIOS}
    assert refreshes_results_file(everything, False, DEFAULT_OUT, ok)
    assert not refreshes_results_file(everything, True, DEFAULT_OUT, ok)  # --quick
    assert not refreshes_results_file(everything[:2], False, DEFAULT_OUT, ok)  # a few
    assert not refreshes_results_file(everything, False, tmp_path, ok)  # --out elsewhere
    failed = {**ok, "payments": {"status": "failed"}}
    assert not refreshes_results_file(everything, False, DEFAULT_OUT, failed)
