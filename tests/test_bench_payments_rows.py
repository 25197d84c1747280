"""The payments scenario judges every half of issue 6's targets and shows each window
beside the bound under it (pure: no process is started)."""

from __future__ import annotations

from typing import Any

from bench.payments import _rows
from bench.report import Row


def result(rate: float, latencies_ms: list[float], **extra: float) -> dict[str, Any]:
    return {"rate": rate, "latencies": [ms / 1e3 for ms in latencies_ms], "count": 100, **extra}


def by_metric(rows: list[Row]) -> dict[str, Row]:
    return {row.metric: row for row in rows}


def test_window_1_is_held_to_its_rate_and_its_p99_and_shown_beside_the_transport() -> None:
    fast_tail = by_metric(
        _rows(1, result(1_600, [1.0] * 99 + [1.5], floor=4_000), 14_000, "", None)
    )
    assert fast_tail["updates/s, window 1"].verdict == "pass"
    assert fast_tail["ack latency p99, window 1"].verdict == "pass"
    beside = fast_tail["updates/s, window 1, against the transport alone"]
    assert beside.ratio == 1_600 / 4_000

    slow_tail = by_metric(_rows(1, result(1_600, [1.0] * 90 + [2.5] * 10), 14_000, "", None))
    assert slow_tail["ack latency p99, window 1"].verdict == "short"
    assert "updates/s, window 1, against the transport alone" not in slow_tail


def test_windows_64_and_1024_are_shown_beside_the_payees_verify_bound() -> None:
    rows = by_metric(_rows(64, result(16_000, [5.0] * 100, verify_bound=20_000), 15_000, "", None))
    assert rows["updates/s, window 64"].verdict == "pass"  # >= 15 000 and >= 1.0x
    assert rows["updates/s, window 64, against the payee's verify alone"].ratio == 0.8
    assert rows["ack latency p99, window 64"].verdict == ""  # no latency target there

    short = by_metric(_rows(1024, result(16_000, [5.0] * 100), 17_000, "", None))
    assert short["updates/s, window 1024"].verdict == "short"  # below 1.0x the ceiling
