"""Self-contained proofs that a signed record was anchored in a block, and their check.

A proof file is one JSON object (format 1)::

    {
      "m2mesh_proof": 1,
      "record": {
        "body": hex,          the record's canonical MessagePack body (mesh.anchoring.record)
        "hash": hex,          SHA-256("m2mesh-record\\0" || body), the signed digest and leaf
        "signature": hex,     the agent's DER ECDSA signature over that hash
        "fields": {           the body decoded, for people; must match the body exactly
          "agent": hex, "stream": str, "seq": int, "timestamp_ms": int,
          "payload": hex, "prev": hex}
      },
      "batch": {
        "root": hex,          the batch Merkle root (internal byte order, as hashed)
        "path": [hex, ...]    one 32-byte entry per level, bottom up (mesh.anchoring.batch)
      },
      "anchor": {
        "txid": hex,          the anchor transaction's id (display order, as explorers show)
        "tx": hex             the whole serialised anchor transaction
      },
      "block": {
        "height": int,        the block that mined the anchor transaction
        "hash": hex,          its block hash (display order)
        "bump": hex           BRC-74 BUMP of the anchor txid in that block, single-tx form
      }
    }

The leaf index is ``seq - first_seq`` and the leaf count ``last_seq - first_seq + 1``,
both taken from the anchor output (mesh.anchoring.payload), so the proof cannot choose
them. `verify_proof` checks, in this order, and names the first link that fails
(`mesh.anchoring.errors.REASONS`):

1. ``record-hash``      body hashes to ``record.hash``; ``fields`` match the body;
2. ``record-signature`` the signature is the agent's over that hash;
3. ``anchor-tx``        ``anchor.tx`` hashes to ``anchor.txid``, parses exactly, and has
                        exactly one anchor output for this agent and stream with seq in
                        its range (a transaction may anchor several streams' batches);
4. ``anchor-root-mismatch`` ``batch.root`` is the root in the anchor output;
5. ``merkle-path``      the path leads from the record hash to ``batch.root``;
6. ``header-unknown``   the trusted header chain has block ``block.hash`` at
                        ``block.height``;
7. ``block-proof``      the BUMP is canonical (exact bytes, our txid flagged, one sibling
                        per level), is for that height, and leads from the anchor txid to
                        that header's Merkle root.

A file that is not a proof at all (not JSON, truncated, a field missing) is
``format``. This module owns the proof format and the check; it reads the proof file
and nothing else, and never touches a network, a store or a clock.
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsv.merkle_path import MerklePath
from bsv.utils import Reader

from mesh.anchoring.batch import root_from_path
from mesh.anchoring.errors import ProofFailed, RecordError
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.payload import AnchorFormatError, AnchorPayload, anchors_in
from mesh.anchoring.record import Record, SignedRecord, decode_record, record_hash
from mesh.chain.errors import TxRejected
from mesh.chain.merkle import BlockHeader, display
from mesh.chain.tx import parse_exact, txid_of
from mesh.identity import verify_digest

PROOF_FORMAT = 1
MAX_PROOF_FILE = 1024 * 1024
MAX_BUMP = 64 * 1024
_BUMP_ERRORS = (
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    OverflowError,
    StopIteration,
)  # bsv-sdk's MerklePath raises StopIteration on some malformed levels


@dataclass(frozen=True)
class Proof:
    """A proof's contents, parsed but not yet verified."""

    body: bytes
    record_hash: bytes
    signature: bytes
    fields: dict[str, Any]
    root: bytes
    path: tuple[bytes, ...]
    anchor_txid: str
    anchor_tx: bytes
    block_height: int
    block_hash: str
    bump: bytes

    def to_document(self) -> dict[str, Any]:
        """The JSON object of the proof file."""
        return {
            "m2mesh_proof": PROOF_FORMAT,
            "record": {
                "body": self.body.hex(),
                "hash": self.record_hash.hex(),
                "signature": self.signature.hex(),
                "fields": self.fields,
            },
            "batch": {"root": self.root.hex(), "path": [p.hex() for p in self.path]},
            "anchor": {"txid": self.anchor_txid, "tx": self.anchor_tx.hex()},
            "block": {
                "height": self.block_height,
                "hash": self.block_hash,
                "bump": self.bump.hex(),
            },
        }

    def to_json(self) -> str:
        """The proof file's text."""
        return json.dumps(self.to_document(), indent=1) + "\n"


