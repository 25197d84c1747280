"""BSV's consensus rules for block headers, and when a header chain is trusted (no I/O).

What a node checks of a header before it accepts it, written from the rules:

- **proof of work**: ``bits`` is a valid compact target no easier than the network's
  limit, and the header's hash is at or below it;
- **difficulty** (``bits``): the cw-144 adjustment Bitcoin Cash introduced in Nov 2017
  and BSV kept. The work done between two "suitable" blocks 144 apart (each the median
  by time of three consecutive blocks), times the 600 s spacing, over the time between
  them clamped to [72, 288] spacings, gives the expected work per block ``W``; the
  target is ``(2**256 - W) // W``, capped at the limit. On testnet a header more than
  20 minutes after its parent may instead carry the limit (minimum difficulty);
- **time**: greater than the median of the previous 11 headers' times, and at most
  two hours after ``now``;
- **version**: at least 2, 3, 4 from the heights where BIP34, BIP66, BIP65 took hold.

A chain is trusted (`judge_chain`) when it holds a shipped checkpoint's height with that
exact hash: the headers below it are trusted because they hash-link into it, and every
header above it must pass every rule above. The difficulty of a header needs the 146
headers before its parent, so the chain must start at least `DAA_HISTORY` headers below
the checkpoint it builds on. Of two trusted chains, the one with more cumulative work
(`block_proof` summed) wins.

This module owns the rules and the network parameters' shape; the parameters of the
real networks are data in `mesh.anchoring.checkpoints`. It reads no file, no clock and
no network: ``now`` comes in. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.anchoring.errors import HeaderRejected
from mesh.chain.merkle import BlockHeader, display

TARGET_SPACING = 600
"""Seconds between blocks the difficulty aims at (BSV mainnet and testnet)."""
MAX_FUTURE_DRIFT = 2 * 60 * 60
"""A header may be at most this far ahead of the verifier's clock."""
MEDIAN_TIME_SPAN = 11
"""A header's time must exceed the median time of this many headers before it."""
DAA_WINDOW = 144
"""Blocks between the two suitable blocks the difficulty adjustment compares."""
DAA_HISTORY = DAA_WINDOW + 2
"""Headers needed below a header's parent to compute its difficulty (the first
suitable block is the median of the three at parent-144, -145, -146)."""
MIN_TIMESPAN_SPACINGS = 72
MAX_TIMESPAN_SPACINGS = 288

_TWO_256 = 1 << 256


@dataclass(frozen=True)
class Checkpoint:
    """A block the software ships as known: its height and hash (display hex)."""

    height: int
    hash_hex: str


@dataclass(frozen=True)
class NetworkParams:
    """The header rules of one network.

    `daa_height`: a header whose parent is at or above this height has its difficulty
    set by the cw-144 adjustment (the only one implemented here, so only checkpoints
    at or above it can start a rule-checked chain). `version_heights`: ``(height,
    version)`` pairs, the minimum version from that height on. `checkpoints` include the
    genesis block at height 0.
    """

    name: str
    genesis_hash: str
    pow_limit: int
    daa_height: int
    checkpoints: tuple[Checkpoint, ...]
    allow_min_difficulty: bool = False
    target_spacing: int = TARGET_SPACING
    version_heights: tuple[tuple[int, int], ...] = ()
    pow_limit_bits: int = field(init=False)

    def __post_init__(self) -> None:
        heights = [c.height for c in self.checkpoints]
        if heights != sorted(set(heights)):
            raise ValueError(f"{self.name}: checkpoints must be in rising height order")
        if not self.checkpoints or self.checkpoints[0] != Checkpoint(0, self.genesis_hash):
            raise ValueError(f"{self.name}: the first checkpoint must be the genesis block")
        if not self.anchors():
            raise ValueError(f"{self.name}: no checkpoint at or above the DAA height")
        if not 0 < self.pow_limit < _TWO_256:
            raise ValueError(f"{self.name}: the proof-of-work limit must be a 256-bit target")
        object.__setattr__(self, "pow_limit_bits", bits_from_target(self.pow_limit))

    def anchors(self) -> tuple[Checkpoint, ...]:
        """The checkpoints above which every header can be judged by these rules."""
        return tuple(c for c in self.checkpoints if c.height >= self.daa_height)

    def anchor_below(self, height: int) -> Checkpoint | None:
        """The highest checkpoint a chain reaching `height` can be judged from."""
        usable = [c for c in self.anchors() if c.height <= height]
        return usable[-1] if usable else None

    def min_version(self, height: int) -> int:
        """The smallest header version allowed at `height`."""
        return max((v for h, v in self.version_heights if height >= h), default=0)


