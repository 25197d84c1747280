"""`mesh passport PART`: export a part's passport from the buyer's data dir.

    mesh passport PART --data-dir DIR [--out FILE]

The buyer's store holds everything the passport needs once the part's escrow is
settled and mined (`agents.workflows.buyer`): the work order's terms, the funding and
the settlement with their BUMPs, and the records that tell what happened -- the
machine's meter statement of the part's tool time, the inspector's verdict and the
process readings bought while the part was made -- each kept with its producer's
receipt, so its anchor proof comes from the buyer's own data dir
(`mesh.anchoring.archive`). The file is checked with `mesh verify FILE` offline
(`mesh.workflow.passport`). A running agent may keep writing meanwhile.
(docs/ARCHITECTURE.md §4, §7)
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agents.proof_cli import ProofCliError, open_records
from agents.workflows.store import WORK_ORDER_SCHEMA, Saved, WorkOrderStore
from mesh.anchoring.errors import NotAnchored, RecordNotFound
from mesh.anchoring.proof import Proof
from mesh.certs.certificate import Certificate
from mesh.store import Store
from mesh.wire import decode
from mesh.workflow.frames import EscrowOffer
from mesh.workflow.passport import MinedTx, Passport

SETTLED = ("released", "returned", "refunded")


class PassportError(ProofCliError):
    """A passport that cannot be exported (yet), and why."""


def _row(data_dir: Path, part: str, stack: ExitStack) -> Saved:
    path = data_dir / "agent.db"
    if not path.is_file():
        raise PassportError(f"{path}: no agent store here (is --data-dir a buyer's data dir?)")
    store = stack.enter_context(Store(path))
    if store.version(WORK_ORDER_SCHEMA.component) == 0:
        raise PassportError(f"{data_dir}: this agent has placed no work orders")
    rows = WorkOrderStore(store, register=False).of_part(part)
    if not rows:
        raise PassportError(f"no work order of part {part!r} here (`mesh status` lists them)")
    proven = [r for r in rows if r.state in SETTLED and "settlement_mined" in r.data]
    if not proven:
        row = rows[0]
        if row.state == "abandoned":
            raise PassportError(
                f"part {part}: its work order was abandoned ({row.data.get('why')})"
            )
        raise PassportError(
            f"part {part}: its escrow is {row.state}, not yet settled and mined"
            " (let the agent run until it is)"
        )
    return proven[0]


def build_passport(data_dir: Path, part: str) -> tuple[Passport, int]:
    """The passport of `part` from a buyer's data dir, and how many process readings
    were left out because their producer's receipt has not come yet."""
    with ExitStack() as stack:
        row = _row(data_dir, part, stack)
        records = open_records(data_dir, stack)
        offer = decode(row.data["offer"])
        assert isinstance(offer, EscrowOffer)
        proofs: list[Proof] = []
        for agent, stream, seq in row.data.get("records", []):
            try:
                proofs.append(records.proof(bytes.fromhex(agent), stream, seq))
            except (RecordNotFound, NotAnchored) as exc:
                raise PassportError(
                    f"part {part}: {stream} record {seq} of {agent[:16]}… is not proven yet"
                    f" ({exc}); let the buyer run a little longer for its receipt"
                ) from None
        missing = 0
        for agent, stream, seq in row.data.get("readings", []):
            try:
                proofs.append(records.proof(bytes.fromhex(agent), stream, seq))
            except (RecordNotFound, NotAnchored):
                missing += 1
        passport = Passport(
            part=row.part,
            order_id=row.order_id,
            buyer=str(row.data["buyer"]),
            machine=row.data["machine"],
            inspector=offer.inspector,
            amount=offer.amount,
            fee=offer.fee,
            refund_height=offer.refund_height,
            buyer_payout=offer.buyer_payout,
            machine_payout=bytes(row.data["payout"]),
            funding=_mined(row.data["funding_mined"]),
            settlement=_mined(row.data["settlement_mined"]),
            records=tuple(proofs),
            machine_certificate=_certificate(row.data.get("machine_certificate")),
            inspector_certificate=_certificate(row.data.get("inspector_certificate")),
        )
    return passport, missing


def _certificate(text: str | None) -> Certificate | None:
    """A certificate the buyer saw proved before it ordered, if any."""
    return None if text is None else Certificate.from_json(json.loads(text))


def _mined(doc: dict[str, Any]) -> MinedTx:
    return MinedTx(bytes.fromhex(doc["tx"]), int(doc["height"]), str(doc["block"]),
                   bytes.fromhex(doc["bump"]))  # fmt: skip


def cmd_passport(args: argparse.Namespace) -> int:
    """Export a part's passport (JSON) to --out or stdout."""
    data_dir = args.data_dir
    if data_dir is None:
        raise PassportError("--data-dir DIR is required (the buyer's data directory)")
    passport, missing = build_passport(data_dir, args.part)
    text = json.dumps(passport.to_document(), indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        left = f"; {missing} reading(s) left out, not yet proven" if missing else ""
        print(
            f"passport of part {passport.part} written to {args.out}"
            f" ({len(passport.records)} records{left}); check it with `mesh verify {args.out}`"
        )
    return 0


def add_passport_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``passport`` to the `mesh` parser's subcommands."""
    passport = subparsers.add_parser(
        "passport",
        help="export a part's passport: work order, meter, readings, verdict and escrow",
        description="Export the passport of a part a buyer ordered through an escrowed work "
        "order: the work order's terms, the machine's meter statement, the process readings "
        "bought while it was made, the inspector's verdict and the escrow's funding and "
        "settlement, each with its signature and its proof on chain. Anyone checks it "
        "offline with `mesh verify FILE`. Read from the buyer's data dir once the escrow is "
        "settled and mined (`mesh status` shows the work orders).",
    )
    passport.add_argument("part", help="the part id (as in the workflow's parts)")
    passport.add_argument("--data-dir", type=Path, help="the buyer agent's data directory")
    passport.add_argument("--out", type=Path, help="write the passport here (default: stdout)")
    passport.set_defaults(func=cmd_passport)


__all__ = ["PassportError", "add_passport_command", "build_passport", "cmd_passport"]