def make_proof(
    signed: SignedRecord,
    root: bytes,
    path: Sequence[bytes],
    anchor_tx: bytes,
    block_height: int,
    block_hash: str,
    bump: bytes,
) -> Proof:
    """Assemble a proof from a record and what anchoring it produced."""
    return Proof(
        body=signed.body,
        record_hash=signed.hash,
        signature=signed.signature,
        fields=signed.record.readable(),
        root=root,
        path=tuple(path),
        anchor_txid=txid_of(anchor_tx),
        anchor_tx=anchor_tx,
        block_height=block_height,
        block_hash=block_hash,
        bump=bump,
    )


# --------------------------------------------------------------------------- parsing


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ProofFailed("format", f"{where} must be an object")
    if key not in obj:
        raise ProofFailed("format", f"{where}.{key} is missing")
    value = obj[key]
    if type(value) is not kind:
        raise ProofFailed("format", f"{where}.{key} must be {kind.__name__}")
    return value


def _hex(obj: Any, key: str, where: str, size: int | None = None) -> bytes:
    text = _get(obj, key, str, where)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ProofFailed("format", f"{where}.{key} is not hex") from None
    if size is not None and len(raw) != size:
        raise ProofFailed("format", f"{where}.{key} must be {size} bytes, not {len(raw)}")
    return raw


def _display_hash(obj: Any, key: str, where: str) -> str:
    return _hex(obj, key, where, 32).hex()


def parse_proof(document: Any) -> Proof:
    """Parse a proof document (decoded JSON); raises `ProofFailed("format")`."""
    if not isinstance(document, dict) or document.get("m2mesh_proof") != PROOF_FORMAT:
        raise ProofFailed("format", f"not an m2mesh proof (format {PROOF_FORMAT})")
    record = _get(document, "record", dict, "proof")
    batch = _get(document, "batch", dict, "proof")
    anchor = _get(document, "anchor", dict, "proof")
    block = _get(document, "block", dict, "proof")
    path = _get(batch, "path", list, "batch")
    height = _get(block, "height", int, "block")
    if height < 0:
        raise ProofFailed("format", "block.height must not be negative")
    bump = _hex(block, "bump", "block")
    if len(bump) > MAX_BUMP:
        raise ProofFailed("format", f"block.bump exceeds {MAX_BUMP} bytes")
    return Proof(
        body=_hex(record, "body", "record"),
        record_hash=_hex(record, "hash", "record", 32),
        signature=_hex(record, "signature", "record"),
        fields=_get(record, "fields", dict, "record"),
        root=_hex(batch, "root", "batch", 32),
        path=tuple(_hex({"path": p}, "path", f"batch.path[{i}]", 32) for i, p in enumerate(path)),
        anchor_txid=_display_hash(anchor, "txid", "anchor"),
        anchor_tx=_hex(anchor, "tx", "anchor"),
        block_height=height,
        block_hash=_display_hash(block, "hash", "block"),
        bump=bump,
    )


def load_proof(path: Path) -> Proof:
    """Read and parse a proof file; every problem is `ProofFailed("format")`."""
    return parse_proof(read_document(path))


