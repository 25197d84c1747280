"""Budgets and channel capacity that hold, with real `mesh run` agents on a real ledger.

Before: a want whose budget was spent placed an empty order every second (each one a
meter record on both sides), and every channel was sized to the want's whole budget.
Now the want stops ("budget spent"), each channel holds at most the profile's
``[channels] capacity``, a full channel is closed before the next one opens, every
order counts toward the want however it ended, and each order asks for no more units
than its channel's room pays (before, a seller's tick of credit ran past a nearly full
channel and stayed unpaid: the demo's channels then did not reconcile).
"""

from __future__ import annotations

import time
from pathlib import Path

from mesh.chain.ledger import LocalLedger
from tests.discovery.agents import FEED, RunningAgent

BUDGET = 60
CAPACITY = 25
WANT = f"""
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.05
max_price = 2
units = 1000000
budget = {BUDGET}
prepay = 2
"""


def test_a_spent_budget_stops_the_want_and_channels_stay_within_capacity(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    seller = RunningAgent(tmp_path, ledger, "seller", "127.0.0.1", "tcp://127.0.0.1:0", FEED)
    buyer = RunningAgent(
        tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", WANT,
        funds=100_000, capacity=CAPACITY,
    )  # fmt: skip
    try:
        status = buyer.wait(
            lambda s: s["wants"][0]["state"] == "budget spent", 90, "the budget spent"
        )
        assert status
        time.sleep(3.0)  # nothing more is ordered once the budget is spent
        now = buyer.status()
        assert now is not None
        (want,) = now["wants"]
        print(f"\nMEASURE budget {BUDGET}: {want}")
        assert want["state"] == "budget spent"
        assert BUDGET - 1 <= want["paid"] <= BUDGET  # price 1: every satoshi but none more
        payer = [c for c in now["channels"] if c["role"] == "payer"]
        # Each order asks for the units its channel's room (or the budget) pays: the
        # seller's credit never runs past it, so nothing is delivered unpaid.
        assert want["delivered"] == want["paid"]
        assert len(payer) >= BUDGET // CAPACITY
        for channel in payer:
            assert channel["capacity"] <= CAPACITY + 10, channel  # + the close fee
        assert sum(1 for c in payer if c["state"] == "open") <= 1
        assert sum(c["total"] for c in payer) == want["paid"]
        placed = want["placed"]
        time.sleep(2.0)
        later = buyer.status()
        assert later is not None and later["wants"][0]["placed"] == placed
    finally:
        buyer.stop()
        seller.stop()
