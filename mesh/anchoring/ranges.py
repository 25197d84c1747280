"""Seq ranges: (first, last) pairs, inclusive, as the stores and the archive keep
which records of a stream they hold or anchored (pure). (docs/ARCHITECTURE.md §7)"""

from __future__ import annotations

from collections.abc import Iterable


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged (first, last) ranges: touching and overlapping ones become one."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def count_seqs(ranges: Iterable[tuple[int, int]]) -> int:
    """How many seqs the (first, last) `ranges` cover (they must not overlap)."""
    return sum(last - first + 1 for first, last in ranges)


def within(seq: int, ranges: Iterable[tuple[int, int]]) -> bool:
    """Whether `seq` lies in one of the (first, last) `ranges`."""
    return any(first <= seq <= last for first, last in ranges)


__all__ = ["count_seqs", "merge_ranges", "within"]