def read_document(path: Path, limit: int = MAX_PROOF_FILE) -> Any:
    """A JSON file (a proof, or a bundle of them) of at most `limit` bytes; every
    problem is `ProofFailed("format")`."""
    try:
        if path.stat().st_size > limit:
            raise ProofFailed("format", f"{path} is larger than {limit} bytes")
        text = path.read_bytes()
    except FileNotFoundError:
        raise ProofFailed("format", f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProofFailed("format", f"{path} is a directory") from None
    except PermissionError:
        raise ProofFailed("format", f"{path}: permission denied") from None
    if not text.strip():
        raise ProofFailed("format", f"{path} is empty")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProofFailed(
            "format", f"{path} is not JSON (truncated or damaged? {exc.msg}, line {exc.lineno})"
        ) from None
    except UnicodeDecodeError:
        raise ProofFailed("format", f"{path} is not UTF-8 JSON") from None
    return document


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Verified:
    """What a valid proof shows: the record, and the block that anchors it."""

    record: Record
    record_hash: bytes
    anchor: AnchorPayload
    txid: str
    vout: int
    block_height: int
    block_hash: str
    block_time: int


def verify_proof(proof: Proof, headers: HeaderChain) -> Verified:
    """Check every link of `proof` against trusted `headers`; raise `ProofFailed`.

    The checks run in the order the module docstring lists; the first failure is
    raised with its reason.
    """
    # 1. the record bytes are the hashed ones, and the readable fields are those bytes
    if record_hash(proof.body) != proof.record_hash:
        raise ProofFailed("record-hash", "the record body does not hash to record.hash")
    try:
        record = decode_record(proof.body)
    except RecordError as exc:
        raise ProofFailed("format", f"the record body is not a record ({exc})") from None
    if record.readable() != proof.fields:
        differ = sorted(k for k, v in record.readable().items() if proof.fields.get(k) != v)
        extra = sorted(set(proof.fields) - set(record.readable()))
        raise ProofFailed(
            "record-hash",
            f"record.fields do not match the signed body ({', '.join(differ + extra)})",
        )
    # 2. who said it
    if not verify_digest(record.agent, proof.record_hash, proof.signature):
        raise ProofFailed(
            "record-signature", f"not a signature by agent {record.agent.hex()} over the record"
        )
    # 3. the anchor transaction and what it commits to
    if txid_of(proof.anchor_tx) != proof.anchor_txid:
        raise ProofFailed("anchor-tx", "anchor.tx does not hash to anchor.txid")
    try:
        anchors = _anchors_of(proof.anchor_tx)
    except TxRejected as exc:
        raise ProofFailed("anchor-tx", f"not a transaction ({exc.detail})") from None
    except AnchorFormatError as exc:
        raise ProofFailed("anchor-tx", str(exc)) from None
    if not anchors:
        raise ProofFailed("anchor-tx", "expected one m2mesh anchor output, found 0")
    mine = [(v, a) for v, a in anchors if (a.agent, a.stream) == (record.agent, record.stream)]
    if not mine:
        shown = ", ".join(f"agent {a.agent.hex()[:16]}… stream {a.stream!r}" for _, a in anchors)
        raise ProofFailed(
            "anchor-tx",
            f"the anchor is for {shown},"
            f" the record is {record.agent.hex()[:16]}… {record.stream!r}",
        )
    holding = [(v, a) for v, a in mine if a.first_seq <= record.seq <= a.last_seq]
    if len(holding) != 1:
        ranges = ", ".join(f"{a.first_seq}..{a.last_seq}" for _, a in mine)
        raise ProofFailed(
            "anchor-tx",
            f"the anchor covers seq {ranges}, not {record.seq}"
            if not holding
            else f"{len(holding)} anchor outputs of this stream cover seq {record.seq}",
        )
    vout, anchor = holding[0]
    # 4. + 5. the batch root, and the path from the record to it
    if proof.root != anchor.root:
        raise ProofFailed("anchor-root-mismatch", "batch.root is not the root the anchor carries")
    try:
        reached = root_from_path(
            proof.record_hash, record.seq - anchor.first_seq, anchor.count, proof.path
        )
    except ValueError as exc:
        raise ProofFailed("merkle-path", str(exc)) from None
    if reached != proof.root:
        raise ProofFailed("merkle-path", "the path does not lead to batch.root")
    # 6. + 7. the anchor transaction is in a block the verifier trusts
    header = tx_in_block(
        proof.anchor_txid, proof.bump, proof.block_height, proof.block_hash, headers
    )
    return Verified(
        record=record,
        record_hash=proof.record_hash,
        anchor=anchor,
        txid=proof.anchor_txid,
        vout=vout,
        block_height=proof.block_height,
        block_hash=proof.block_hash,
        block_time=header.time,
    )


def tx_in_block(
    txid: str, bump: bytes, height: int, block_hash: str, headers: HeaderChain
) -> BlockHeader:
    """That the transaction `txid` is in the block at `height` (`block_hash`, as the
    trusted `headers` have it), by its single-transaction BUMP; the block's header.
    `ProofFailed` ``header-unknown`` or ``block-proof`` names what does not hold."""
    header = headers.at(height)
    if header is None:
        raise ProofFailed(
            "header-unknown",
            f"{headers.source or 'the header chain'} has no block at height"
            f" {height} (it covers {headers.start_height}..{headers.tip_height})",
        )
    if header.hash_hex != block_hash:
        raise ProofFailed(
            "header-unknown",
            f"block {block_hash} is not the block at height {height}"
            f" in {headers.source or 'the header chain'} ({header.hash_hex})",
        )
    root = _bump_root(bump, txid, height)
    if root != display(header.merkle_root):
        raise ProofFailed(
            "block-proof", f"the BUMP leads to {root}, not the Merkle root of block {height}"
        )
    return header


# The records of one batch share their anchor transaction and BUMP; an auditor checking
# many of them parses each once. Both functions are pure, and failures are not cached.


@functools.lru_cache(maxsize=256)
def _anchors_of(raw: bytes) -> tuple[tuple[int, AnchorPayload], ...]:
    """The anchor outputs of exactly-parsed transaction bytes."""
    return tuple(anchors_in(parse_exact(raw)))


@functools.lru_cache(maxsize=256)
def _bump_root(raw: bytes, txid: str, height: int) -> str:
    """The root the BUMP leads to, if it is exactly the single-tx proof of `txid` at `height`."""

    def fail(detail: str) -> ProofFailed:
        return ProofFailed("block-proof", detail)

    reader = Reader(raw)
    try:
        bump = MerklePath.from_reader(reader)
        canonical = bump.to_binary()
    except _BUMP_ERRORS as exc:
        raise fail(f"block.bump is not a BUMP ({exc or type(exc).__name__})") from None
    if not reader.eof() or canonical != raw:
        raise fail("block.bump is not a canonical BUMP (trailing or re-encoded bytes differ)")
    if bump.block_height != height:
        raise fail(f"the BUMP is for block {bump.block_height}, not {height}")
    levels = bump.path
    if not levels:
        raise fail("the BUMP has no levels")
    ours = [leaf for leaf in levels[0] if leaf.get("hash_str") == txid]
    if len(ours) != 1 or not ours[0].get("txid"):
        raise fail("the BUMP does not flag the anchor txid as its transaction")
    index = int(ours[0]["offset"])
    for level, leaves in enumerate(levels):
        expected = {index, index ^ 1} if level == 0 else {(index >> level) ^ 1}
        if {int(leaf["offset"]) for leaf in leaves} != expected or len(leaves) != len(expected):
            raise fail(f"BUMP level {level} is not the single-transaction path of the txid")
        if any(leaf.get("txid") for leaf in leaves if leaf is not ours[0]):
            raise fail(f"BUMP level {level} flags another transaction")
    try:
        return str(bump.compute_root(txid))
    except _BUMP_ERRORS as exc:
        raise fail(f"the BUMP does not compute a root ({exc})") from None


def single_tx_bump(bump: MerklePath, txid: str) -> bytes:
    """The canonical single-transaction BUMP of `txid`, from any BUMP that proves it.

    ARC or a node may answer with a compound BUMP (several transactions of the block);
    a proof file carries exactly one sibling per level, so the shell stores this form.
    Raises ValueError when `bump` does not contain `txid`.
    """
    ours = [leaf for leaf in bump.path[0] if leaf.get("hash_str") == txid] if bump.path else []
    if len(ours) != 1:
        raise ValueError(f"the BUMP does not contain {txid}")
    index = int(ours[0]["offset"])
    levels: list[list[dict[str, object]]] = []
    for height in range(len(bump.path)):
        offset = (index >> height) ^ 1
        leaf = bump.find_or_compute_leaf(height, offset)
        if leaf is None:
            raise ValueError(f"the BUMP lacks the sibling at level {height}")
        entry: dict[str, object] = {"offset": offset}
        if leaf.get("duplicate"):
            entry["duplicate"] = True
        else:
            entry["hash_str"] = leaf["hash_str"]
        if height == 0:
            mine = {"offset": index, "hash_str": txid, "txid": True}
            levels.append(sorted([mine, entry], key=lambda e: int(str(e["offset"]))))
        else:
            levels.append([entry])
    minimal = MerklePath(bump.block_height, levels)
    if minimal.compute_root(txid) != bump.compute_root(txid):
        raise ValueError("the minimal BUMP does not reach the same root")
    return bytes(minimal.to_binary())


def clear_caches() -> None:
    """Forget parsed anchor transactions and BUMPs (benchmarks measure cold checks)."""
    _anchors_of.cache_clear()
    _bump_root.cache_clear()
