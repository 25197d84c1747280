"""Merkle batches: Bitcoin's tree, exact-length paths, odd nodes, and when a batch is due."""

from __future__ import annotations

import hashlib

import pytest

from mesh.anchoring.batch import (
    Batcher,
    BatchPolicy,
    batch_levels,
    batch_path,
    batch_root,
    path_depth,
    root_from_path,
)
from mesh.chain.merkle import merkle_root
from mesh.chain.tx import hash256
from mesh.errors import LocalProtocolError


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def test_the_tree_is_bitcoins() -> None:
    a, b, c = _leaves(3)
    ab, cc = hash256(a + b), hash256(c + c)
    assert batch_root([a, b, c]) == hash256(ab + cc)
    assert batch_root([a]) == a
    assert batch_root(_leaves(11)) == merkle_root(_leaves(11))


@pytest.mark.parametrize("count", [*range(1, 34), 100, 1000])
def test_every_leaf_has_a_path_to_the_root(count: int) -> None:
    leaves = _leaves(count)
    levels = batch_levels(leaves)
    root = levels[-1][0]
    for index in range(count) if count < 100 else (0, 1, count // 2, count - 2, count - 1):
        path = batch_path(levels, index)
        assert len(path) == path_depth(count)
        assert root_from_path(leaves[index], index, count, path) == root


def test_a_self_paired_node_must_repeat_itself() -> None:
    leaves = _leaves(5)
    levels = batch_levels(leaves)
    path = batch_path(levels, 4)
    assert path[0] == leaves[4]  # the last of an odd level pairs with itself
    forged = [bytes(32), *path[1:]]
    with pytest.raises(ValueError, match="self-paired"):
        root_from_path(leaves[4], 4, 5, forged)


def test_the_leaf_count_fixes_the_shape() -> None:
    # Bitcoin's [a, b, c] and [a, b, c, c] share a root (CVE-2012-2459); with the count
    # committed, a path claiming the fourth leaf of a 3-leaf batch is refused.
    leaves = _leaves(3)
    padded = [*leaves, leaves[2]]
    assert batch_root(leaves) == batch_root(padded)
    path = batch_path(batch_levels(padded), 3)
    with pytest.raises(ValueError, match="outside"):
        root_from_path(leaves[2], 3, 3, path)
    with pytest.raises(ValueError, match="paths of"):
        root_from_path(leaves[0], 0, 3, batch_path(batch_levels(leaves), 0)[:1])
    with pytest.raises(ValueError, match="not 32"):
        root_from_path(leaves[0], 0, 2, [b"short"])


def test_due_by_size() -> None:
    batcher = Batcher(BatchPolicy(max_records=3, max_age=60))
    assert batcher.next_deadline() is None
    assert not batcher.add("s", 0, b"h0", now=10)
    assert not batcher.add("s", 1, b"h1", now=11)
    assert batcher.due(11) == []
    assert batcher.add("s", 2, b"h2", now=12)  # full
    assert batcher.due(12) == ["s"]
    taken = batcher.take("s", now=12)
    assert taken is not None and (taken.first_seq, taken.last_seq) == (0, 2)
    assert taken.hashes == (b"h0", b"h1", b"h2")
    assert batcher.waiting() == 0


def test_due_by_age_per_stream() -> None:
    batcher = Batcher(BatchPolicy(max_records=100, max_age=5))
    batcher.add("a", 0, b"x", now=100)
    batcher.add("b", 7, b"y", now=102)
    assert batcher.next_deadline() == 105
    assert batcher.due(104.9) == []
    assert batcher.due(105) == ["a"]
    assert batcher.due(107) == ["a", "b"]


def test_take_leaves_the_rest_waiting_and_order_is_enforced() -> None:
    batcher = Batcher(BatchPolicy(max_records=2, max_age=5))
    for seq in range(5):
        batcher.add("s", seq, bytes([seq]), now=0)
    first = batcher.take("s", now=1)
    assert first is not None and first.last_seq == 1
    assert batcher.waiting("s") == 3 and batcher.due(1) == ["s"]
    second = batcher.take("s", now=1)
    assert second is not None and (second.first_seq, second.last_seq) == (2, 3)
    assert batcher.next_deadline() == 6  # the rest waits from the cut on
    with pytest.raises(LocalProtocolError):
        batcher.add("s", 9, b"gap", now=2)
    with pytest.raises(ValueError):
        BatchPolicy(max_records=0)
