"""`mesh demo`'s work orders: the robot cell has four brackets milled, each paid on the
quality lab's PASS from an escrow, and one part's passport is exported and verified.

Once the agents have keys (and before they start) the demo gives the robot cell a
``[[workflows]]`` entry -- four parts from the CNC mill's spindle time, 1 000 sat each
locked in escrow, inspected by the quality lab -- the mill an ``[escrow]`` that works
with the quality lab, and the quality lab an ``[inspection]`` (the simulated CMM, a
part passes within 25 µm). One of the four (``BRK-008``) measures 37 µm: it fails and
its escrow returns to the robot cell. After the run the passport of the first good
part is exported from the robot cell's data dir and checked as `mesh verify` does; it
carries the quality lab's accreditation, which the robot cell saw proved before it
ordered (`agents.demo_certs`).
(docs/ARCHITECTURE.md §4, §6.2)
"""

from __future__ import annotations

import json
from pathlib import Path

from agents.demo_certs import ACCREDITATION
from agents.passport_cli import PassportError, build_passport
from agents.site_view import Roster, Statuses
from mesh.anchoring.headers import HeaderChain
from mesh.workflow.passport import PassportFailed, verify_passport

BUYER, MACHINE, INSPECTOR = "robot-cell", "cnc-mill", "quality-lab"
PARTS = ("BRK-006", "BRK-007", "BRK-008", "BRK-009")
PAYMENT, FEE = 1_000, 10
ANCHORING = "\n[anchoring]\nseconds = 2.0   # (mesh demo) records anchored within seconds\n"


def _append(path: Path, text: str) -> None:
    with path.open("a") as profile:
        profile.write(text)


class DemoWorkOrders:
    """The demo's work orders: the profile changes, and the passport at the end."""

    def __init__(self) -> None:
        self.passport: Path | None = None

    def setup(self, roster: Roster, certifier: str) -> None:
        """Give the three parties their tables (the site has made the keys); the robot
        cell orders only from an inspector `certifier` accredited."""
        if not {BUYER, MACHINE, INSPECTOR} <= set(roster.names):
            return
        lab = roster.ids[INSPECTOR]
        parts = ", ".join(f'"{p}"' for p in PARTS)
        _append(roster.data_dir(BUYER) / "profile.toml", f"""
# (mesh demo) brackets milled on the CNC mill, paid on the quality lab's PASS
[[workflows]]
id = "brackets"
service = "spindle-time"
tick = 0.25
units = 4
max_price = 3
parts = [{parts}]
payment = {PAYMENT}
fee = {FEE}
inspector = "{lab}"
refund_blocks = 60
readings = "vibration"
require = "accredited"

[requirements.accredited]
type = "{ACCREDITATION}"
certifiers = ["{certifier}"]   # the demo's calibration lab
reveal = ["scope", "accredited_until"]
conditions = ["accredited_until >= today", "scope == dimensional inspection"]
""")  # fmt: skip
        _append(roster.data_dir(MACHINE) / "profile.toml", f"""
# (mesh demo) escrowed work orders, judged by the quality lab
[escrow]
inspectors = ["{lab}"]
min_payment = 100
{ANCHORING}""")  # fmt: skip
        _append(roster.data_dir(INSPECTOR) / "profile.toml", f"""
# (mesh demo) the simulated CMM; a part passes within 25 µm
[inspection]
handler = "builtin:cmm"
pass_when = ["deviation_um <= 25"]
{ANCHORING}""")  # fmt: skip

    def report(self, roster: Roster, statuses: Statuses) -> list[str]:
        """The first good part's passport, exported and verified (agents stopped)."""
        if not {BUYER, MACHINE, INSPECTOR} <= set(roster.names):
            return []
        orders = ((statuses.get(BUYER) or {}).get("work_orders") or {}).get("orders", [])
        good = [o["part"] for o in orders if o["role"] == "buyer" and o["verdict"] == "PASS"]
        if not good:
            return ["", "passport: no part passed inspection"]
        part = sorted(good)[0]
        try:
            passport, _ = build_passport(roster.data_dir(BUYER), part)
            story = verify_passport(passport, HeaderChain.from_ledger_file(roster.ledger))
        except (PassportError, PassportFailed) as exc:
            return ["", f"passport of {part}: not exported: {exc}"]
        path = roster.root / f"passport-{part}.json"
        path.write_text(json.dumps(passport.to_document(), indent=1) + "\n")
        self.passport = path
        return [
            "",
            f"passport of part {part}: {path} (kept with --keep)",
            f"  mesh verify {path} --ledger {roster.ledger}:",
            f"  VALID passport of {story[0]}",
            *story[1:],
        ]


__all__ = ["PARTS", "DemoWorkOrders"]
