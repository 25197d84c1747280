"""The profile's work orders: what a buyer orders, what a machine accepts, how an
inspector judges. Read by `agents.profile`; the conversations are `agents.workflows`.

- ``[[workflows]]`` (a buyer: robot cell, MES stand-in): parts to have made, one
  escrowed work order each::

      [[workflows]]
      id = "brackets"               # a name for status and logs
      service = "spindle-time"      # the machine's tool time, bought per part
      kind = "tool-time"
      tick = 0.25
      units = 8                     # tool-time units per part
      max_price = 3                 # sat per unit at most
      parts = ["BR-101", "BR-102"]  # one work order each, in order
      payment = 2000                # sat locked per part, the machine's on PASS
      fee = 20                      # of the release / return / refund transaction
      inspector = "02ab…"           # the inspecting agent's peer id
      refund_blocks = 12            # no verdict by then: the buyer takes it back
      readings = "vibration"        # optional: the feed whose readings go in the passport
      require = "accredited"        # optional: the inspector proves [requirements.NAME]
      machine_require = "genuine"   # optional: so does the machine (its certificate too
                                    # goes in the passport)

- ``[escrow]`` (a machine): whose verdicts it works with, and the smallest payment::

      [escrow]
      inspectors = ["02ab…"]
      min_payment = 100

- ``[inspection]`` (an inspector): how a part is measured and when it passes::

      [inspection]
      handler = "builtin:cmm"
      pass_when = ["deviation_um <= 25"]

Problems are reported as the profile's (key, problem). (docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from agents.profile_certs import CertsConfigError, check_uses
from mesh.certs.conditions import Condition, ConditionError, parse_condition
from mesh.certs.policy import Requirement
from mesh.identity import parse_peer_id
from mesh.workflow.orders import MIN_REFUND_BLOCKS

WORKFLOW_KEYS = (
    "id",
    "service",
    "kind",
    "tick",
    "units",
    "max_price",
    "parts",
    "payment",
    "fee",
    "inspector",
    "refund_blocks",
    "readings",
    "require",
    "machine_require",
)
ESCROW_KEYS = ("inspectors", "min_payment")
INSPECTION_KEYS = ("handler", "pass_when")
WORKFLOW_KINDS = ("tool-time",)
MIN_OFFER_BLOCKS = MIN_REFUND_BLOCKS + 2
"""The smallest ``refund_blocks``: the machine wants `MIN_REFUND_BLOCKS` from its own
height when the offer arrives, and a block or two may be mined while it travels."""
PART_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A part id (matched whole): it names the work order in frames, logs and passports."""


class WorkflowsConfigError(ValueError):
    """A workflows, escrow or inspection table's problem: `key` (relative to the
    profile) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class WorkflowSpec:
    """One ``[[workflows]]`` entry (see the module doc)."""

    id: str
    service: str
    units: int
    max_price: int
    parts: tuple[str, ...]
    payment: int
    fee: int
    inspector: str
    refund_blocks: int = 12
    kind: str = "tool-time"
    tick: float = 1.0
    readings: str = ""
    require: str = ""
    """A requirement (`Profile.requirements`) the inspector must prove before each
    order; its certificate then goes in the part's passport."""
    machine_require: str = ""
    """The same for the machine (e.g. its vendor's certificate of model and serial)."""


@dataclass(frozen=True)
class EscrowSpec:
    """The machine's ``[escrow]``: the inspectors it accepts (peer ids)."""

    inspectors: frozenset[str] = frozenset()
    min_payment: int = 1


@dataclass(frozen=True)
class InspectionSpec:
    """The inspector's ``[inspection]``: its measuring handler and pass conditions."""

    handler: str
    pass_when: tuple[Condition, ...]


def workflows(
    raw: object, required: Mapping[str, Requirement] | None = None
) -> tuple[WorkflowSpec, ...]:
    """The ``[[workflows]]`` array: one `WorkflowSpec` each; ids and part ids unique
    across the array; a ``require`` or ``machine_require`` names one of `required`
    (the profile's ``[requirements]``)."""
    if not isinstance(raw, list):
        raise WorkflowsConfigError("workflows", "expected an array of tables")
    found: list[WorkflowSpec] = []
    ordered: dict[str, str] = {}  # part id -> where it is ordered
    for i, item in enumerate(raw):
        where = f"workflows[{i}]"
        table = _table(item, where, WORKFLOW_KEYS)
        spec_id = _string(table, where, "id")
        for j, earlier in enumerate(found):
            if earlier.id == spec_id:
                raise WorkflowsConfigError(
                    f"{where}.id", f"duplicate workflow id {spec_id!r} (workflows[{j}])"
                )
        service = _string(table, where, "service")
        kind = table.get("kind", "tool-time")
        if kind not in WORKFLOW_KINDS:
            raise WorkflowsConfigError(
                f"{where}.kind", f"must be {' or '.join(map(repr, WORKFLOW_KINDS))}, got {kind!r}"
            )
        parts = _parts(table, where)
        for j, part in enumerate(parts):
            if part in ordered:
                raise WorkflowsConfigError(
                    f"{where}.parts[{j}]", f"part {part!r} is already ordered in {ordered[part]}"
                )
            ordered[part] = f"{where}.parts"
        payment = _int(table, where, "payment", 1)
        fee = _int(table, where, "fee", 1)
        if payment - fee < 1:
            raise WorkflowsConfigError(
                f"{where}.fee",
                f"{fee} leaves nothing of the payment {payment} (payment - fee must be >= 1)",
            )
        found.append(
            WorkflowSpec(
                id=spec_id,
                service=service,
                units=_int(table, where, "units", 1),
                max_price=_int(table, where, "max_price", 1),
                parts=parts,
                payment=payment,
                fee=fee,
                inspector=_peer_id(table.get("inspector"), f"{where}.inspector"),
                refund_blocks=_int(table, where, "refund_blocks", MIN_OFFER_BLOCKS, 12),
                kind=str(kind),
                tick=_tick(table, where),
                readings=_optional_string(table, where, "readings"),
                require=_optional_string(table, where, "require"),
                machine_require=_optional_string(table, where, "machine_require"),
            )
        )
    for i, spec in enumerate(found):
        for key in ("require", "machine_require"):
            try:
                check_uses(f"workflows[{i}].{key}", getattr(spec, key), required or {})
            except CertsConfigError as exc:
                raise WorkflowsConfigError(exc.key, exc.problem) from None
    return tuple(found)


