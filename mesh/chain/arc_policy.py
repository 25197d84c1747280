"""ARC's ``GET /v1/policy`` answer as our `Policy`: pure code, no I/O.

The answer (``PolicyResponse`` in bitcoin-sv/arc ``pkg/api/arc.yaml``) is
``{"policy": {"maxscriptsizepolicy": int, "maxtxsigopscountspolicy": int,
"maxtxsizepolicy": int, "miningFee": {"satoshis": S, "bytes": B},
"standardFormatSupported": bool?}, "timestamp": str}``.

Decisions:
- ``fee_rate = ceil(S * 1000 / B)`` sat/kB: never below ARC's rate. ARC charges
  ``ceil(size * rate / 1000)`` (go-sdk's ``SatoshisPerKilobyte`` since v1.2.x, which ARC
  uses), i.e. our `Policy.required_fee`, so ``min_fee`` is 1 sat whenever the rate is
  positive and 0 when mining is free. ARC turns a fractional rate (S/B below 1 sat/kB)
  into a whole number by truncation; rounding up keeps us at or above it.
- ARC computes that ceiling in floating point (``ceil(float(size) / 1000 * rate)``), so
  where ``size * rate / 1000`` is a whole number the product can land just above it and
  ARC asks one satoshi more than `Policy.required_fee` (140 B at 50 sat/kB: 8, not 7).
  It never happens at 1, 2 or 7 sat/kB; at rates where it does, build fees with a
  1-satoshi margin (`Policy` cannot say so; tests/chain/test_arc_status.py shows it).
- A size limit of 0 means "not set" to ARC (it then falls back to the block size); we
  keep our default for it rather than allow anything.
- The sigops limit has no `Policy` field: our scripts are P2PKH and 2-of-2 multisig.
- Anything missing, negative, boolean or a zero ``bytes`` is unreadable:
  `ChainUnavailable`.

(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

from typing import Any

from mesh.chain.errors import ChainUnavailable
from mesh.chain.rules import Policy


def policy_from_arc(answer: Any) -> Policy:
    """Our `Policy` for ARC's ``/v1/policy`` answer (see the module docstring)."""
    policy = answer.get("policy") if isinstance(answer, dict) else None
    if not isinstance(policy, dict):
        raise ChainUnavailable("ARC /v1/policy: no policy object")
    fee = policy.get("miningFee")
    if not isinstance(fee, dict):
        raise ChainUnavailable("ARC /v1/policy: no miningFee")
    satoshis = _count(fee, "satoshis")
    per_bytes = _count(fee, "bytes")
    if per_bytes == 0:
        raise ChainUnavailable("ARC /v1/policy: miningFee.bytes is 0")
    fee_rate = -(-satoshis * 1000 // per_bytes)
    default = Policy()
    return Policy(
        fee_rate=fee_rate,
        min_fee=1 if fee_rate > 0 else 0,
        max_tx_size=_count(policy, "maxtxsizepolicy") or default.max_tx_size,
        max_script_size=_count(policy, "maxscriptsizepolicy") or default.max_script_size,
    )


def _count(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChainUnavailable(f"ARC /v1/policy: {name} is {value!r}, not a count")
    return value
