"""The transaction rules a BSV node enforces for our transactions, as pure functions.

Both the local ledger (with outputs looked up in its UTXO set) and the SPV verifier
(with outputs taken from proven or verified parents) call these. Each check raises
`TxRejected` naming its rule (see `mesh.chain.errors.RULES`). Whether an input's output
exists and is unspent is the caller's question — only it knows the UTXO set — so here the
spent outputs arrive as a mapping.

Decisions:
- Fee: ``max(min_fee, ceil(size * fee_rate / 1000))`` on the actual serialised size, in
  integers (bsv-sdk's `SatoshisPerKilobyte` computes the same on its size estimate).
- Finality is Bitcoin's IsFinalTx by default (SV Node's rule): nLockTime 0, or below the
  height of the block the transaction would enter (``next_height``) — or, from
  500 000 000 on, below the median time past — or every input's nSequence is 0xFFFFFFFF.
  ``Policy.finality = "teranode"`` takes Teranode's height rule instead
  (``tip_height + 1 >= nLockTime``, i.e. ``nLockTime <= next_height``): a height lock
  opens *one block earlier*, so a refund locked at ``expiry`` can enter block ``expiry``
  itself rather than ``expiry + 1``. Time locks are judged the same under both. Anything
  that races a time lock (a channel's close margin) must allow for the earlier, Teranode
  rule. What happens to a non-final transaction is the ledger's business
  (``Policy.nonfinal``: Teranode rejects it, SV Node holds it aside until final); these
  functions only say whether it is final.
- Dust: a 0-sat output is allowed only if it is provably unspendable, which post-Genesis
  means ``OP_FALSE OP_RETURN …`` (`mesh.chain.tx.is_data_script`). A 0-sat bare
  ``OP_RETURN`` is dust (SV Node: dust threshold 1 sat for anything spendable), and a
  bare ``OP_RETURN`` output *with* value is an ordinary, spendable output.
- Script size: SV Node's ``maxscriptsizepolicy`` (default 500 000 bytes,
  `Policy.max_script_size`) bounds every script it *evaluates* — each input's unlocking
  script and the locking script of the output it spends — not the outputs a transaction
  creates (an oversize output can be created; spending it is refused).
- Scripts run in bsv-sdk's interpreter (`Spend`), which applies the version-1
  malleability rules (push-only, low-S, NULLFAIL, clean stack) and the post-Genesis
  OP_RETURN (execution ends with what is on the stack).

Nothing here does I/O or reads the clock: heights and times come in as arguments.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bsv.fee_models import SatoshisPerKilobyte
from bsv.script.spend import Spend
from bsv.transaction import Transaction

from mesh.chain.errors import TxRejected
from mesh.chain.tx import SEQUENCE_FINAL, Outpoint, is_data_script, script_of

LOCKTIME_THRESHOLD = 500_000_000
MAX_MONEY = 21_000_000 * 100_000_000
#: Finality rules `Policy.finality` may name (see `is_final`).
FINALITY_RULES = ("bitcoin", "teranode")
#: What a ledger does with a valid but non-final transaction (`Policy.nonfinal`).
NONFINAL_RULES = ("reject", "hold")


@dataclass(frozen=True)
class Policy:
    """What a transaction must meet beyond consensus.

    - `fee_rate` (sat per 1000 bytes) and `min_fee`: see `required_fee`.
    - `max_tx_size`: the serialised size limit (``oversize``).
    - `finality`: ``"bitcoin"`` (SV Node, the default) or ``"teranode"`` (a height lock
      opens one block earlier), see `is_final`.
    - `max_script_size`: SV Node's default ``maxscriptsizepolicy``, applied to every
      script evaluated (``script-size``, see `check_script_sizes`).
    - `nonfinal`: what `LocalLedger` does with a valid non-final transaction:
      ``"reject"`` it (Teranode; the default) or ``"hold"`` it aside and admit it at the
      first block it is final for, unless its inputs were spent first (SV Node's
      non-final mempool). The SPV verifier ignores it: it never holds anything.

    Every field has a default, so a policy stored before a field existed still loads.
    """

    fee_rate: int = 1  # satoshis per 1000 bytes
    min_fee: int = 1
    max_tx_size: int = 10_000_000
    finality: str = "bitcoin"
    max_script_size: int = 500_000  # SV Node's default `maxscriptsizepolicy`
    nonfinal: str = "reject"

    def __post_init__(self) -> None:
        if (
            self.fee_rate < 0
            or self.min_fee < 0
            or self.max_tx_size <= 0
            or self.max_script_size <= 0
        ):
            raise ValueError("policy values must be non-negative (sizes positive)")
        if self.finality not in FINALITY_RULES:
            raise ValueError(f"finality must be one of {FINALITY_RULES}, not {self.finality!r}")
        if self.nonfinal not in NONFINAL_RULES:
            raise ValueError(f"nonfinal must be one of {NONFINAL_RULES}, not {self.nonfinal!r}")

    def fee_model(self) -> SatoshisPerKilobyte:
        """The bsv-sdk fee model for this policy (always pass one: docs/ARCHITECTURE.md §5)."""
        return SatoshisPerKilobyte(self.fee_rate)

    def required_fee(self, size: int) -> int:
        """The smallest fee a transaction of `size` bytes may pay: the exact
        ``ceil(size * fee_rate / 1000)``, or ARC's and bsv-sdk's floating-point
        ``ceil(size / 1000 * fee_rate)`` where that rounds one satoshi higher (140 bytes
        at 50 sat/kB: 8 sat, not 7), so that what we pay ARC never refuses."""
        exact = -(-size * self.fee_rate // 1000)
        return max(self.min_fee, exact, math.ceil(size / 1000 * self.fee_rate))


@dataclass(frozen=True)
class Prevout:
    """The output an input spends: its amount and locking script."""

    satoshis: int
    locking_script: bytes


@dataclass(frozen=True)
class Tip:
    """Where the transaction would be mined: the next block's height and the MTP."""

    next_height: int
    median_time_past: int


