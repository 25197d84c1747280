"""Header chains mined in Python under test-only network parameters, and real ones.

`TOY` rules are BSV's with an easy proof-of-work limit (2**252: ~16 hashes a header),
so a few hundred headers mine in a few hundredths of a second. `Miner` mines each header
at the bits the rules under test compute (`required_bits`), so an honest toy chain
passes `judge_chain` only if the rules agree with themselves; that they agree with the
real networks is shown against real headers (`real_headers`, see test_header_trust).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

from mesh.anchoring.header_rules import (
    DAA_HISTORY,
    Checkpoint,
    NetworkParams,
    bits_from_target,
    block_proof,
    required_bits,
    target_from_bits,
)
from mesh.chain.merkle import BlockHeader

DATA = Path(__file__).parent / "data"
T0 = 1_700_000_000
VERSION = 0x20000000
TOY_LIMIT = (1 << 252) - 1
CHECKPOINT = 200
"""The toy network's shipped checkpoint height in `toy_chain`."""


def hash256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def mine(prev: bytes, root: bytes, time: int, bits: int, version: int = VERSION) -> BlockHeader:
    """The first nonce whose header meets `bits`."""
    target = target_from_bits(bits)
    assert target is not None
    prefix = struct.pack("<I32s32sII", version, prev, root, time, bits)
    for nonce in range(1 << 32):
        raw = prefix + struct.pack("<I", nonce)
        if int.from_bytes(hash256(raw), "little") <= target:
            return BlockHeader.parse(raw)
    raise AssertionError("no nonce")  # pragma: no cover


def root_for(seed: bytes, height: int) -> bytes:
    """A Merkle root standing for a block's transactions (the chain's `seed` varies it)."""
    return hashlib.sha256(seed + height.to_bytes(8, "little")).digest()


def toy_params(genesis: BlockHeader, *checkpoints: Checkpoint, **changes: object) -> NetworkParams:
    """Test-only rules: BSV's, an easy limit, the given genesis and checkpoints."""
    params = NetworkParams(
        name="toy",
        genesis_hash=genesis.hash_hex,
        pow_limit=TOY_LIMIT,
        daa_height=1,  # every checkpoint but genesis can start a judged chain
        checkpoints=(Checkpoint(0, genesis.hash_hex), *checkpoints),
    )
    return dataclasses.replace(params, **changes) if changes else params  # type: ignore[arg-type]


class Miner:
    """Mines a chain from `headers` (``headers[0]`` at `start`) by the rules of `params`."""

    def __init__(self, params: NetworkParams, headers: list[BlockHeader], start: int = 0) -> None:
        self.params = params
        self.headers = list(headers)
        self.start = start
        self.work: list[int] = []
        for header in self.headers:
            self.work.append((self.work[-1] if self.work else 0) + block_proof(header.bits))

    @property
    def tip(self) -> BlockHeader:
        return self.headers[-1]

    @property
    def tip_height(self) -> int:
        return self.start + len(self.headers) - 1

    def bits_for(self, time: int) -> int:
        """The bits the next header at `time` must carry (the limit while the chain is
        too short for the difficulty adjustment)."""
        if len(self.headers) <= DAA_HISTORY:
            return self.params.pow_limit_bits
        times = [h.time for h in self.headers]
        return required_bits(times, self.work, len(self.headers) - 1, time, self.params)

    def add(self, header: BlockHeader) -> BlockHeader:
        self.headers.append(header)
        self.work.append(self.work[-1] + block_proof(header.bits))
        return header

    def next(
        self,
        spacing: int = 400,
        *,
        seed: bytes = b"",
        time: int | None = None,
        bits: int | None = None,
        root: bytes | None = None,
        version: int = VERSION,
    ) -> BlockHeader:
        """Mine the next header, `spacing` s after the tip unless `time` is given, at the
        rules' bits unless `bits` is given."""
        when = self.tip.time + spacing if time is None else time
        height = self.tip_height + 1
        header = mine(
            self.tip.hash,
            root_for(seed, height) if root is None else root,
            when,
            self.bits_for(when) if bits is None else bits,
            version,
        )
        return self.add(header)

    def extend(self, count: int, spacing: int = 400, seed: bytes = b"") -> Miner:
        for _ in range(count):
            self.next(spacing, seed=seed)
        return self

    def fork(self, height: int) -> Miner:
        """A miner of another branch whose tip is this chain's header at `height`."""
        keep = self.headers[: height - self.start + 1]
        return Miner(self.params, keep, self.start)


def genesis(seed: bytes = b"toy") -> BlockHeader:
    """A toy genesis block, at the limit's bits."""
    return mine(bytes(32), root_for(seed, 0), T0, bits_from_target(TOY_LIMIT))


@functools.cache
def toy_chain(length: int = 400) -> tuple[NetworkParams, tuple[BlockHeader, ...]]:
    """An honest toy chain of `length` headers from genesis (the first 170 400 s apart,
    so the difficulty rises above the limit's; then 600 s, which holds it), and rules
    whose checkpoint is its header at `CHECKPOINT`."""
    first = genesis()
    base = toy_params(first, Checkpoint(CHECKPOINT, "not known yet"))  # mining ignores it
    miner = Miner(base, [first]).extend(169, 400).extend(length - 170, 600)
    checkpoint = Checkpoint(CHECKPOINT, miner.headers[CHECKPOINT].hash_hex)
    return toy_params(first, checkpoint), tuple(miner.headers)


def relink(
    headers: list[BlockHeader], start: int, change: Callable[[int, BlockHeader], BlockHeader]
) -> list[BlockHeader]:
    """Headers rebuilt with `change(height, header)` applied, each re-linked to the one
    before it (not re-mined: for chains refused before proof of work is checked)."""
    out: list[BlockHeader] = []
    for i, header in enumerate(headers):
        changed = change(start + i, header)
        if out:
            changed = dataclasses.replace(changed, prev_hash=out[-1].hash)
        out.append(changed)
    return out


def real_headers(name: str) -> tuple[int, list[BlockHeader]]:
    """A fixture of real consecutive headers: its first height and the headers."""
    path = DATA / name
    start = int(name.split("-")[1])
    lines = path.read_text().split()
    return start, [BlockHeader.parse(bytes.fromhex(line)) for line in lines]


def headers_json(header: BlockHeader) -> dict[str, object]:
    """A header as a Block Headers Service answers it (``work`` is its block proof)."""
    return {
        "hash": header.hash_hex,
        "version": header.version - (1 << 32) if header.version >= 1 << 31 else header.version,
        "prevBlockHash": header.prev_hash[::-1].hex(),
        "merkleRoot": header.merkle_root[::-1].hex(),
        "creationTimestamp": header.time,
        "difficultyTarget": header.bits,
        "nonce": header.nonce,
        "work": str(block_proof(header.bits)),
    }
