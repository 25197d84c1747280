"""Work orders in the agent's SQLite store: one row per (order, role) this agent plays.

A row holds what its party needs to finish the order after a crash: the escrow's
terms (the offer or the funding announcement, as frames), the signatures collected,
the transactions built, the verdict and, for the buyer, what its part passport will
name (the records and the mined transactions). The shell (`agents.workflows`) saves a
row *before* it sends or broadcasts what the row makes possible -- the buyer keeps
the machine's refund signature before its funding goes out, the machine its release
before it broadcasts it -- so a kill -9 at any step leaves a row that says what to do
next. ``done`` marks a row with nothing left to do (settled, and for the buyer the
settlement's proof kept). Blocking SQLite: called from a worker thread under the
agent's store limiter. (docs/ARCHITECTURE.md §4, §7)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from mesh.store import Schema, Store
from mesh.wire import decode
from mesh.workflow.frames import EscrowOffer, Verdict

WORK_ORDER_SCHEMA = Schema(
    "work_orders",
    (
        """
        CREATE TABLE work_orders (
            order_id BLOB NOT NULL,
            role TEXT NOT NULL,
            workflow TEXT NOT NULL,
            part TEXT NOT NULL,
            state TEXT NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            data BLOB NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            PRIMARY KEY (order_id, role)
        );
        CREATE INDEX work_orders_part ON work_orders (part);
        CREATE INDEX work_orders_open ON work_orders (done);
        """,
    ),
)

ROLES = ("buyer", "machine", "inspector")


@dataclass
class Saved:
    """One stored row: `data` is the role's own (msgpack: bytes, str, ints, lists)."""

    order_id: bytes
    role: str
    workflow: str
    part: str
    state: str
    data: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    created: float = 0.0
    updated: float = 0.0


def summary(saved: Saved, peer: str) -> dict[str, object]:
    """What `mesh status` shows of any role's row (`peer`: the other party it deals with)."""
    return {"role": saved.role, "order_id": saved.order_id.hex(), "part": saved.part,
            "state": saved.state, "peer": peer}  # fmt: skip


def buyer_summary(s: Saved) -> dict[str, object]:
    """What `mesh status` shows of a buyer's row: the escrow, the verdict, the tool
    time, where the money went and whether the passport can be exported."""
    offer = decode(s.data["offer"])
    assert isinstance(offer, EscrowOffer)
    verdict = decode(s.data["verdict"]) if s.data.get("verdict") else None
    return summary(s, s.data["machine"]) | {
        "workflow": s.workflow, "amount": offer.amount, "fee": offer.fee,
        "verdict": None if not isinstance(verdict, Verdict)
        else ("PASS" if verdict.passed else "FAIL"),
        "units": s.data.get("units", 0), "paid": s.data.get("paid", 0),
        "proven": s.done and "settlement_mined" in s.data,
        "funding_txid": offer.funding_txid, "settlement": s.data.get("settlement"),
        "buyer_payout": offer.buyer_payout.hex(),
        "machine_payout": bytes(s.data.get("payout", b"")).hex(),
        "why": s.data.get("why"),
    }  # fmt: skip


class WorkOrderStore:
    """The ``work_orders`` table."""

    def __init__(self, store: Store, *, register: bool = True) -> None:
        """`register`: create or migrate the table (False: only read, e.g. another
        process's store whose schema is there)."""
        self._store = store
        if register:
            store.register(WORK_ORDER_SCHEMA)

    def save(self, saved: Saved) -> None:
        """Write `saved` (insert or replace), durably before returning."""
        now = time.time()
        saved.created = saved.created or now
        saved.updated = now
        data = msgpack.packb(saved.data, use_bin_type=True)
        with self._store.write() as db:
            db.execute(
                "INSERT INTO work_orders (order_id, role, workflow, part, state, done, data,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (order_id, role) DO UPDATE SET state = excluded.state,"
                " done = excluded.done, data = excluded.data, updated = excluded.updated",
                (saved.order_id, saved.role, saved.workflow, saved.part, saved.state,
                 int(saved.done), data, saved.created, saved.updated),
            )  # fmt: skip

    def get(self, order_id: bytes, role: str) -> Saved | None:
        """The row of `order_id` in `role`, if any."""
        rows = self._select("WHERE order_id = ? AND role = ?", (order_id, role))
        return rows[0] if rows else None

    def unfinished(self) -> list[Saved]:
        """Every row with something left to do, oldest first (what a start resumes)."""
        return self._select("WHERE done = 0 ORDER BY created", ())

    def of_part(self, part: str, role: str = "buyer") -> list[Saved]:
        """The rows of `part` in `role`, newest first."""
        return self._select("WHERE part = ? AND role = ? ORDER BY created DESC", (part, role))

    def settled_parts(self) -> set[str]:
        """The parts whose buyer's row is done and not abandoned (settled, proven)."""
        with self._store.read() as db:
            rows = db.execute(
                "SELECT DISTINCT part FROM work_orders WHERE role = 'buyer' AND done = 1"
                " AND state != 'abandoned'"
            ).fetchall()
        return {str(r[0]) for r in rows}

    def recent(self, limit: int = 50) -> list[Saved]:
        """The newest rows, newest first."""
        return self._select("ORDER BY created DESC LIMIT ?", (limit,))

    def _select(self, where: str, params: tuple[object, ...]) -> list[Saved]:
        with self._store.read() as db:
            rows = db.execute(
                "SELECT order_id, role, workflow, part, state, done, data, created, updated"
                f" FROM work_orders {where}",
                params,
            ).fetchall()
        return [
            Saved(
                bytes(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                msgpack.unpackb(bytes(r[6]), raw=False),
                bool(r[5]),
                float(r[7]),
                float(r[8]),
            )
            for r in rows
        ]


__all__ = ["ROLES", "WORK_ORDER_SCHEMA", "Saved", "WorkOrderStore", "buyer_summary", "summary"]
