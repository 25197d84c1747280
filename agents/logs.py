"""How the agent's log lines look: plain text, or one JSON object per line.

Most of an agent's work is for someone: a peer, a channel, a service. `log_context`
says so for the code inside it, in contextvars -- per Trio task, and a task starts
with a copy of its spawner's -- and `JsonFormatter` writes them beside each line, so a
log collector picks out one peer's or one channel's lines without parsing messages.
A call that names them itself (``extra={"peer": ...}``) wins over the context.

This module only shapes lines. It never decides what is logged, and the budget that
keeps a peer from filling the disk with our lines stays `agents.logbudget`'s: `configure`
puts one on each handler as before. (docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime

from agents.logbudget import LogBudget

FORMATS = ("plain", "json")
"""The values of ``--log-format``."""
PLAIN = "%(asctime)s %(name)s %(levelname)s %(message)s"
"""The plain format: what `mesh` has always written."""

peer: ContextVar[str | bytes | None] = ContextVar("peer", default=None)
"""The peer id the work at hand concerns."""
channel: ContextVar[str | bytes | None] = ContextVar("channel", default=None)
"""The channel id the work at hand concerns (bytes: written as hex, only if logged)."""
service: ContextVar[str | bytes | None] = ContextVar("service", default=None)
"""The service id the work at hand concerns."""
_FIELDS: dict[str, ContextVar[str | bytes | None]] = {
    "peer": peer,
    "channel": channel,
    "service": service,
}


@contextmanager
def log_context(
    *, peer: str | None = None, channel: str | bytes | None = None, service: str | None = None
) -> Iterator[None]:
    """Say, for the lines logged inside, which peer, channel (hex id) and service they
    concern; None leaves a field as the enclosing context has it. Restored on exit."""
    given = {"peer": peer, "channel": channel, "service": service}
    tokens: list[tuple[ContextVar[str | bytes | None], Token[str | bytes | None]]] = [
        (var, var.set(given[name])) for name, var in _FIELDS.items() if given[name] is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _utc(created: float) -> str:
    """A record's time as ISO 8601 in UTC to the millisecond: 2026-12-01T09:30:00.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _text(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ms), ``level``, ``logger``, ``message``,
    ``exc`` (the traceback, if any) and the ``peer``, ``channel`` and ``service`` it
    concerns, when known. JSON escapes every control character and, ASCII-only, every
    line separator: whatever a message holds, a record is one line."""

    def format(self, record: logging.LogRecord) -> str:
        """`record` as a JSON object on one line."""
        line: dict[str, object] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _FIELDS.items():
            value = getattr(record, name, None)  # extra={name: ...} wins
            if value is None:
                value = var.get()
            if value is not None:
                line[name] = _text(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def console_line(text: str, fmt: str, level: int = logging.INFO) -> str:
    """A line `mesh` writes on stderr itself, not through logging (an error, `mesh
    run`'s "running as ..."): `text` in the plain format; in the json one, a JSON object
    like a log line's (logger ``mesh``), so that every line on stderr parses."""
    if fmt != "json":
        return text
    return JsonFormatter().format(logging.LogRecord("mesh", level, "", 0, text, None, None))


def configure(level: str, fmt: str) -> list[tuple[logging.Handler, LogBudget]]:
    """Log at `level` and up on stderr in format `fmt` (one of `FORMATS`), with a
    `LogBudget` on each of the root logger's handlers; returns them, for the caller to
    flush and remove at exit. As `logging.basicConfig`, it adds no handler where the
    root logger has some already (a test harness's): those get the budgets only."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    stderr = logging.StreamHandler()
    stderr.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN))
    logging.basicConfig(level=level.upper(), handlers=[stderr])
    budgets = [(handler, LogBudget()) for handler in logging.getLogger().handlers]
    for handler, budget in budgets:
        handler.addFilter(budget)  # a peer must not fill the disk with our warnings
    return budgets


__all__ = [
    "FORMATS",
    "PLAIN",
    "JsonFormatter",
    "channel",
    "configure",
    "console_line",
    "log_context",
    "peer",
    "service",
]
