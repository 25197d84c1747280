"""Anchor receipts: what a producer tells a buyer so the buyer can prove its readings.

A data-feed buyer keeps the signed records it was delivered (`mesh.anchoring.archive`).
To turn one into a proof it also needs what only the producer has: the Merkle path of
that record in its batch, the anchor transaction, and where it was mined. The buyer
asks (`ReceiptRequest`: a stream and up to 1 024 seqs it holds without a proof); the
producer answers with one or more `AnchorReceipt`s for those of the seqs that it
delivered to that buyer and that are in mined batches. The buyer asks again later for
the rest, so a receipt lost with a session or a restart costs nothing.

==============  =======================  ==========================================
field           type                     meaning
==============  =======================  ==========================================
anchor_tx       bytes                    the serialised anchor transaction; its anchor
                                         output names agent, stream, seq range, root
block_height    int                      the block that mined it
block_hash      str (64 hex, display)    that block's hash
bump            bytes                    BUMP (BRC-74) of the anchor txid in the block
paths           tuple[ReceiptPath, ...]  one per record: ``ReceiptPath(seq, path)``
==============  =======================  ==========================================

``ReceiptPath.path`` is the record's Merkle path as concatenated 32-byte entries
(`mesh.anchoring.batch`), ``32 * ceil(log2(count))`` bytes. A receipt holds at most
`MAX_RECEIPT_PATHS` paths, fewer for batches so deep that 128 paths would not fit one
wire frame; `make_receipts` splits larger sets. Both messages are wire frames
(`mesh.anchoring.frames.ReceiptRequest`, `.AnchorReceipt`), re-exported here. Nothing
in a receipt needs to be trusted: the buyer checks every path against the anchor's
root (`check_receipt`) and the block link is checked again by whoever verifies the
exported proof.

This module owns the receipt's content and its consistency rules; it does no I/O.
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bsv.merkle_path import MerklePath

from mesh.anchoring.batch import batch_path, path_depth, root_from_path
from mesh.anchoring.errors import ReceiptRejected
from mesh.anchoring.frames import AnchorReceipt, ReceiptPath, ReceiptRequest
from mesh.anchoring.payload import AnchorFormatError, AnchorPayload, anchors_in
from mesh.chain.errors import TxRejected
from mesh.chain.tx import parse_exact, txid_of
from mesh.wire import MAX_FRAME_SIZE

MAX_RECEIPT_PATHS = 128
_PATH_BUDGET = MAX_FRAME_SIZE - 8_192
"""Bytes of a receipt frame left for paths once the anchor tx and BUMP are in."""


def split_path(path: bytes) -> list[bytes]:
    """Concatenated path entries back into a list of 32-byte hashes."""
    if len(path) % 32:
        raise ValueError(f"a path is whole 32-byte entries, not {len(path)} bytes")
    return [path[i : i + 32] for i in range(0, len(path), 32)]


def make_receipts(
    anchor_tx: bytes,
    block_height: int,
    block_hash: str,
    bump: bytes,
    first_seq: int,
    levels: Sequence[Sequence[bytes]],
    seqs: Iterable[int],
) -> list[AnchorReceipt]:
    """Receipts for `seqs` of one mined batch whose tree is `levels` (split as needed).

    Seqs outside the batch are skipped; each seq is included once.
    """
    count = len(levels[0])
    wanted = sorted({s for s in seqs if first_seq <= s < first_seq + count})
    paths = [ReceiptPath(s, b"".join(batch_path(levels, s - first_seq))) for s in wanted]
    per_receipt = paths_per_receipt(count)
    return [
        AnchorReceipt(anchor_tx, block_height, block_hash, bump, tuple(paths[i : i + per_receipt]))
        for i in range(0, len(paths), per_receipt)
    ]


def paths_per_receipt(count: int) -> int:
    """How many paths of a batch of `count` records one receipt frame carries."""
    entry = 32 * path_depth(count) + 16  # the path, its seq and MessagePack headers
    return max(1, min(MAX_RECEIPT_PATHS, _PATH_BUDGET // entry))


@dataclass(frozen=True)
class CheckedReceipt:
    """A receipt whose paths lead to its anchor's root for the records we hold."""

    txid: str
    anchor: AnchorPayload
    paths: dict[int, bytes]


