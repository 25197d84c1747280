"""The anchoring layer's frames (tags 40-49): a buyer's receipt request and the
producer's receipts (`mesh.anchoring.receipt` owns the rules). Registered in the
codec's one table (`mesh.wire`). (docs/ARCHITECTURE.md §3)"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Frame, Struct, frame, struct

# --------------------------------------------------------------------------- anchoring
# What a data-feed buyer needs from the producer to prove the readings it holds
# (mesh/anchoring/receipt.py owns the rules). The buyer asks; the producer answers
# with one `AnchorReceipt` per mined batch (split to fit a frame) for the records
# it delivered to that buyer, and nothing for records not mined yet.

MAX_RECEIPT_REQUEST = 1024
"""Most seqs one `ReceiptRequest` may name."""


@frame(40)
@dataclass(frozen=True, slots=True)
class ReceiptRequest(Frame):
    """Buyer -> producer: receipts, please, for these seqs of `stream` I hold."""

    stream: str
    seqs: tuple[int, ...]


@struct
@dataclass(frozen=True, slots=True)
class ReceiptPath(Struct):
    """One record's place in the batch: its seq and its Merkle path (32-byte entries)."""

    seq: int
    path: bytes


@frame(41)
@dataclass(frozen=True, slots=True)
class AnchorReceipt(Frame):
    """Producer -> buyer: a mined batch and the paths of the buyer's records in it."""

    anchor_tx: bytes
    block_height: int
    block_hash: str
    bump: bytes
    paths: tuple[ReceiptPath, ...]