# --------------------------------------------------------------------------- targets


def target_from_bits(bits: int) -> int | None:
    """The target compact `bits` encode, or None when it is negative, overflows 256
    bits, or is zero (such bits never meet a proof of work)."""
    size, word = bits >> 24, bits & 0x007FFFFF
    if word == 0:
        return None
    if bits & 0x00800000:
        return None  # the sign bit: a negative target
    value = word >> 8 * (3 - size) if size <= 3 else word << 8 * (size - 3)
    if value == 0 or value >= _TWO_256:
        return None
    return value


def bits_from_target(target: int) -> int:
    """The compact encoding of a non-negative 256-bit `target` (precision is lost:
    three significant bytes)."""
    if not 0 <= target < _TWO_256:
        raise ValueError("a target is a non-negative 256-bit number")
    size = (target.bit_length() + 7) // 8
    word = target << 8 * (3 - size) if size <= 3 else target >> 8 * (size - 3)
    if word & 0x00800000:  # would read as the sign bit: one more byte, less precision
        word >>= 8
        size += 1
    return size << 24 | word


def block_proof(bits: int) -> int:
    """The expected number of hashes to find a header with `bits`: 2**256 / (target + 1);
    0 for bits that encode no valid target."""
    target = target_from_bits(bits)
    return 0 if target is None else _TWO_256 // (target + 1)


def cumulative_work(headers: Sequence[BlockHeader]) -> list[int]:
    """Running sums of `block_proof`: element i is the work of headers 0..i."""
    total, sums = 0, []
    for header in headers:
        total += block_proof(header.bits)
        sums.append(total)
    return sums


# --------------------------------------------------------------------------- rules