HeldLookup = Callable[[str, Sequence[int]], Mapping[int, bytes]]


def check_receipt(receipt: AnchorReceipt, producer: bytes, held: HeldLookup) -> CheckedReceipt:
    """Check `receipt` from `producer` against the records we hold.

    ``held(stream, seqs)`` returns the record hashes we hold among `seqs` of `stream`
    (seq -> hash). Every path for a record we hold must lead to the anchor's root; paths
    for records we do not hold are ignored. Raises `ReceiptRejected` naming the field.
    """
    try:
        anchors = [a for _, a in anchors_in(parse_exact(receipt.anchor_tx))]
    except (TxRejected, AnchorFormatError) as exc:
        raise ReceiptRejected("AnchorReceipt.anchor_tx", str(exc)) from None
    if not anchors:
        raise ReceiptRejected("AnchorReceipt.anchor_tx", "expected an m2mesh anchor output")
    if all(a.agent != producer for a in anchors):
        raise ReceiptRejected("AnchorReceipt.anchor_tx", "the anchor is another agent's")
    seqs = [item.seq for item in receipt.paths]
    # A transaction may anchor several of the producer's streams; the receipt's paths
    # are of one batch: the outputs whose range holds every seq are the candidates.
    candidates = [
        a
        for a in anchors
        if a.agent == producer and all(a.first_seq <= q <= a.last_seq for q in seqs)
    ]
    if not candidates:
        raise ReceiptRejected(
            "AnchorReceipt.paths", "no anchor output of the producer holds these seqs"
        )
    txid = txid_of(receipt.anchor_tx)
    try:
        bump = MerklePath.from_binary(receipt.bump)
        bump.compute_root(txid)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ReceiptRejected(
            "AnchorReceipt.bump", f"not a BUMP of the anchor txid ({exc})"
        ) from None
    if bump.block_height != receipt.block_height:
        raise ReceiptRejected("AnchorReceipt.bump", "the BUMP is for another block height")
    try:
        if len(bytes.fromhex(receipt.block_hash)) != 32:
            raise ValueError
    except ValueError:
        raise ReceiptRejected("AnchorReceipt.block_hash", "not a 32-byte hash in hex") from None
    # Paths are checked against each candidate's root with the hashes we hold on its
    # stream: only the right batch's root can be reached from our records.
    first_error: ReceiptRejected | None = None
    fallback: CheckedReceipt | None = None
    for anchor in candidates:
        try:
            proven = _proven(receipt, anchor, held)
        except ReceiptRejected as exc:
            first_error = first_error or exc
            continue
        if proven:
            return CheckedReceipt(txid, anchor, proven)
        fallback = fallback or CheckedReceipt(txid, anchor, proven)
    if fallback is not None:
        return fallback
    assert first_error is not None
    raise first_error


def _proven(receipt: AnchorReceipt, anchor: AnchorPayload, held: HeldLookup) -> dict[int, bytes]:
    """The receipt's paths that lead from records we hold to `anchor`'s root; raises
    `ReceiptRejected` for a path of a record we hold that does not."""
    depth = path_depth(anchor.count)
    hashes = held(anchor.stream, [item.seq for item in receipt.paths])
    proven: dict[int, bytes] = {}
    for i, item in enumerate(receipt.paths):
        digest = hashes.get(item.seq)
        if digest is None:
            continue
        where = f"AnchorReceipt.paths[{i}]"
        if len(item.path) != 32 * depth:
            raise ReceiptRejected(where, f"a path in this batch is {32 * depth} bytes")
        try:
            root = root_from_path(
                digest, item.seq - anchor.first_seq, anchor.count, split_path(item.path)
            )
        except ValueError as exc:
            raise ReceiptRejected(where, str(exc)) from None
        if root != anchor.root:
            raise ReceiptRejected(where, f"seq {item.seq}: the path does not lead to the root")
        proven[item.seq] = item.path
    return proven


__all__ = [
    "MAX_RECEIPT_PATHS",
    "AnchorReceipt",
    "CheckedReceipt",
    "ReceiptPath",
    "ReceiptRequest",
    "check_receipt",
    "make_receipts",
    "paths_per_receipt",
    "split_path",
]
