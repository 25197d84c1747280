"""Three real `mesh run` agents -- buyer, machine, inspector -- on one LocalLedger with a
miner thread, and the ledger-side reconciliation of every escrow they made."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.workflows.inspector import simulated_cmm
from mesh.certs import issue, type_id
from mesh.chain.base import OutputState
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import parse_exact
from mesh.identity import Identity
from tests.discovery.agents import RunningAgent

PAYMENT, FEE, PRICE = 3_000, 20, 2
PASS_LIMIT = 25
ANCHOR = "\n[anchoring]\nseconds = 1.0\n"
"""Every agent anchors within a second: receipts, and so passports, come sooner."""


def parts(passing: int, failing: int) -> list[str]:
    """Part ids the simulated CMM passes (`passing` of them) and fails, in that order."""
    good, bad = [], []
    n = 100
    while len(good) < passing or len(bad) < failing:
        part = f"P-{n}"
        deviation = int(str(simulated_cmm(part)["deviation_um"]))
        (good if deviation <= PASS_LIMIT else bad).append(part)
        n += 1
    return good[:passing] + bad[:failing]


def machine_body(inspector: str, tick: float = 0.1) -> str:
    return f"""
[[services]]
id = "spindle-time"
kind = "tool-time"
unit = "tick"
price = {PRICE}
tick = {tick}
credit = 1
handler = "builtin:spindle"

[escrow]
inspectors = ["{inspector}"]
min_payment = 100
{ANCHOR}"""


INSPECTOR_BODY = f"""
[inspection]
handler = "builtin:cmm"
pass_when = ["deviation_um <= {PASS_LIMIT}"]
{ANCHOR}"""


def buyer_body(inspector: str, part_ids: Sequence[str], units: int = 5, tick: float = 0.1,
               refund_blocks: int = 8, extra: str = "") -> str:  # fmt: skip
    quoted = ", ".join(f'"{p}"' for p in part_ids)
    return f"""{extra}
[[workflows]]
id = "brackets"
service = "spindle-time"
tick = {tick}
units = {units}
max_price = 3
parts = [{quoted}]
payment = {PAYMENT}
fee = {FEE}
inspector = "{inspector}"
refund_blocks = {refund_blocks}
{'require = "accredited"' if extra else ""}
{'machine_require = "genuine"' if "genuine" in extra else ""}
{ANCHOR}"""


@dataclass
class Three:
    ledger: Path
    buyer: RunningAgent
    machine: RunningAgent
    inspector: RunningAgent
    ids: dict[str, Identity]

    def orders(self, who: str = "buyer") -> list[dict[str, Any]]:
        agent = getattr(self, who)
        status = agent.status()
        if status is None or not status.get("work_orders"):
            return []
        return [o for o in status["work_orders"]["orders"] if o["role"] == who]


class Miner:
    """Mines a block every `interval` seconds until stopped."""

    def __init__(self, ledger: Path, interval: float = 1.0) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ledger, interval), daemon=True)
        self._thread.start()

    def _run(self, ledger: Path, interval: float) -> None:
        with LocalLedger.open(ledger) as chain:
            while not self._stop.wait(interval):
                chain.mine()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def three_agents(
    root: Path,
    part_ids: Sequence[str],
    *,
    units: int = 5,
    refund_blocks: int = 8,
    block_seconds: float = 1.0,
    programs: dict[str, Sequence[str]] | None = None,
    buyer_extra: str = "",
    certifier: Identity | None = None,
) -> Iterator[Three]:
    """Buyer, machine and inspector running, a block mined every `block_seconds`;
    `programs` names what runs a role instead of `mesh` (`tests.workflow.killer`);
    `buyer_extra` is a ``[requirements.accredited]`` the workflow then requires. With
    a `certifier`, it certifies the machine (``genuine``) and accredits the inspector
    (``accredited``), and the buyer's workflow requires both."""
    run = {role: tuple((programs or {}).get(role, ("agents.cli",)))
           for role in ("buyer", "machine", "inspector")}  # fmt: skip
    ledger = root / "ledger.db"
    LocalLedger.create(ledger).close()
    ids = {role: Identity.generate() for role in ("buyer", "machine", "inspector")}
    inspector_id = ids["inspector"].peer_id
    extra = {"machine": "", "inspector": ""}
    if certifier is not None:
        buyer_extra = _certify(root, certifier, ids, extra)
    miner = Miner(ledger, block_seconds)
    agents: list[RunningAgent] = []
    try:
        common = {"site": f"wo-{root.name[-12:]}".replace("_", "-").lower()}
        inspector = RunningAgent(root, ledger, "inspector", "127.0.0.1", "tcp://127.0.0.1:0",
                                 INSPECTOR_BODY + extra["inspector"], identity=ids["inspector"],
                                 funds=10_000,
                                 program=run["inspector"], **common)  # fmt: skip
        agents.append(inspector)
        machine = RunningAgent(root, ledger, "machine", "127.0.0.1", "tcp://127.0.0.1:0",
                               machine_body(inspector_id) + extra["machine"],
                               identity=ids["machine"],
                               funds=10_000, program=run["machine"], **common)  # fmt: skip
        agents.append(machine)
        buyer = RunningAgent(root, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0",
                             buyer_body(inspector_id, part_ids, units, refund_blocks=refund_blocks,
                                        extra=buyer_extra),
                             identity=ids["buyer"], funds=100_000, program=run["buyer"],
                             **common)  # fmt: skip
        agents.append(buyer)
        yield Three(ledger, buyer, machine, inspector, ids)
    finally:
        for agent in reversed(agents):
            agent.stop()
        miner.stop()


def _certify(
    root: Path, certifier: Identity, ids: dict[str, Identity], extra: dict[str, str]
) -> str:
    """Certificates for machine and inspector (files in their data dirs, tables in
    `extra`); the buyer's requirements of both."""
    kinds = {
        "machine": ("m2mesh.machine", {"model": "X5", "serial": "M-0042"}, "genuine"),
        "inspector": ("m2mesh.accreditation", {"scope": "dimensional"}, "accredited"),
    }
    rules = ""
    for role, (type_name, values, name) in kinds.items():
        (root / role).mkdir(parents=True, exist_ok=True)
        issued = issue(certifier.key, ids[role].key.public_key(), type_id(type_name), values)
        (root / role / "cert.json").write_text(json.dumps(issued.to_json()))
        fields = ", ".join(f'"{k}"' for k in values)
        extra[role] = f'\n[[certificates]]\nfile = "cert.json"\ndisclose = [{fields}]\n'
        rules += (f'[requirements.{name}]\ntype = "{type_name}"\n'
                  f'certifiers = ["{certifier.peer_id}"]\nreveal = [{fields}]\n')  # fmt: skip
    return rules


def escrow_flows(ledger_path: Path, orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per buyer order, from the ledger alone: what the escrow held, where it went."""
    flows = []
    with LocalLedger.open(ledger_path) as ledger:
        for order in orders:
            funding = order["funding_txid"]
            out = ledger.output(funding, 0)
            assert out.state is OutputState.SPENT and out.spent_by, order
            raw = ledger.raw_tx(out.spent_by)
            assert raw is not None
            tx = parse_exact(raw)
            flows.append({
                "part": order["part"], "held": out.satoshis,
                "paid": sum(o.satoshis for o in tx.outputs),
                "to": tx.outputs[0].locking_script.serialize(), "locktime": tx.locktime,
            })  # fmt: skip
    return flows
