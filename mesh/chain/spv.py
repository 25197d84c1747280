"""SPV: bsv-sdk `ChainTracker`s over our chains, and an SPV check that cannot be fooled.

bsv-sdk's `Transaction.verify` and `Beef` verification accept fabricated parents and
ignore fees and finality (docs/ARCHITECTURE.md §5). `verify_spv` does not: a transaction with its
linked ancestry is valid only if

- every transaction that carries a Merkle proof (a *leaf* of the check) has a proof that
  contains its txid and leads to the Merkle root of a known block at the proof's height;
- every transaction without a proof has every parent linked (and the parent really is the
  one the input names), each parent valid in turn, and passes the ledger's rules:
  structure, amounts, fee, finality against the tracker's height, and scripts;
- nothing unproven claims to create coins (a null input), and no output is spent twice
  within the ancestry.

It does not (cannot) check that a proven output is still unspent on chain: that is the
broadcaster's answer, not SPV's.

Time-locked transactions (nLockTime >= 500 000 000) are judged against `now`, which the
caller passes in (an SPV client has no median time past).

This module owns the trackers and the check; it never stores anything, and its only
I/O is through the `Chain` it is given.
"""

from __future__ import annotations

from bsv.chaintracker import ChainTracker
from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction
from bsv.utils import Reader

from mesh.chain import rules
from mesh.chain.base import Chain
from mesh.chain.errors import SpvFailed, TxRejected
from mesh.chain.rules import Policy, Prevout, Tip
from mesh.chain.tx import Outpoint, is_null_outpoint, tx_id

DEFAULT_MAX_ANCESTORS = 10_000


class ChainBackedTracker(ChainTracker):  # type: ignore[misc]  # bsv-sdk is untyped
    """A bsv-sdk `ChainTracker` answering from any `Chain` (local ledger, ARC)."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        """True when the chain's block at `height` has Merkle root `root`."""
        return await self._chain.is_valid_root(root, height)

    async def current_height(self) -> int:
        """The chain's best height."""
        return await self._chain.height()


class HeaderTracker(ChainTracker):  # type: ignore[misc]  # bsv-sdk is untyped
    """A `ChainTracker` over a fixed set of known Merkle roots (offline verification)."""

    def __init__(self, roots: dict[int, str], height: int | None = None) -> None:
        self._roots = {h: r.lower() for h, r in roots.items()}
        self._height = max(roots, default=0) if height is None else height

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        """True when `root` is the known root at `height`."""
        return self._roots.get(height) == root.lower()

    async def current_height(self) -> int:
        """The highest known height (or the one given)."""
        return self._height


def parse_beef_exact(raw: bytes) -> Transaction:
    """Parse a BEEF (V1) into the last transaction with its ancestry and proofs linked.

    Refuses trailing bytes, which bsv-sdk's parser would ignore.
    """
    reader = Reader(raw)
    try:
        tx = Transaction.from_beef(reader)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise SpvFailed("parse", f"not a BEEF ({exc})") from None
    if not reader.eof():
        raise SpvFailed("parse", f"{len(raw) - reader.tell()} trailing bytes after the BEEF")
    if not isinstance(tx, Transaction):
        raise SpvFailed("parse", "the BEEF holds no transaction")
    return tx


async def verify_spv(
    tx: Transaction,
    tracker: ChainTracker,
    *,
    now: int,
    policy: Policy | None = None,
    max_ancestors: int = DEFAULT_MAX_ANCESTORS,
) -> None:
    """Check `tx` and its linked ancestry by SPV; raise `SpvFailed` naming the rule.

    `tx` is typically the result of `parse_beef_exact`, or a transaction whose inputs
    carry `source_transaction`s that carry `merkle_path`s. A transaction that itself has
    a valid proof passes as is (it is mined). `now` is the caller's clock (seconds).
    """
    height = int(await tracker.current_height())
    checker = _Checker(tracker, Tip(height + 1, now), policy or Policy(), max_ancestors)
    await checker.check(tx)


