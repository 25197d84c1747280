"""Merkle trees, BUMP proofs (bsv-sdk `MerklePath`) and 80-byte block headers, no I/O.

Hashes are handled as *internal* byte order (what is hashed) and shown as *display*
hex (byte-reversed, as txids and block hashes are printed). A tree is stored as its
levels: level 0 the txids, the last level the root; an odd level's last node pairs with
itself, as in Bitcoin.

A one-transaction block has a tree of height 0 (root = txid). bsv-sdk's `MerklePath`
cannot express that (it needs a sibling at level 0), so `merkle_path` refuses it; in the
local ledger only a block's coinbase can be alone, and its output is unspendable.

Headers carry a real proof of work at regtest difficulty (``bits`` 0x207fffff, about two
hashes on average), so the header chain can be checked the way a node checks one.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bsv.merkle_path import MerklePath

from mesh.chain.tx import hash256

REGTEST_BITS = 0x207FFFFF
HEADER_SIZE = 80


def display(internal: bytes) -> str:
    """Internal-order hash bytes as display hex."""
    return internal[::-1].hex()


def internal(display_hex: str) -> bytes:
    """Display hex as internal-order hash bytes."""
    raw = bytes.fromhex(display_hex)
    if len(raw) != 32:
        raise ValueError(f"a hash is 32 bytes, got {len(raw)}")
    return raw[::-1]


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """All levels of the Merkle tree over `leaves` (internal order), root level last."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [
            hash256(below[i] + (below[i + 1] if i + 1 < len(below) else below[i]))
            for i in range(0, len(below), 2)
        ]
        levels.append(above)
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root (internal order) of `leaves`."""
    return merkle_levels(leaves)[-1][0]


def merkle_path(levels: Sequence[Sequence[bytes]], index: int, block_height: int) -> MerklePath:
    """The BUMP proof for leaf `index` of a tree given as `levels`.

    Level h holds the sibling of the proven node's ancestor, or a ``duplicate`` flag when
    that ancestor is the last node of an odd level.
    """
    leaves = levels[0]
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of a {len(leaves)}-leaf tree")
    height = len(levels) - 1
    if height == 0:
        raise ValueError("a one-transaction block has no BUMP in bsv-sdk's MerklePath")
    path: list[list[dict[str, object]]] = []
    for level in range(height):
        nodes = levels[level]
        sibling = (index >> level) ^ 1
        entry: dict[str, object] = {"offset": sibling}
        if sibling < len(nodes):
            entry["hash_str"] = display(nodes[sibling])
        else:
            entry["duplicate"] = True
        if level == 0:
            leaf = {"offset": index, "hash_str": display(leaves[index]), "txid": True}
            path.append(sorted([leaf, entry], key=lambda e: int(str(e["offset"]))))
        else:
            path.append([entry])
    return MerklePath(block_height, path)


@dataclass(frozen=True)
class BlockHeader:
    """An 80-byte Bitcoin block header (hashes in internal order)."""

    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        """The 80 header bytes."""
        return struct.pack(
            "<I32s32sIII",
            self.version,
            self.prev_hash,
            self.merkle_root,
            self.time,
            self.bits,
            self.nonce,
        )

    @classmethod
    def parse(cls, raw: bytes) -> BlockHeader:
        """Parse exactly 80 header bytes."""
        if len(raw) != HEADER_SIZE:
            raise ValueError(f"a block header is {HEADER_SIZE} bytes, got {len(raw)}")
        version, prev, root, time, bits, nonce = struct.unpack("<I32s32sIII", raw)
        return cls(version, prev, root, time, bits, nonce)

    @property
    def hash(self) -> bytes:
        """The block hash, internal order."""
        return hash256(self.serialize())

    @property
    def hash_hex(self) -> str:
        """The block hash as it is displayed."""
        return display(self.hash)

    def meets_target(self) -> bool:
        """True when the hash is at or below the target encoded in `bits`."""
        return int.from_bytes(self.hash, "little") <= target(self.bits)


def target(bits: int) -> int:
    """The proof-of-work target encoded in compact `bits`."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def mine_header(
    prev_hash: bytes, root: bytes, time: int, *, version: int = 0x20000000, bits: int = REGTEST_BITS
) -> BlockHeader:
    """Find a nonce that meets `bits` (trivial at regtest difficulty)."""
    for nonce in range(1 << 32):
        header = BlockHeader(version, prev_hash, root, time, bits, nonce)
        if header.meets_target():
            return header
    raise ValueError("no nonce meets the target; increase the time")  # pragma: no cover


def check_header_chain(headers: Sequence[BlockHeader]) -> None:
    """Each header must meet its target and link to the one before it; raises ValueError."""
    for height, header in enumerate(headers):
        if not header.meets_target():
            raise ValueError(f"header {height} does not meet its proof-of-work target")
        if height and header.prev_hash != headers[height - 1].hash:
            raise ValueError(f"header {height} does not link to header {height - 1}")
