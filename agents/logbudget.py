"""A log line budget: a peer must not be able to fill the disk with our warnings.

Many of the agent's log lines are caused by what a peer sends (a refused handshake, a
packet that does not open, a rejected payment), so a flood of garbage would become
a flood of lines (SECURITY risk 4). `LogBudget` is a `logging.Filter` that gives each
kind of line (logger name and message template, whatever the arguments) a token
bucket: `burst` lines at once, then `rate` lines per second. Lines over the budget are
counted, not written; the next line of that kind to be written says how many were
left out (or `flush`, at exit). The time is the record's own (`LogRecord.created`),
so the rule is tested with made-up records; no clock is read here.
(docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

import logging

from mesh.net.ratelimit import PeerBudgets

BURST = 50
"""Lines of one kind written at once before the budget applies."""
RATE = 1.0
"""Lines of one kind per second, once the burst is spent."""


class LogBudget(logging.Filter):
    """Drops the lines of a kind past its budget and reports how many it dropped.

    Put one on each handler (`handler.addFilter`): on a logger it would not see the
    records of the loggers below it.
    """

    def __init__(self, rate: float = RATE, burst: float = BURST, *, max_kinds: int = 1024) -> None:
        """Each kind of line gets `burst` at once and `rate` a second; at most
        `max_kinds` kinds are remembered (a forgotten kind starts afresh)."""
        super().__init__()
        self._budgets = PeerBudgets(rate, burst, max_peers=max_kinds)
        self._max_kinds = max_kinds
        self._dropped: dict[tuple[str, str], int] = {}
        self.dropped = 0
        """Lines dropped since start, of every kind."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` is written (adding the count of its kind dropped before)."""
        kind = (record.name, str(record.msg))
        if not self._budgets.take(repr(kind), 1, record.created):
            if kind in self._dropped or len(self._dropped) < self._max_kinds:
                self._dropped[kind] = self._dropped.get(kind, 0) + 1
            self.dropped += 1
            return False
        missed = self._dropped.pop(kind, 0)
        if missed:
            record.msg = f"{record.getMessage()} [{missed} more like this not logged]"
            record.args = None
        return True

    def flush(self) -> None:
        """Log how many lines of each kind were left out and not reported yet (at exit,
        when a flood ended with no later line of its kind to say so)."""
        dropped, self._dropped = self._dropped, {}
        for (name, msg), count in dropped.items():
            logging.getLogger(name).warning("%d more like %r were not logged", count, msg)


__all__ = ["BURST", "RATE", "LogBudget"]
