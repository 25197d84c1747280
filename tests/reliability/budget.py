"""How much each reliability test does in CI and under ``-m slow``, in one place.

SECURITY.md quotes these figures; change them here and there together.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 500
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

CI_FAST_CHAIN_TRIALS = {"payer": 3, "payee": 3}
"""kill -9 trials per role in CI on a 1-block/s chain under Teranode's finality rule
(`test_crash_recovery.fast_chain_trial`): 6 in all, about 20-30 s each."""
CI_FAST_CHAIN_SEEDS = {"payer": [5002, 5006, 5010], "payee": [6006, 6013, 6000]}
"""The fast-chain CI trials' seeds, chosen so that CI covers a timer kill for each
role, a kill mid-stream and the windows near the expiry: payer by timer while holding
(5002), after a group commit (5006) and right before broadcasting its funding, so
that only its refund, final at ``height + 1 == expiry``, settles it (5010); payee by
timer at the height where its watcher closes (6006), right after recording the close its
watcher made at ``expiry - close_margin_blocks``, before broadcasting it (6013), and
before a group commit mid-stream (6000). Slow trials take consecutive seeds."""
SLOW_FAST_CHAIN_TRIALS = {"payer": 200, "payee": 200}
"""Fast-chain kill -9 trials per role under ``-m slow``: 400 in all (issue 24)."""

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
