"""A site's escrowed work orders at the end of a run: each part's verdict and where its
money went, read from the buyers' stores and checked against the ledger.

Per buyer row: the escrow's funding must hold the agreed amount, and its settlement
pay the amount less the fee to the machine's payout on PASS, or back to the buyer's
on FAIL or with no verdict (the refund). A part still open (not settled and proven)
is unmet. (docs/ARCHITECTURE.md §1, §4)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.workflows.store import WORK_ORDER_SCHEMA, WorkOrderStore
from mesh.chain.base import OutputState
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import parse_exact
from mesh.store import Store
from mesh.wire import decode
from mesh.workflow.frames import EscrowOffer, Verdict

Say = Callable[..., None]


def work_orders(
    names: Sequence[str], data_dir: Callable[[str], Path], ledger: LocalLedger
) -> list[dict[str, Any]]:
    """Every buyer's work orders (abandoned ones left out), each checked on the ledger."""
    found: list[dict[str, Any]] = []
    for name in names:
        with Store(data_dir(name) / "agent.db") as store:
            if store.version(WORK_ORDER_SCHEMA.component) == 0:
                continue
            rows = WorkOrderStore(store, register=False).recent(10_000)
        for row in reversed(rows):
            if row.role != "buyer" or row.state == "abandoned":
                continue
            offer = decode(row.data["offer"])
            assert isinstance(offer, EscrowOffer)
            verdict = decode(row.data["verdict"]) if row.data.get("verdict") else None
            passed = verdict.passed if isinstance(verdict, Verdict) else None
            owner = bytes(row.data.get("payout", b"")) if passed else offer.buyer_payout
            found.append({
                "buyer": name, "part": row.part, "state": row.state, "proven": row.done,
                "verdict": None if passed is None else ("PASS" if passed else "FAIL"),
                "amount": offer.amount, "fee": offer.fee, "units": row.data.get("units", 0),
                "paid": row.data.get("paid", 0),
                **_settled(ledger, offer, owner),
            })  # fmt: skip
    return found


def _settled(ledger: LocalLedger, offer: EscrowOffer, owner: bytes) -> dict[str, Any]:
    """What the escrow held and what went to its rightful owner, from the ledger."""
    out = ledger.output(offer.funding_txid, 0)
    held = out.satoshis or 0
    raw = ledger.raw_tx(out.spent_by) if out.state is OutputState.SPENT and out.spent_by else None
    to_owner = 0
    if raw is not None:
        to_owner = sum(
            o.satoshis for o in parse_exact(raw).outputs if o.locking_script.serialize() == owner
        )
    ok = held == offer.amount and to_owner == offer.amount - offer.fee
    return {"held": held, "to_owner": to_owner, "ledger_ok": ok}


def parts_open(statuses: Mapping[str, dict[str, Any] | None]) -> int:
    """Parts the site's buyers have still to settle and prove (from their statuses)."""
    return sum(
        int(((st or {}).get("work_orders") or {}).get("parts_open", 0)) for st in statuses.values()
    )


def unmet_work(statuses: Mapping[str, dict[str, Any] | None]) -> list[str]:
    """One line per buyer with parts still open."""
    lines = []
    for name, st in statuses.items():
        open_ = int(((st or {}).get("work_orders") or {}).get("parts_open", 0))
        if open_:
            lines.append(f"{name}: {open_} part(s) of its work orders not settled and proven")
    return lines


def print_work(say: Say, orders: list[dict[str, Any]]) -> None:
    """Each part's verdict and money flow, one line each."""
    if not orders:
        return
    say("work orders (escrowed completion payments, released by the inspector):")
    say("  part      verdict  escrow   tool time  settled   to its owner  proven")
    for o in orders:
        to = "machine" if o["verdict"] == "PASS" else "buyer"
        say(
            f"  {o['part']:<9} {o['verdict'] or '-':<7} {o['held']:>6}   {o['units']:>3} units"
            f"  {o['state']:<9} {o['to_owner']:>5} ({to:<7})  {o['proven']!s:<5}"
            + ("" if o["ledger_ok"] else "  DOES NOT MATCH")
        )


__all__ = ["parts_open", "print_work", "unmet_work", "work_orders"]
