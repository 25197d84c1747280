"""The log line budget: each kind of line gets a burst and a rate; the rest is counted."""

from __future__ import annotations

import logging

import pytest

from agents.logbudget import LogBudget


def record(
    at: float, msg: str = "handshake with %s failed: %s", *args: object
) -> logging.LogRecord:
    line = logging.LogRecord(
        "mesh.transport", logging.WARNING, __file__, 1, msg, args or ("x", "y"), None
    )
    line.created = at
    return line


def test_a_flood_of_one_kind_is_cut_to_the_burst_then_the_rate() -> None:
    budget = LogBudget(rate=1.0, burst=5)
    assert sum(budget.filter(record(i / 1000)) for i in range(1000)) == 5  # within a second
    assert sum(budget.filter(record(3.5)) for _ in range(10)) == 3  # 3.5 s later: 3 more
    assert budget.dropped == 995 + 7


def test_the_next_line_written_says_how_many_were_left_out() -> None:
    budget = LogBudget(rate=1.0, burst=2)
    for i in range(10):
        budget.filter(record(0.0, "handshake with %s failed: %s", f"peer{i}", "garbage"))
    later = record(5.0, "handshake with %s failed: %s", "peer10", "garbage")
    assert budget.filter(later)
    assert (
        later.getMessage() == "handshake with peer10 failed: garbage [8 more like this not logged]"
    )
    again = record(6.0)
    assert budget.filter(again) and "not logged" not in again.getMessage()


def test_kinds_have_budgets_of_their_own() -> None:
    budget = LogBudget(rate=1.0, burst=3)
    for _ in range(100):
        budget.filter(record(0.0))
    other = record(0.0, "session with %s ended: %s")
    assert budget.filter(other), "a flood of one kind silences no other kind"
    elsewhere = record(0.0)
    elsewhere.name = "agents.channel_base"
    assert budget.filter(elsewhere)


def test_a_kind_that_went_quiet_has_its_whole_burst_again() -> None:
    budget = LogBudget(rate=1.0, burst=4)
    assert sum(budget.filter(record(0.0)) for _ in range(10)) == 4
    assert sum(budget.filter(record(100.0)) for _ in range(10)) == 4


def test_the_kinds_remembered_are_bounded() -> None:
    budget = LogBudget(rate=1.0, burst=1, max_kinds=16)
    for i in range(10_000):  # lines whose text itself varies: every one its own kind
        budget.filter(record(0.0, f"odd line {i}"))
        budget.filter(record(0.0, f"odd line {i}"))
    assert len(budget._budgets) <= 16 and len(budget._dropped) <= 16
    assert budget.dropped == 10_000


def test_flush_reports_what_no_later_line_did(caplog: pytest.LogCaptureFixture) -> None:
    budget = LogBudget(rate=1.0, burst=2)
    for _ in range(10):
        budget.filter(record(0.0))
    caplog.set_level(logging.WARNING)
    budget.flush()
    assert caplog.messages == ["8 more like 'handshake with %s failed: %s' were not logged"]
    caplog.clear()
    budget.flush()
    assert caplog.messages == []