def check_structure(tx: Transaction, size: int, policy: Policy) -> None:
    """Context-free rules: empty, oversize, output values, dust, duplicate inputs."""
    if not tx.inputs or not tx.outputs:
        raise TxRejected("empty", f"{len(tx.inputs)} inputs, {len(tx.outputs)} outputs")
    if size > policy.max_tx_size:
        raise TxRejected("oversize", f"{size} bytes > {policy.max_tx_size}")
    total = 0
    for index, output in enumerate(tx.outputs):
        value = int(output.satoshis)
        script: bytes = output.locking_script.serialize()
        if not 0 <= value <= MAX_MONEY:
            raise TxRejected("output-value", f"output {index} is {value} sat")
        if value == 0 and not is_data_script(script):
            raise TxRejected(
                "dust", f"output {index} is 0 sat and not OP_FALSE OP_RETURN (spendable)"
            )
        total += value
    if total > MAX_MONEY:
        raise TxRejected("output-value", f"outputs total {total} sat")
    seen: set[Outpoint] = set()
    for inp in tx.inputs:
        outpoint = Outpoint(str(inp.source_txid), int(inp.source_output_index))
        if outpoint in seen:
            raise TxRejected("duplicate-input", f"{outpoint} is spent twice")
        seen.add(outpoint)


def outpoints(tx: Transaction) -> list[Outpoint]:
    """The outpoints `tx` spends, in input order."""
    return [Outpoint(str(i.source_txid), int(i.source_output_index)) for i in tx.inputs]


def check_amounts(
    tx: Transaction, size: int, prevouts: Mapping[Outpoint, Prevout], policy: Policy
) -> int:
    """Outputs must not exceed inputs and the fee must meet the policy; returns the fee."""
    value_in = sum(prevouts[o].satoshis for o in outpoints(tx))
    value_out = sum(int(o.satoshis) for o in tx.outputs)
    if value_out > value_in:
        raise TxRejected("outputs-exceed-inputs", f"outputs {value_out} sat > inputs {value_in}")
    fee = value_in - value_out
    required = policy.required_fee(size)
    if fee < required:
        raise TxRejected(
            "fee",
            f"fee {fee} sat < {required} required for {size} bytes at {policy.fee_rate} sat/kB",
        )
    return fee


def is_final(tx: Transaction, tip: Tip, policy: Policy | None = None) -> bool:
    """Whether `tx` may enter the block after the tip (default: Bitcoin's IsFinalTx).

    A height lock is final when ``nLockTime < next_height`` under ``"bitcoin"`` and when
    ``nLockTime <= next_height`` under ``"teranode"`` (`policy.finality`).
    """
    locktime = int(tx.locktime)
    if locktime == 0:
        return True
    if locktime < LOCKTIME_THRESHOLD:
        teranode = policy is not None and policy.finality == "teranode"
        if locktime < tip.next_height or (teranode and locktime == tip.next_height):
            return True
    elif locktime < tip.median_time_past:
        return True
    return all(int(i.sequence) == SEQUENCE_FINAL for i in tx.inputs)


