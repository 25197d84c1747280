"""Errors of the chain layer, each naming the rule that failed.

A rejected transaction is a `TxRejected` whose `rule` is one short stable string from
`RULES` (tests and logs match on it), and whose `detail` says what exactly was wrong.
SPV failures are `SpvFailed` with a rule as well; they reuse the ledger's rule names
where the check is the same (``fee``, ``script``, ``non-final`` …) and add their own
(``proof``, ``unproven-input``, ``parent-mismatch``). This module owns only the types.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

from mesh.errors import MeshError

#: Rules a transaction can break, with what each one means.
RULES: dict[str, str] = {
    "parse": "the bytes are not exactly one serialised transaction",
    "empty": "no inputs or no outputs",
    "oversize": "larger than the policy's maximum transaction size",
    "output-value": "an output amount is out of range",
    "dust": "a 0-sat output that is not OP_FALSE OP_RETURN (bare OP_RETURN is spendable)",
    "duplicate-input": "the same outpoint is spent twice in one transaction",
    "missing-input": "an input spends an output that does not exist",
    "spent-input": "an input spends an output already spent in a mined block",
    "double-spend": "an input spends an output an earlier accepted transaction spends",
    "outputs-exceed-inputs": "the outputs are worth more than the inputs",
    "fee": "the fee is below the policy rate (or the 1-satoshi minimum)",
    "non-final": "nLockTime is in the future and some input's nSequence is not final",
    "script": "an unlocking script fails against the output it spends",
    "script-size": "an unlocking script, or the locking script it spends, is over the policy size",
    # SPV only
    "proof": "a Merkle proof does not lead to a known block header",
    "unproven-input": "an input's parent has neither a proof nor parents of its own",
    "parent-mismatch": "a linked parent transaction is not the one the input names",
    "depth": "the ancestry is deeper than the verifier accepts",
    # ARC only (names for its documented error statuses)
    "format": "ARC wants the transaction in extended format",
    "missing-or-spent-input": "ARC: inputs non-existent or spent",
    "frozen": "ARC: an input is frozen by policy or consensus",
    "malformed": "ARC: malformed (under 61 bytes, too many sigops, non-push-only unlocking)",
    "spv": "ARC: the BEEF's proofs did not validate",
    "rejected": "ARC: rejected without a more specific reason",
}


class ChainError(MeshError):
    """Base class of chain-layer errors."""


class TxRejected(ChainError):
    """A transaction broke a rule; nothing was recorded.

    `rule` is a key of `RULES` (or ``arc-<status>`` for an ARC status we do not map),
    `detail` a human explanation, `txid` the transaction's id when it could be computed.
    """

    def __init__(self, rule: str, detail: str, txid: str | None = None) -> None:
        where = f" {txid}" if txid else ""
        super().__init__(f"transaction{where} rejected (rule={rule}): {detail}")
        self.rule = rule
        self.detail = detail
        self.txid = txid


class SpvFailed(ChainError):
    """A transaction with its ancestry does not verify by SPV."""

    def __init__(self, rule: str, detail: str, txid: str | None = None) -> None:
        where = f" of {txid}" if txid else ""
        super().__init__(f"SPV check{where} failed (rule={rule}): {detail}")
        self.rule = rule
        self.detail = detail
        self.txid = txid


class ChainUnavailable(ChainError):
    """The chain backend could not be reached or answered nonsense; worth retrying."""


class ChainAuthError(ChainError):
    """The chain backend refused our credentials (HTTP 401/403); retrying will not help."""


class LedgerError(ChainError):
    """The local ledger file is missing, not a ledger, or asked something impossible."""


class WalletError(ChainError):
    """The wallet cannot do what was asked."""


class InsufficientFunds(WalletError):
    """Not enough available (unreserved) coins for the amount plus fee."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"insufficient funds: need {needed} sat, {available} sat available")
        self.needed = needed
        self.available = available