def escrow(raw: object) -> EscrowSpec | None:
    """The ``[escrow]`` table (None: absent, this agent takes no work orders)."""
    if raw is None:
        return None
    table = _table(raw, "escrow", ESCROW_KEYS)
    inspectors = table.get("inspectors")
    if not isinstance(inspectors, list) or not inspectors:
        raise WorkflowsConfigError(
            "escrow.inspectors", "is required (a non-empty list of peer ids)"
        )
    return EscrowSpec(
        inspectors=frozenset(
            _peer_id(text, f"escrow.inspectors[{i}]") for i, text in enumerate(inspectors)
        ),
        min_payment=_int(table, "escrow", "min_payment", 1, 1),
    )


def inspection(raw: object) -> InspectionSpec | None:
    """The ``[inspection]`` table (None: absent, this agent inspects nothing). The
    handler is resolved when the agent starts, not here."""
    if raw is None:
        return None
    table = _table(raw, "inspection", INSPECTION_KEYS)
    handler = _string(table, "inspection", "handler")
    texts = table.get("pass_when")
    if not isinstance(texts, list) or not texts:
        raise WorkflowsConfigError(
            "inspection.pass_when", "is required (a non-empty list of conditions)"
        )
    conditions = []
    for i, text in enumerate(texts):
        key = f"inspection.pass_when[{i}]"
        if not isinstance(text, str):
            raise WorkflowsConfigError(key, f"expected a string, got {_shown(text)}")
        try:
            condition = parse_condition(text)
        except ConditionError as exc:
            raise WorkflowsConfigError(key, str(exc)) from None
        if condition.today:
            raise WorkflowsConfigError(
                key, f"{text!r}: measurements compare with numbers or text, not today"
            )
        conditions.append(condition)
    return InspectionSpec(handler, tuple(conditions))


def _table(item: object, where: str, keys: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(item, dict):
        raise WorkflowsConfigError(where, "expected a table")
    unknown = sorted(str(k) for k in set(item) - set(keys))
    if unknown:
        close = difflib.get_close_matches(unknown[0], keys, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(keys)}"
        raise WorkflowsConfigError(f"{where}.{unknown[0]}", f"unknown key ({hint})")
    return item


def _shown(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _string(table: Mapping[str, object], where: str, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise WorkflowsConfigError(f"{where}.{key}", "is required (a non-empty string)")
    return value


def _optional_string(table: Mapping[str, object], where: str, key: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise WorkflowsConfigError(f"{where}.{key}", f"expected a string, got {_shown(value)}")
    return value


def _int(
    table: Mapping[str, object], where: str, key: str, least: int, default: int | None = None
) -> int:
    """An integer at least `least` (booleans are not integers); required without a
    `default`."""
    if key not in table:
        if default is None:
            raise WorkflowsConfigError(f"{where}.{key}", f"is required (an integer >= {least})")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkflowsConfigError(f"{where}.{key}", f"expected an integer, got {_shown(value)}")
    if value < least:
        raise WorkflowsConfigError(f"{where}.{key}", f"must be at least {least}, got {value}")
    return value


def _tick(table: Mapping[str, object], where: str) -> float:
    value = table.get("tick", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkflowsConfigError(f"{where}.tick", f"expected a number, got {_shown(value)}")
    if not (math.isfinite(value) and value > 0):
        raise WorkflowsConfigError(f"{where}.tick", f"must be a positive number, got {value}")
    return float(value)


def _parts(table: Mapping[str, object], where: str) -> tuple[str, ...]:
    parts = table.get("parts")
    if not isinstance(parts, list) or not parts:
        raise WorkflowsConfigError(f"{where}.parts", "is required (a non-empty list of part ids)")
    seen: set[str] = set()
    for j, part in enumerate(parts):
        key = f"{where}.parts[{j}]"
        if not isinstance(part, str):
            raise WorkflowsConfigError(key, f"expected a string, got {_shown(part)}")
        if not PART_ID.fullmatch(part):
            raise WorkflowsConfigError(
                key,
                f"{part!r} is not a part id (1 to 64 letters, digits, '.', '_' or '-',"
                " starting with a letter or digit)",
            )
        if part in seen:
            raise WorkflowsConfigError(key, f"duplicate part {part!r}")
        seen.add(part)
    return tuple(parts)


def _peer_id(text: object, key: str) -> str:
    """A peer id, stored as lower-case hex (as peers send it)."""
    if not isinstance(text, str) or not text:
        raise WorkflowsConfigError(key, "is required (a peer id: 66 hex digits)")
    try:
        return parse_peer_id(text).hex()
    except ValueError as exc:
        raise WorkflowsConfigError(key, str(exc)) from None


__all__ = [
    "EscrowSpec",
    "InspectionSpec",
    "WorkflowSpec",
    "WorkflowsConfigError",
    "escrow",
    "inspection",
    "workflows",
]
