"""Conditions on certificate fields: ``FIELD OP VALUE``, parsed and checked (no I/O).

What a verifier requires of the fields a subject revealed -- ``calibrated_until >=
today``, ``accuracy <= 0.5``, ``model == X200`` -- in one small form that `mesh cert
verify --require` and an agent's profile policies share.

- ``OP`` is one of ``>=``, ``<=``, ``==``, ``!=``. ``FIELD`` is a field name without
  blanks or any of ``< > = !`` (a name holding one cannot be required); blanks around
  the parts are ignored.
- ``VALUE`` is a literal, or ``today`` (the date the caller passes in: time is
  injected, never read here). A literal in double quotes is taken as it is
  (``"today"`` is the word).
- The literal decides how values compare: an ISO date (``yyyy-mm-dd``) or ``today``
  compares as dates, a decimal number as numbers (``1.0 == 1``), anything else as
  strings. A field value that is not of the literal's kind fails the condition; it is
  never compared as text by accident (``"soon" >= today`` is not true).

`Condition.check` returns why a condition fails (None: it holds), so the caller decides
what a failure costs. It must never evaluate anything but this form. (docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from mesh.errors import MeshError

_OPERATIONS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne}
OPERATORS = tuple(_OPERATIONS)
TODAY = "today"
_FORM = re.compile(r"^\s*(?P<field>[^\s<>=!]+)\s*(?P<op>>=|<=|==|!=)\s*(?P<value>.*?)\s*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class ConditionError(MeshError):
    """A condition that is not of the form ``FIELD OP VALUE``."""


@dataclass(frozen=True)
class Condition:
    """``field op value``: `value` is the literal as written (quotes removed), or
    `TODAY` when `today` is true."""

    field: str
    op: str
    value: str
    today: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ConditionError(f"operator {self.op!r} is not one of {' '.join(OPERATORS)}")

    def __str__(self) -> str:
        value = TODAY if self.today else self.value
        if not self.today and (value == TODAY or not value or value != value.strip()):
            value = f'"{value}"'
        return f"{self.field} {self.op} {value}"

    def check(self, values: Mapping[str, str], today: date) -> str | None:
        """None when `values` meet the condition on `today`, else why not (one line)."""
        if self.field not in values:
            return f"{self.field} is not among the fields revealed"
        actual = values[self.field]
        if self.today or _DATE.match(self.value):
            expected_date = today if self.today else _as_date(self.value)
            got_date = _as_date(actual)
            if expected_date is None:  # a literal like 2026-13-45
                return f"{self.value!r} is not a calendar date"
            if got_date is None:
                return f"{self.field} is {actual!r}, not a date (yyyy-mm-dd)"
            holds = _compare(got_date, self.op, expected_date)
            shown = f"today ({today.isoformat()})" if self.today else self.value
            return None if holds else f"{self.field} is {actual}, not {self.op} {shown}"
        if _NUMBER.match(self.value):
            expected_number, got_number = _as_number(self.value), _as_number(actual)
            if expected_number is None:
                return f"{self.value!r} is not a number"
            if got_number is None:
                return f"{self.field} is {actual!r}, not a number"
            holds = _compare(got_number, self.op, expected_number)
            return None if holds else f"{self.field} is {actual}, not {self.op} {self.value}"
        holds = _compare(actual, self.op, self.value)
        return None if holds else f"{self.field} is {actual!r}, not {self.op} {self.value!r}"


def parse_condition(text: str) -> Condition:
    """The condition `text` says (``FIELD OP VALUE``); `ConditionError` says what is wrong."""
    found = _FORM.match(text)
    if found is None:
        raise ConditionError(
            f"{text!r} is not a condition: write FIELD OP VALUE, OP one of"
            f" {' '.join(OPERATORS)} (e.g. 'calibrated_until >= today')"
        )
    field, op, value = found.group("field", "op", "value")
    if not value:
        raise ConditionError(f"{text!r}: no value after {op}")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return Condition(field, op, value[1:-1])
    if value == TODAY:
        return Condition(field, op, TODAY, today=True)
    if _DATE.match(value) and _as_date(value) is None:
        raise ConditionError(f"{text!r}: {value} is not a calendar date")
    return Condition(field, op, value)


def _as_date(text: str) -> date | None:
    if not _DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _as_number(text: str) -> Decimal | None:
    if not _NUMBER.match(text.strip()):
        return None
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        return None


def _compare(got: date | Decimal | str, op: str, expected: date | Decimal | str) -> bool:
    # (both sides are of one kind: the caller converted them alike)
    return bool(_OPERATIONS[op](got, expected))


__all__ = ["OPERATORS", "TODAY", "Condition", "ConditionError", "parse_condition"]
