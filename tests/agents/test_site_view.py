"""The site's reconciliation says why it does not reconcile, one line per channel or
work order (the demo once failed in CI with nothing but exit code 1 to go on)."""

from __future__ import annotations

from typing import Any

from agents.site_view import mismatches


def _channel(**change: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "channel_id": "ab" * 32,
        "service": "spindle-time",
        "payer": "02" + "11" * 32,
        "payee": "03" + "22" * 32,
        "payer_agent": "robot-cell",
        "provider": "cnc-mill",
        "state": "closed",
        "close_mined": True,
        "total": 12,
        "delivered_value": 12,
        "payee_on_ledger": 12,
    }
    return {**channel, **change}


def test_a_site_that_reconciles_has_no_mismatch() -> None:
    assert mismatches([_channel(), _channel()], [{"part": "P-1", "ledger_ok": True}]) == []


def test_each_kind_of_mismatch_is_named() -> None:
    lines = mismatches(
        [
            _channel(delivered_value=14),  # a tick delivered and never paid
            _channel(payee_on_ledger=10),
            _channel(state="open", close_mined=False),
            _channel(provider=None),
        ],
        [{"part": "BRK-008", "ledger_ok": False}],
    )
    assert lines == [
        "channel abababababababab (spindle-time, robot-cell -> cnc-mill):"
        " paid 12 sat, the meter says 14, the ledger 12",
        "channel abababababababab (spindle-time, robot-cell -> cnc-mill):"
        " paid 12 sat, the meter says 12, the ledger 10",
        "channel abababababababab (spindle-time, robot-cell -> cnc-mill): open, close mined: False",
        "channel abababababababab (spindle-time, robot-cell -> 0322222222222222):"
        " one end is no agent of this site",
        "work order of part BRK-008: the ledger does not match its state",
    ]