class _Checker:
    """An iterative depth-first walk: parents are verified before their children.

    Iterative so a long unproven chain cannot exhaust Python's recursion limit; each
    transaction is expanded once (txids are hashes, so the ancestry has no cycles).
    """

    def __init__(self, tracker: ChainTracker, tip: Tip, policy: Policy, limit: int) -> None:
        self.tracker = tracker
        self.tip = tip
        self.policy = policy
        self.limit = limit
        self.verified: set[str] = set()
        self.spent: dict[Outpoint, str] = {}

    async def check(self, root: Transaction) -> None:
        stack: list[tuple[Transaction, bool]] = [(root, False)]
        while stack:
            tx, parents_done = stack.pop()
            txid = tx_id(tx)
            if txid in self.verified:
                continue
            if len(self.verified) >= self.limit:
                raise SpvFailed("depth", f"more than {self.limit} ancestors", txid)
            proof: MerklePath | None = tx.merkle_path
            if proof is not None:
                await self._check_proof(txid, proof)
                self.verified.add(txid)
            elif parents_done:
                self._check_unproven(tx, txid)
                self.verified.add(txid)
            else:
                stack.append((tx, True))
                stack.extend((parent, False) for parent in self._parents(tx, txid))

    async def _check_proof(self, txid: str, proof: MerklePath) -> None:
        try:
            root = str(proof.compute_root(txid))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise SpvFailed("proof", f"the proof does not prove this txid ({exc})", txid) from None
        block_height = int(proof.block_height)
        if block_height >= self.tip.next_height:
            raise SpvFailed("proof", f"proof for block {block_height} beyond the tip", txid)
        if not await self.tracker.is_valid_root_for_height(root, block_height):
            raise SpvFailed(
                "proof", f"root {root} is not the Merkle root of block {block_height}", txid
            )

    def _parents(self, tx: Transaction, txid: str) -> list[Transaction]:
        """Structure and links of an unproven transaction; returns its parents."""
        raw: bytes = tx.serialize()
        try:
            rules.check_structure(tx, len(raw), self.policy)
        except TxRejected as exc:
            raise SpvFailed(exc.rule, exc.detail, txid) from None
        parents: list[Transaction] = []
        for index, inp in enumerate(tx.inputs):
            outpoint = Outpoint(str(inp.source_txid), int(inp.source_output_index))
            if is_null_outpoint(outpoint.txid, outpoint.vout):
                raise SpvFailed(
                    "unproven-input", f"input {index} mints coins without a proof", txid
                )
            parent: Transaction | None = inp.source_transaction
            if parent is None:
                raise SpvFailed(
                    "unproven-input", f"input {index} ({outpoint}): no parent and no proof", txid
                )
            if tx_id(parent) != outpoint.txid:
                raise SpvFailed(
                    "parent-mismatch",
                    f"input {index} names {outpoint.txid}; the linked parent is another",
                    txid,
                )
            if outpoint.vout >= len(parent.outputs):
                raise SpvFailed("missing-input", f"input {index}: {outpoint} does not exist", txid)
            other = self.spent.setdefault(outpoint, txid)
            if other != txid:
                raise SpvFailed("double-spend", f"{outpoint} is also spent by {other}", txid)
            parents.append(parent)
        return parents

    def _check_unproven(self, tx: Transaction, txid: str) -> None:
        """Amounts, fee, finality and scripts, once every parent is verified."""
        raw: bytes = tx.serialize()
        prevouts: dict[Outpoint, Prevout] = {}
        for inp in tx.inputs:
            out = inp.source_transaction.outputs[int(inp.source_output_index)]
            outpoint = Outpoint(str(inp.source_txid), int(inp.source_output_index))
            prevouts[outpoint] = Prevout(int(out.satoshis), bytes(out.locking_script.serialize()))
        try:
            rules.check_transaction(tx, len(raw), prevouts, self.tip, self.policy)
        except TxRejected as exc:
            raise SpvFailed(exc.rule, exc.detail, txid) from None