def check_final(tx: Transaction, tip: Tip, policy: Policy | None = None) -> None:
    """Reject a transaction that could not enter the next block (see `is_final`)."""
    if not is_final(tx, tip, policy):
        locktime = int(tx.locktime)
        if locktime < LOCKTIME_THRESHOLD:
            rule = policy.finality if policy else "bitcoin"
            when = f"height {locktime}; the next block is {tip.next_height} ({rule} rule)"
        else:
            when = f"time {locktime}; median time past is {tip.median_time_past}"
        raise TxRejected("non-final", f"locked until {when}, and an nSequence is not final")


def check_script_sizes(
    tx: Transaction, prevouts: Mapping[Outpoint, Prevout], policy: Policy
) -> None:
    """Every script the interpreter would run must be within `policy.max_script_size`.

    Like SV Node's ``maxscriptsizepolicy`` (checked as each script is evaluated): each
    input's unlocking script and the locking script it spends; the transaction's own
    outputs are not evaluated here, so they are not limited (only by `max_tx_size`).
    """
    limit = policy.max_script_size
    for index, (inp, outpoint) in enumerate(zip(tx.inputs, outpoints(tx), strict=True)):
        unlocking = inp.unlocking_script
        sizes = (
            ("unlocking", 0 if unlocking is None else len(unlocking.serialize())),
            ("spent locking", len(prevouts[outpoint].locking_script)),
        )
        for which, size in sizes:
            if size > limit:
                raise TxRejected(
                    "script-size", f"input {index} ({outpoint}): {which} script {size} B > {limit}"
                )


def check_scripts(tx: Transaction, prevouts: Mapping[Outpoint, Prevout]) -> None:
    """Run every unlocking script against the output it spends (bsv-sdk `Spend`).

    Sets each input's `locking_script` and `satoshis` on `tx` (the interpreter's sighash
    needs them for the other inputs); that does not change the serialisation.
    """
    spent = outpoints(tx)
    for inp, outpoint in zip(tx.inputs, spent, strict=True):
        prev = prevouts[outpoint]
        inp.locking_script = script_of(prev.locking_script)
        inp.satoshis = prev.satoshis
    for index, inp in enumerate(tx.inputs):
        unlocking = inp.unlocking_script
        if unlocking is None:
            raise TxRejected("script", f"input {index} has no unlocking script")
        params = {
            "sourceTXID": inp.source_txid,
            "sourceOutputIndex": inp.source_output_index,
            "sourceSatoshis": inp.satoshis,
            "lockingScript": inp.locking_script,
            "transactionVersion": tx.version,
            "otherInputs": [other for j, other in enumerate(tx.inputs) if j != index],
            "inputIndex": index,
            "unlockingScript": unlocking,
            "outputs": tx.outputs,
            "inputSequence": inp.sequence,
            "lockTime": tx.locktime,
        }
        try:
            ok = bool(Spend(params).validate())
        except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise TxRejected("script", f"input {index} ({spent[index]}): {first_line}") from None
        if not ok:
            raise TxRejected("script", f"input {index} ({spent[index]}) evaluated to false")


def check_transaction(
    tx: Transaction,
    size: int,
    prevouts: Mapping[Outpoint, Prevout],
    tip: Tip,
    policy: Policy,
) -> int:
    """Every rule that needs the spent outputs, cheapest first; returns the fee.

    The caller has already run `check_structure` and established that each input's
    output exists and is unspent.
    """
    fee = check_amounts(tx, size, prevouts, policy)
    check_final(tx, tip, policy)
    check_script_sizes(tx, prevouts, policy)
    check_scripts(tx, prevouts)
    return fee


def check_valid_but_finality(
    tx: Transaction, size: int, prevouts: Mapping[Outpoint, Prevout], policy: Policy
) -> int:
    """`check_transaction` without the finality rule; returns the fee.

    For a ledger that holds non-final transactions (``Policy.nonfinal = "hold"``): it
    holds only what would be accepted once final, as SV Node validates a transaction
    in full before putting it in its non-final mempool.
    """
    fee = check_amounts(tx, size, prevouts, policy)
    check_script_sizes(tx, prevouts, policy)
    check_scripts(tx, prevouts)
    return fee
