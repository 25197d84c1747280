"""How much each reliability test does in CI and under ``-m slow``, in one place.

SECURITY.md quotes these figures; change them here and there together.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 1_000
"""Fuzz inputs per target in CI (unmarked)."""
SLOW_EXAMPLES = 100_000
"""Fuzz inputs per target under ``-m slow``."""

CI_CRASH_TRIALS = {"payer": 3, "payee": 3, "ledger": 2, "anchoring": 2}
"""kill -9 trials per role in CI: 10 in all."""
CI_CRASH_SEEDS = {
    "payer": [2, 3, 12],
    "payee": [399, 5, 3],
    "ledger": [300, 301],
    "anchoring": [400, 401],
}
"""The CI trials' seeds, chosen so that CI covers a timer kill, a kill mid-stream and
the narrowest windows: payer right after broadcasting its funding (seed 3), payee
before its first commit, i.e. before answering an open (399), between recording
CLOSING and its close transaction (5) and just before broadcasting the close (3).
Slow trials take consecutive seeds."""
SLOW_CRASH_TRIALS = {"payer": 50, "payee": 50, "ledger": 50, "anchoring": 50}
"""kill -9 trials per role under ``-m slow``: 200 in all."""

CI_LOAD = (64, 4.0)
"""Load in CI: (buyers, seconds of paying)."""
SLOW_LOAD = (64, 60.0)
"""Load under ``-m slow``: (buyers, seconds of paying)."""


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz target: no deadline (slow paths are fine), no
    health checks that object to large or slow inputs, and `examples` inputs."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
