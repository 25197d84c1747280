"""The fees of a channel's presigned transactions, from the network's fee policy.

A channel's close and refund are signed at open and cannot be re-signed alone, so
their fees are fixed in the terms (`ChannelOpen.close_fee` / ``refund_fee``, bound into
the channel keys). They come from the network's policy at open (`Chain.policy`):

* the payer offers, for each, the policy's fee for that transaction at its largest
  (both signatures 72-byte DER), times ``ChannelConfig.fee_headroom`` -- a policy may
  rise that much during the channel's life before its refund is stranded -- and never
  less than the configured floor (``close_fee`` / ``refund_fee``);
* the payee refuses, before anything is signed, fees below the policy it sees: a close
  it could not get mined is no close (code ``fee``, the reason names the numbers).

The rate a channel was opened at is thus ``fee * 1000 / size`` of each transaction;
the terms carry the fees it gave, which is what the transactions need. Pure: the
policy comes in as an argument. (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.chain.rules import Policy
from mesh.channel.config import ChannelConfig

_INPUT = 32 + 4 + 1 + (1 + 2 * (1 + 72 + 1)) + 4
"""The funding input at its largest: outpoint, script length, ``OP_0 <sig> <sig>``
(each a push of a 72-byte DER signature and its sighash byte), nSequence."""
_P2PKH_OUTPUT = 8 + 1 + 25
CLOSE_TX_MAX_SIZE = 4 + 1 + _INPUT + 1 + 2 * _P2PKH_OUTPUT + 4
"""Bytes of a close (payment) transaction at its largest: two P2PKH outputs."""
REFUND_TX_MAX_SIZE = 4 + 1 + _INPUT + 1 + _P2PKH_OUTPUT + 4
"""Bytes of a refund (or release) transaction at its largest: one P2PKH output."""


@dataclass(frozen=True)
class ChannelFees:
    """The fees a channel's close and refund pay."""

    close: int
    refund: int


def policy_fees(policy: Policy) -> ChannelFees:
    """The smallest fees `policy` lets the close and the refund pay."""
    return ChannelFees(
        policy.required_fee(CLOSE_TX_MAX_SIZE), policy.required_fee(REFUND_TX_MAX_SIZE)
    )


def offered_fees(config: ChannelConfig, policy: Policy) -> ChannelFees:
    """What a payer offers under `policy`: the policy's fees times the headroom, at
    least the configured floor. `ValueError` when that is above ``config.max_fee``."""
    least = policy_fees(policy)
    fees = ChannelFees(
        max(config.close_fee, least.close * config.fee_headroom),
        max(config.refund_fee, least.refund * config.fee_headroom),
    )
    if max(fees.close, fees.refund) > config.max_fee:
        raise ValueError(
            f"the network's fee policy ({policy.fee_rate} sat/kB) needs fees of"
            f" {fees.close}/{fees.refund} sat, above this agent's limit of {config.max_fee}"
        )
    return fees


def fee_problem(close_fee: int, refund_fee: int, policy: Policy) -> tuple[str, str] | None:
    """Why a payee refuses fees below `policy` (code, reason); None when they meet it."""
    least = policy_fees(policy)
    for name, fee, need, size in (
        ("close", close_fee, least.close, CLOSE_TX_MAX_SIZE),
        ("refund", refund_fee, least.refund, REFUND_TX_MAX_SIZE),
    ):
        if fee < need:
            return "fee", (
                f"the {name} fee of {fee} sat is below the network's policy:"
                f" {need} sat for {size} bytes at {policy.fee_rate} sat/kB"
            )
    return None


__all__ = [
    "CLOSE_TX_MAX_SIZE",
    "REFUND_TX_MAX_SIZE",
    "ChannelFees",
    "fee_problem",
    "offered_fees",
    "policy_fees",
]
