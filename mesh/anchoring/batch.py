"""Merkle batches of record hashes, their paths, and when a batch is due. No I/O.

**The tree.** A batch is the consecutive records ``first_seq..last_seq`` of one stream;
its leaves are their record hashes in seq order (leaf ``i`` is seq ``first_seq + i``).
The tree is Bitcoin's (the same `mesh.chain.merkle.merkle_levels` that builds block
trees): a parent is ``SHA-256d(left || right)``, and the last node of a level with an odd
number of nodes is paired with itself. A one-record batch has the record hash as root.

Bitcoin's odd-node rule lets ``[a, b, c]`` and ``[a, b, c, c]`` share a root
(CVE-2012-2459). That cannot confuse a batch, because the anchor commits to
``first_seq`` and ``last_seq``: the leaf count is fixed, so a verifier knows the depth
and, at every level, whether the node is a self-paired last node.

**The path** of leaf ``i`` is one 32-byte hash per level, bottom up: the sibling, or —
when the node is the last of an odd level — the node itself (a verifier checks that it
is). Its length is exactly ``path_depth(count)``. Hashes are in internal byte order
(as hashed); proofs show them as plain hex of those bytes.

**When a batch is due** (`Batcher`): when a stream has `BatchPolicy.max_records`
records waiting, or its oldest waiting record has waited `max_age` seconds of the
caller's clock (``now`` comes in; nothing here reads a clock). (docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.chain.merkle import merkle_levels
from mesh.chain.tx import hash256
from mesh.errors import LocalProtocolError


def batch_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the batch tree, leaves first, the root level last."""
    return merkle_levels(leaves)


def batch_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root of a batch's record hashes."""
    return merkle_levels(leaves)[-1][0]


def path_depth(count: int) -> int:
    """How many path entries a leaf of a `count`-leaf tree has (ceil(log2(count)))."""
    if count < 1:
        raise ValueError("a batch has at least one record")
    return (count - 1).bit_length()


def batch_path(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """The path of leaf `index`: per level its sibling, or itself when self-paired."""
    if not 0 <= index < len(levels[0]):
        raise IndexError(f"leaf {index} of a {len(levels[0])}-leaf batch")
    path: list[bytes] = []
    for nodes in levels[:-1]:
        sibling = index ^ 1
        path.append(nodes[sibling] if sibling < len(nodes) else nodes[index])
        index >>= 1
    return path


def root_from_path(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes:
    """The root that `path` leads to from `leaf` at `index` of `count` leaves.

    Raises ValueError when the path cannot belong to such a tree: wrong length, an entry
    that is not 32 bytes, or a self-paired node whose entry is not itself.
    """
    if not 0 <= index < count:
        raise ValueError(f"leaf {index} is outside a {count}-leaf batch")
    if len(path) != path_depth(count):
        raise ValueError(f"a {count}-leaf batch has paths of {path_depth(count)}, not {len(path)}")
    node, width = leaf, count
    for level, entry in enumerate(path):
        if len(entry) != 32:
            raise ValueError(f"path entry {level} is {len(entry)} bytes, not 32")
        if index & 1:
            node = hash256(entry + node)
        elif index + 1 < width:
            node = hash256(node + entry)
        elif entry == node:
            node = hash256(node + node)
        else:
            raise ValueError(f"path entry {level} should repeat the self-paired last node")
        index >>= 1
        width = (width + 1) // 2
    return node


# --------------------------------------------------------------------------- when


@dataclass(frozen=True)
class BatchPolicy:
    """Close a stream's batch at `max_records` records or after `max_age` seconds."""

    max_records: int = 1000
    max_age: float = 60.0

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_age <= 0:
            raise ValueError("a batch policy needs max_records >= 1 and max_age > 0")


@dataclass
class _Pending:
    first_seq: int
    opened_at: float
    hashes: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class PendingBatch:
    """Records taken out of the batcher to be anchored: seqs and their hashes."""

    stream: str
    first_seq: int
    hashes: tuple[bytes, ...]

    @property
    def last_seq(self) -> int:
        """The last seq in the batch."""
        return self.first_seq + len(self.hashes) - 1


class Batcher:
    """Per-stream waiting records; says which streams are due and when the next is."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._pending: dict[str, _Pending] = {}

    def add(self, stream: str, seq: int, digest: bytes, now: float) -> bool:
        """Add a stored record; returns True when its stream is now full (due by size).

        Records of a stream must come in seq order without gaps.
        """
        pending = self._pending.get(stream)
        if pending is None:
            pending = self._pending[stream] = _Pending(seq, now)
        elif seq != pending.first_seq + len(pending.hashes):
            expected = pending.first_seq + len(pending.hashes)
            raise LocalProtocolError(f"batcher: {stream} seq {seq} added, {expected} expected")
        pending.hashes.append(digest)
        return len(pending.hashes) >= self.policy.max_records

    def waiting(self, stream: str | None = None) -> int:
        """How many records wait (in `stream`, or in all streams)."""
        if stream is not None:
            pending = self._pending.get(stream)
            return 0 if pending is None else len(pending.hashes)
        return sum(len(p.hashes) for p in self._pending.values())

    def streams(self) -> list[str]:
        """Streams with waiting records."""
        return list(self._pending)

    def due(self, now: float) -> list[str]:
        """Streams whose batch should be cut now."""
        return [
            stream
            for stream, p in self._pending.items()
            if len(p.hashes) >= self.policy.max_records or now >= p.opened_at + self.policy.max_age
        ]

    def riding(self, now: float) -> list[str]:
        """Streams not due yet whose batch is at least half its `max_age` old: cut with
        a due one, they share its commits (a slow stream stops costing a cycle of its
        own, and is anchored at most twice as often as on its own)."""
        due = set(self.due(now))
        half = self.policy.max_age / 2
        return [s for s, p in self._pending.items() if s not in due and now >= p.opened_at + half]

    def next_deadline(self) -> float | None:
        """When the oldest waiting batch becomes due by age (None when nothing waits)."""
        if not self._pending:
            return None
        return min(p.opened_at for p in self._pending.values()) + self.policy.max_age

    def take(self, stream: str, now: float) -> PendingBatch | None:
        """Take up to `max_records` of `stream`'s oldest waiting records as a batch.

        What remains starts a new waiting batch opened at `now`.
        """
        pending = self._pending.pop(stream, None)
        if pending is None:
            return None
        size = self.policy.max_records
        taken = PendingBatch(stream, pending.first_seq, tuple(pending.hashes[:size]))
        rest = pending.hashes[size:]
        if rest:
            self._pending[stream] = _Pending(taken.last_seq + 1, now, rest)
        return taken