def median_time_past(times: Sequence[int]) -> int:
    """The median of the last `MEDIAN_TIME_SPAN` times (all of them if fewer)."""
    window = sorted(times[-MEDIAN_TIME_SPAN:])
    return window[len(window) // 2]


def suitable_index(times: Sequence[int], index: int) -> int:
    """Of the blocks at `index` - 2, - 1 and `index`, the one whose time is the median.

    Ties are broken as BSV's three compare-and-swap steps break them (the earlier of
    equal-time blocks keeps its place only where no swap moves it), so the same block,
    and with it the same chain work, is chosen as a node would choose it.
    """
    a, b, c = index - 2, index - 1, index
    if times[a] > times[c]:
        a, c = c, a
    if times[a] > times[b]:
        a, b = b, a
    if times[b] > times[c]:
        b, c = c, b
    return b


def cash_target(first_time: int, last_time: int, work_between: int, params: NetworkParams) -> int:
    """The target from the work done between two suitable blocks and the time it took,
    the span clamped to [72, 288] spacings; not yet capped at the limit."""
    spacing = params.target_spacing
    span = min(
        max(last_time - first_time, MIN_TIMESPAN_SPACINGS * spacing),
        MAX_TIMESPAN_SPACINGS * spacing,
    )
    work = work_between * spacing // span
    if work == 0:  # only with toy parameters: less than one hash per block expected
        return _TWO_256 - 1
    return (_TWO_256 - work) // work


def required_bits(
    times: Sequence[int],
    chain_work: Sequence[int],
    parent: int,
    new_time: int,
    params: NetworkParams,
) -> int:
    """The bits the header after index `parent` must carry, given the times and the
    cumulative work of the headers up to it (index `parent` needs `DAA_HISTORY`
    headers before it)."""
    if parent < DAA_HISTORY:
        raise ValueError(f"the difficulty needs {DAA_HISTORY} headers before the parent")
    if params.allow_min_difficulty and new_time > times[parent] + 2 * params.target_spacing:
        return params.pow_limit_bits
    last = suitable_index(times, parent)
    first = suitable_index(times, parent - DAA_WINDOW)
    target = cash_target(times[first], times[last], chain_work[last] - chain_work[first], params)
    if target > params.pow_limit:
        return params.pow_limit_bits
    return bits_from_target(target)


def signed_version(version: int) -> int:
    """A header's version as the signed 32-bit number nodes compare."""
    return version - (1 << 32) if version & 0x80000000 else version


@dataclass(frozen=True)
class Trust:
    """Why a header chain is trusted: the checkpoint it builds on, and its work."""

    network: str
    checkpoint: Checkpoint
    cumulative_work: int
    """The work of every header in the chain (`block_proof` summed)."""
    judged: int
    """How many headers above the checkpoint passed every rule."""


def judge_chain(
    headers: Sequence[BlockHeader], start_height: int, params: NetworkParams, now: float
) -> Trust:
    """Trust `headers` (``headers[i]`` at ``start_height + i``) by the rules of `params`,
    or raise `HeaderRejected` naming the first header and rule that fail."""
    if not headers:
        raise HeaderRejected("checkpoint", "no headers")
    tip = start_height + len(headers) - 1
    hashes = [h.hash for h in headers]
    for i in range(1, len(headers)):
        if headers[i].prev_hash != hashes[i - 1]:
            height = start_height + i
            raise HeaderRejected(
                "link", f"header {height} does not link to header {height - 1}", height
            )
    checkpoint = _checkpoint_of(hashes, start_height, tip, params)
    work = cumulative_work(headers)
    times = [h.time for h in headers]
    first = checkpoint.height - start_height + 1
    for i in range(first, len(headers)):
        _check_header(headers[i], hashes[i], i, start_height + i, times, work, params, now)
    return Trust(params.name, checkpoint, work[-1], len(headers) - first)


def _checkpoint_of(
    hashes: Sequence[bytes], start: int, tip: int, params: NetworkParams
) -> Checkpoint:
    """The checkpoint the chain builds on; every checkpoint it covers must match."""
    for cp in params.checkpoints:
        if start <= cp.height <= tip and display(hashes[cp.height - start]) != cp.hash_hex:
            raise HeaderRejected(
                "checkpoint",
                f"does not connect to checkpoint at height {cp.height}: its header"
                f" {cp.height} is {display(hashes[cp.height - start])}, not {cp.hash_hex}",
                cp.height,
            )
    usable = [
        cp
        for cp in params.anchors()
        if start <= cp.height <= tip and (cp.height == tip or start <= cp.height - DAA_HISTORY)
    ]
    if usable:
        return usable[-1]
    wanted = params.anchor_below(tip) or params.anchors()[0]
    if start <= wanted.height <= tip:
        why = f"needs the {DAA_HISTORY} headers below it, from height {wanted.height - DAA_HISTORY}"
    else:
        why = f"covers heights {start}..{tip}"
    raise HeaderRejected(
        "checkpoint", f"does not connect to checkpoint at height {wanted.height} ({why})"
    )


def _check_header(
    header: BlockHeader,
    hash_: bytes,
    index: int,
    height: int,
    times: Sequence[int],
    work: Sequence[int],
    params: NetworkParams,
    now: float,
) -> None:
    """Every rule for the header at `index` (`height`); the headers before it hold."""
    target = target_from_bits(header.bits)
    if target is None or target > params.pow_limit:
        raise HeaderRejected(
            "pow", f"header {height} has bits {header.bits:#010x}, not a valid target", height
        )
    if int.from_bytes(hash_, "little") > target:
        raise HeaderRejected(
            "pow", f"header {height} does not meet its proof-of-work target", height
        )
    expected = required_bits(times, work, index - 1, header.time, params)
    if header.bits != expected:
        raise HeaderRejected(
            "bits",
            f"header {height} has bits {header.bits:#010x}, the difficulty adjustment"
            f" requires {expected:#010x}",
            height,
        )
    past = median_time_past(times[max(0, index - MEDIAN_TIME_SPAN) : index])
    if header.time <= past:
        raise HeaderRejected(
            "time-too-old",
            f"header {height} has time {header.time}, not after the median time {past}"
            f" of the {MEDIAN_TIME_SPAN} headers before it",
            height,
        )
    if header.time > now + MAX_FUTURE_DRIFT:
        raise HeaderRejected(
            "time-too-new",
            f"header {height} has time {header.time}, more than {MAX_FUTURE_DRIFT} s"
            f" after now ({int(now)})",
            height,
        )
    minimum = params.min_version(height)
    if signed_version(header.version) < minimum:
        raise HeaderRejected(
            "version",
            f"header {height} has version {signed_version(header.version)}, below {minimum}",
            height,
        )
